"""Generation: sampling pieces, padded-vocab masking, left-padded batches, EOS / stop strings,
repetition penalty against transformers, streaming, and bad input. Small random models only."""

import pytest
import torch
from helpers import hf_pair

from neox_mini import GPTNeoX, NeoXConfig, generate
from neox_mini.generation import (
    PAD_ID,
    generate_batch,
    generate_tokens,
    left_pad,
    logits_to_probs,
    mask_padded_vocab,
    sample,
    split_at_stop,
    stream_text,
)
from neox_mini.pythia import TOKENIZER_VOCAB_SIZE
from neox_mini.synthetic import init_random_weights

TINY = NeoXConfig(
    vocab_size=1001, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_position_embeddings=128
)
# The real padded vocabulary (50,304 rows for 50,277 token ids), at a tiny width.
TINY_PADDED = TINY.replace(vocab_size=50304)


def random_model(config: NeoXConfig, seed: int = 0, std: float = 0.3) -> GPTNeoX:
    # std 0.3 (not 0.02) so that the logits are far from uniform and the outputs vary with the prompt.
    model = GPTNeoX(config)
    init_random_weights(model, seed=seed, std=std)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return random_model(TINY)


@pytest.fixture(scope="module")
def padded_model():
    return random_model(TINY_PADDED)


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer


PROMPTS = [[5, 17, 300, 2, 9, 44, 800, 3], [1000], [7, 7, 7, 12], [64, 1, 0, 512, 90]]


# ----------------------------------------------------------------------------- sampling pieces


def test_logits_to_probs_top_k_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    p = logits_to_probs(logits, temperature=1.0)
    assert torch.allclose(p, logits.softmax(-1))
    assert torch.equal(logits_to_probs(logits, top_k=1), torch.tensor([[1.0, 0, 0, 0, 0]]))
    assert (logits_to_probs(logits, top_k=3)[0, 3:] == 0).all()
    # top_p: keep the smallest prefix (by rank) whose mass reaches top_p; the top token is always kept.
    full = logits.softmax(-1)[0]
    assert (logits_to_probs(logits, top_p=1e-6)[0, 1:] == 0).all()
    kept = logits_to_probs(logits, top_p=float(full[0] + full[1] - 1e-4))
    assert (kept[0, :2] > 0).all() and (kept[0, 2:] == 0).all()
    assert torch.allclose(kept[0, :2], full[:2] / full[:2].sum())
    # A low temperature sharpens towards the argmax.
    assert logits_to_probs(logits, temperature=0.05)[0, 0] > 0.999


def test_sample_is_reproducible_per_row_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        generators = [torch.Generator().manual_seed(seed) for _ in range(3)]
        return torch.cat([sample(logits, 1.0, generator=generators) for _ in range(20)], 1)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert torch.equal(sample(logits, 0.0), logits.argmax(-1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_picks_what_argmax_picks(dtype):
    """Ties go to the first index, a NaN wins (generate then reports it), a flat row gives 0, a row
    masked to -inf but for one id gives that id: in every dtype, also on a strided view (the last
    position of [B, T, V] logits, as generate passes them)."""
    logits = torch.randn(5, 2, 50304, generator=torch.Generator().manual_seed(1))[:, 1].to(dtype)
    logits[0, [10, 20]] = 50.0
    logits[1, 7] = float("nan")
    logits[2] = 1.0
    logits[4] = float("-inf")
    logits[4, 50276] = 0.0
    expected = [10, 7, 0, int(logits[3].float().argmax()), 50276]
    assert sample(logits, 0.0)[:, 0].tolist() == logits.argmax(-1).tolist() == expected
    assert sample(logits, 0.0).dtype == torch.long


def test_padded_vocab_rows_are_never_generated():
    """Make the padded rows (ids 50277..50303) by far the likeliest: the default mask still never
    emits them, and switching it off (vocab_limit = all rows) does: the mask is what stops them."""
    model = random_model(TINY_PADDED)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)  # the final hidden state is all ones
        model.embed_out.weight[TOKENIZER_VOCAB_SIZE:] = 1.0  # padded logits 64; real ones ~ N(0, 2.4)
    prompt = torch.tensor([[5, 17, 300]])
    for kwargs in (dict(), dict(temperature=1.0, seed=0), dict(temperature=2.0, top_p=0.99, seed=1)):
        out = generate(model, prompt, 10, **kwargs)
        assert out[0, 3:].max() < TOKENIZER_VOCAB_SIZE, kwargs
    unmasked = generate(model, prompt, 10, vocab_limit=model.config.vocab_size)
    assert (unmasked[0, 3:] >= TOKENIZER_VOCAB_SIZE).all()
    logits = torch.zeros(1, 50304)
    assert torch.isinf(mask_padded_vocab(logits, 50277)[0, 50277:]).all()
    assert (mask_padded_vocab(logits, 50277)[0, :50277] == 0).all() and (logits == 0).all()  # no in-place change


# ----------------------------------------------------------------------------- against transformers


@pytest.mark.parametrize("penalty", [1.0, 1.5, 0.7])
def test_greedy_with_repetition_penalty_matches_transformers(penalty):
    reference, ours = hf_pair(TINY)
    prompt = torch.tensor([[5, 17, 300, 2, 9, 17, 17, 44]])
    reference.generation_config.eos_token_id = None  # all 30 tokens, as ours without eos_id
    expected = reference.generate(prompt, max_new_tokens=30, do_sample=False, repetition_penalty=penalty)
    got = generate(ours, prompt, 30, repetition_penalty=penalty)
    assert got.tolist() == expected.tolist()


def test_eos_stops_like_transformers():
    reference, ours = hf_pair(TINY)
    prompt = torch.tensor([[5, 17, 300, 2]])
    free = generate(ours, prompt, 20)[0, 4:].tolist()
    eos = free[6]  # a token greedy produces at step 7 (and maybe earlier): use it as the EOS
    first = free.index(eos)
    expected = reference.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=PAD_ID)
    got = generate(ours, prompt, 20, eos_id=eos)
    assert got.tolist() == expected.tolist()
    assert got.shape[1] == 4 + first + 1 and got[0, -1] == eos


# ----------------------------------------------------------------------------- batches


def test_left_pad():
    ids, mask = left_pad([[4, 5, 6], [7]])
    assert ids.tolist() == [[4, 5, 6], [PAD_ID, PAD_ID, 7]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


@pytest.mark.parametrize(
    "sampling",
    [dict(), dict(temperature=0.9, top_k=50, seed=7), dict(temperature=1.0, top_p=0.9, seed=3, repetition_penalty=1.3)],
)
def test_batched_equals_each_prompt_alone(model, sampling):
    batch = generate_batch(model, PROMPTS, 25, **sampling)
    for prompt, row in zip(PROMPTS, batch, strict=True):
        alone = generate(model, torch.tensor([prompt]), 25, **sampling)[0, len(prompt) :].tolist()
        assert row == alone, (prompt, sampling)
    assert len({tuple(r) for r in batch}) == len(PROMPTS)  # the rows really differ


def test_batched_logits_equal_alone(model):
    """Not only the argmax: each row's next-token logits match the prompt alone (float32 tolerance)."""
    ids, mask = left_pad(PROMPTS)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch_logits = model(ids, position_ids=positions, attention_mask=mask)[:, -1]
        for i, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt]))[0, -1]
            assert (batch_logits[i] - alone).abs().max() <= 1e-5 * alone.abs().max()


def test_batch_eos_pads_finished_rows(model):
    free = generate_batch(model, PROMPTS, 12)
    eos = free[0][3]
    out = generate_batch(model, PROMPTS, 12, eos_id=eos)
    for row_free, row in zip(free, out, strict=True):
        assert row == (row_free[: row_free.index(eos) + 1] if eos in row_free else row_free)
    # As a tensor, a row that finished early is filled with <|padding|>.
    ids, mask = left_pad(PROMPTS)
    first_row = generate(model, ids, 12, attention_mask=mask, eos_id=eos)[0, ids.shape[1] :].tolist()
    end = free[0].index(eos) + 1
    assert first_row[:end] == free[0][:end] and set(first_row[end:]) <= {PAD_ID}


def test_seed_reproduces_and_differs(model):
    prompt = torch.tensor([PROMPTS[0]])
    a = generate(model, prompt, 30, temperature=0.8, top_k=50, seed=7)
    b = generate(model, prompt, 30, temperature=0.8, top_k=50, seed=7)
    c = generate(model, prompt, 30, temperature=0.8, top_k=50, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- text: stop strings, streaming


def test_split_at_stop():
    assert split_at_stop("hello wor", ["world"]) == ("hello ", "wor", False)
    assert split_at_stop("hello world!", ["world"]) == ("hello ", "", True)
    assert split_at_stop("a\n\nb", ["\n\n", "b"]) == ("a", "", True)
    assert split_at_stop("abc", []) == ("abc", "", False)
    assert split_at_stop("x\n", ["\n\n"]) == ("x", "\n", False)


def test_stream_text_pieces_add_up_and_stop_string_cuts(padded_model, tok):
    prompt = tok.encode("Hello, I am")
    pieces = list(stream_text(padded_model, tok, prompt, 30, eos_id=None))
    ids = generate(padded_model, torch.tensor([prompt]), 30)[0, len(prompt) :].tolist()
    full = tok.decode(ids)
    assert "".join(pieces) == full and len(pieces) > 5
    # Stop at a string that spans a token boundary: everything before it, nothing after.
    k = len(tok.decode(ids[:10]))
    stop = full[k - 2 : k + 2]
    cut = "".join(stream_text(padded_model, tok, prompt, 30, eos_id=None, stop=[stop]))
    assert cut == full[: full.index(stop)]
    # EOS: with a token of the output as "EOS", the text ends right before its first occurrence.
    eos = ids[12]
    text = "".join(stream_text(padded_model, tok, prompt, 30, eos_id=eos))
    assert text == tok.decode(ids[: ids.index(eos)])


def test_stream_text_stopping_early_frees_the_kv_cache(padded_model, tok):
    pieces = stream_text(padded_model, tok, tok.encode("Hello"), 30)
    next(pieces)
    assert padded_model.kv_cache_shape is not None
    pieces.close()
    assert padded_model.kv_cache_shape is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "ids, error, message",
    [
        (torch.tensor([[5, 1001]]), ValueError, "token id 1001 is out of range: this model has ids 0..1000"),
        (torch.tensor([[-3, 5]]), ValueError, "token id -3 is out of range"),
        (torch.tensor([[5.0, 6.0]]), TypeError, "input_ids must be an integer tensor"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "input_ids is empty"),
    ],
)
def test_bad_ids(model, ids, error, message):
    with pytest.raises(error, match=message):
        generate(model, ids, 5)
    assert model.kv_cache_shape is None  # nothing left allocated


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(max_new_tokens=120),
            r"prompt \(10 tokens\) \+ max_new_tokens \(120\) = 130 exceeds the context length 128",
        ),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
        (dict(max_new_tokens=5, temperature=-1.0), "temperature must be >= 0"),
        (dict(max_new_tokens=5, top_k=0), "top_k must be >= 1"),
        (dict(max_new_tokens=5, top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(max_new_tokens=5, repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(max_new_tokens=5, vocab_limit=0), "vocab_limit must be between 1 and the model's 1001 rows, got 0"),
    ],
)
def test_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.arange(10)[None], **kwargs)


def test_bad_batches(model, tok):
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        generate_batch(model, [[5, 6], []], 5)
    with pytest.raises(ValueError, match="row 1 of the batch has no real token"):
        list(
            generate_tokens(
                model, torch.tensor([[5, 6], [1, 1]]), 3, attention_mask=torch.tensor([[True, True], [False, False]])
            )
        )
    with pytest.raises(ValueError, match="the prompt is empty"):
        next(stream_text(model, tok, [], 5))


def test_zero_new_tokens_returns_the_prompt(model):
    prompt = torch.tensor([[5, 6, 7]])
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_decoding_reads_nothing_back_for_its_input_checks(model, monkeypatch):
    """The prompt is checked once; the decode steps feed back ids the sampler produced, so their
    checks (each a read back from the device, a stall per token on a GPU) are skipped."""
    calls = []
    check = model.check_inputs
    monkeypatch.setattr(model, "check_inputs", lambda ids, start: calls.append(start) or check(ids, start))
    out = generate(model, torch.tensor([[5, 17, 300, 2]]), 10)
    assert calls == [0] and out.shape == (1, 14)
    with pytest.raises(ValueError, match="out of range"):  # the prompt itself is still checked
        generate(model, torch.tensor([[5, 1001]]), 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nonfinite_logit_mid_generation_is_an_error(model, monkeypatch, bad):
    """One NaN or infinite logit in one row at one decode step is enough, as in the prompt."""
    from neox_mini import generation
    from neox_mini.errors import NonFiniteError

    decode, steps = generation.decode_one_token, []

    def decode_with_one_bad_logit(*args, **kwargs):
        logits = decode(*args, **kwargs)  # [B, V]
        steps.append(None)
        if len(steps) == 3:
            logits[1, 7] = bad
        return logits

    monkeypatch.setattr(generation, "decode_one_token", decode_with_one_bad_logit)
    with pytest.raises(NonFiniteError, match=r"during generation \(batch row\(s\) \[1\]\)"):
        generate(model, torch.tensor([[5, 6, 7], [8, 9, 10]]), 6)


def test_logits_a_hook_kept_are_not_masked_in_place(padded_model):
    """generate masks the padded vocabulary in place only when the logits are its own: a hook on
    hook_logits that keeps them sees what the model computed."""
    kept = []
    with padded_model.hooks({"hook_logits": lambda t, name: kept.append(t)}):
        generate(padded_model, torch.tensor([[5, 6, 7]]), 3)
    assert kept and all(torch.isfinite(t[..., TOKENIZER_VOCAB_SIZE:]).all() for t in kept)
