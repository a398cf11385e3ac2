"""Scoring: sliding windows cover every token once, and the log-probs / loss equal transformers'
on the same windows."""

import math
import random

import pytest
import torch
from helpers import hf_pair

from neox_mini import NeoXConfig
from neox_mini.scoring import score_ids, score_text, token_logprobs, window_spans

# The real padded vocabulary (so real text can be scored) at a tiny width, with a short context so
# that a short text already needs many windows.
CONFIG = NeoXConfig(
    vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_position_embeddings=64
)


def sample_text(n_words: int, seed: int = 0) -> str:
    """Deterministic text with punctuation, numbers, newlines and multi-byte characters."""
    words = (
        "the model reads every token of a long document and predicts the next one , . ; "
        "Pythia GPT-NeoX rotary attention 2048 3.14 naïve café 東京 — \n"
    ).split(" ")
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n_words))


@pytest.fixture(scope="module")
def pair():
    return hf_pair(CONFIG)


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer


def hf_nll(reference, ids, spans):
    """Total NLL from transformers' loss on the same windows (context positions labelled -100)."""
    total, count = 0.0, 0
    for begin, end, first in spans:
        window = torch.tensor([ids[begin:end]])
        labels = window.clone()
        labels[:, : first - begin] = -100  # context only; the labels are shifted inside the loss
        with torch.no_grad():
            loss = reference(window, labels=labels).loss
        total += loss.double().item() * (end - first)
        count += end - first
    return total, count


@pytest.mark.parametrize(
    "n, window, stride", [(10, 4, 4), (10, 4, 1), (2049, 2048, 1024), (3, 8, 8), (100, 64, 32), (1000, 7, 3)]
)
def test_windows_score_every_token_once(n, window, stride):
    spans = window_spans(n, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))  # each of ids[1:] exactly once, in order
    for begin, end, first in spans:
        assert end - begin <= window and begin < first < end  # every target has context in its window
    if stride < window - 1:  # overlapping windows: every target after the first window has
        for begin, _end, first in spans[1:]:  # at least window - stride tokens of context
            assert first - begin >= window - stride


def test_bad_windows():
    with pytest.raises(ValueError, match="stride must be between 1 and the window"):
        window_spans(10, 4, 5)
    with pytest.raises(ValueError, match="window must be at least 2"):
        window_spans(10, 1, 1)


@pytest.mark.parametrize("stride", [64, 32, 7])
def test_score_matches_transformers_loss_on_the_same_windows(pair, tok, stride):
    reference, ours = pair
    text = sample_text(150)
    s = score_text(ours, tok, text, stride=stride)
    ids = tok.encode(text, bos=True)
    expected, count = hf_nll(reference, ids, window_spans(len(ids), 64, stride))
    assert s.tokens == count == len(ids) - 1 > 64 * 2
    assert s.bytes == len(text.encode("utf-8")) > len(text)  # multi-byte characters counted as bytes
    assert abs(s.nll - expected) <= 1e-4 * expected
    assert s.perplexity == pytest.approx(math.exp(expected / count), rel=1e-4)
    assert s.bits_per_byte == pytest.approx(expected / math.log(2) / s.bytes, rel=1e-4)


def test_one_window_logprobs_equal_transformers(pair, tok):
    reference, ours = pair
    ids = tok.encode(sample_text(80, seed=1), bos=True)[:60]
    got = token_logprobs(ours, ids)  # [59]
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0, :-1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert got.shape == (59,)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_bad_scoring_input(pair, tok):
    _, ours = pair
    with pytest.raises(ValueError, match="nothing to score: the text is empty"):
        score_text(ours, tok, "")
    with pytest.raises(ValueError, match="at least 2 ids"):
        score_ids(ours, [0])
    with pytest.raises(ValueError, match="window 65 exceeds the context length 64"):
        score_ids(ours, [0, 5, 6], window=65)
    with pytest.raises(ValueError, match="token id 50304 is out of range"):
        score_ids(ours, [0, 5, 50304])
