"""Scoring text: log-probabilities, and perplexity of a text longer than the context.

A text of n tokens is scored with a sliding window of at most `window` tokens (the context length
by default) that advances by `stride` tokens. Each token is scored exactly once, in the first
window that contains it and its predecessor; the tokens a window shares with the previous one are
context only. stride = window gives disjoint windows (fast, but the first tokens of each window
see little context); a smaller stride gives every scored token at least window - stride tokens of
context, at window / stride times the cost.

The text is preceded by <|endoftext|> (id 0) as context, the way Pythia saw the start of each
document in training (and as lm-evaluation-harness scores whole texts): so every token of the text
is scored, including the first, and bits per byte is over every byte of the file.

Log-probabilities are normalised over all V output rows, padded ones included: this is the model's
own distribution (and what transformers' loss computes). For a trained Pythia the 27+ padded rows
hold a negligible share of the mass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import fast
from .errors import NonFiniteError
from .model import GPTNeoX
from .tokenizer import BOS_ID, Tokenizer


@dataclass
class Score:
    nll: float  # total negative log-likelihood of the scored tokens, in nats
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text those tokens spell
    windows: int  # forward passes
    window: int
    stride: int

    @property
    def mean_nll(self) -> float:
        """Cross-entropy in nats per token (transformers' `loss`)."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        """Total information in bits divided by the text's bytes: comparable across tokenizers."""
        return self.nll / math.log(2) / self.bytes


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n ids whose first id is context only.

    Returns (begin, end, first_target): run ids[begin:end], score targets ids[first_target:end].
    """
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    spans, scored_until, begin = [], 1, 0
    while scored_until < n:
        end = min(begin + window, n)
        spans.append((begin, end, scored_until))
        scored_until = end
        # Advance by stride, but start at least one token before the next target: a window's first
        # token is never predicted (nothing precedes it inside the window).
        begin = min(begin + stride, scored_until - 1)
    return spans


@torch.inference_mode()
def window_logprobs(model: GPTNeoX, ids: torch.Tensor, first_target: int) -> torch.Tensor:
    """Log-probabilities of ids[first_target:] given everything before them in ids ([T] -> [T - first_target]).

    Only the rows that are scored go through log_softmax, in fp32 (a 2048 x 50304 fp32 block is
    400 MB; the context-only rows are skipped).
    """
    logits = fast.forward(model, ids[None])[0]  # [T, V]
    predicting = logits[first_target - 1 : -1].float()  # [n, V]: row t predicts token t + 1
    targets = ids[first_target:]  # [n]
    return F.log_softmax(predicting, dim=-1).gather(-1, targets[:, None])[:, 0]  # [n]


def token_logprobs(
    model: GPTNeoX, ids: Sequence[int] | torch.Tensor, *, window: int | None = None, stride: int | None = None
) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1 .. n-1 ([n] ids -> [n - 1] float32), ids[0] being context
    only; texts longer than the window are scored with a sliding window (see the module docstring)."""
    device = model.embed_out.weight.device
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"need a 1-D sequence of at least 2 ids (context + one token), got shape {list(ids.shape)}")
    window = window or model.config.max_position_embeddings
    if window > model.config.max_position_embeddings:
        raise ValueError(f"window {window} exceeds the context length {model.config.max_position_embeddings}")
    stride = stride or max(window // 2, 1)
    pieces = [
        window_logprobs(model, ids[begin:end], first - begin)
        for begin, end, first in window_spans(ids.numel(), window, stride)
    ]
    logprobs = torch.cat(pieces)  # [n - 1]
    if not bool(torch.isfinite(logprobs).all()):  # a NaN perplexity must not pass as a result
        first = int((~torch.isfinite(logprobs)).nonzero()[0, 0]) + 1
        raise NonFiniteError(
            f"the model computed a NaN or infinite log-probability (first at token {first} of {ids.numel()}): "
            f"NaN/inf in the weights, or an overflow in half precision"
        )
    return logprobs


def score_ids(
    model: GPTNeoX, ids: Sequence[int], *, window: int | None = None, stride: int | None = None, n_bytes: int = 0
) -> Score:
    """Score ids[1:] (ids[0] is context only) -> Score. n_bytes: the bytes they spell, for bits per byte."""
    window = window or model.config.max_position_embeddings
    stride = stride or max(window // 2, 1)
    logprobs = token_logprobs(model, ids, window=window, stride=stride)  # [n - 1]
    return Score(
        nll=-logprobs.double().sum().item(),
        tokens=logprobs.numel(),
        bytes=n_bytes,
        windows=len(window_spans(len(ids), window, stride)),
        window=window,
        stride=stride,
    )


def score_text(
    model: GPTNeoX, tokenizer: Tokenizer, text: str, *, window: int | None = None, stride: int | None = None
) -> Score:
    """Perplexity, tokens scored and bits per byte of a text, conditioned on a leading <|endoftext|>."""
    if not text:
        raise ValueError("nothing to score: the text is empty")
    ids = tokenizer.encode(text, bos=True)  # [BOS_ID, ...]: the BOS is context, every text token is scored
    assert ids[0] == BOS_ID
    return score_ids(model, ids, window=window, stride=stride, n_bytes=len(text.encode("utf-8")))
