"""The fast inference path (neox_mini/fast.py) computes the same function as the readable model.

Checked exactly as the readable model is checked: logits against transformers' GPTNeoXForCausalLM
(eager, fp32) and against model.py, at the tolerances of parity.TOLERANCES, and greedy generation
token for token. Every branch of fast.py is exercised: the batched matrix-vector product and its
F.linear fallback, the no-mask / is_causal / explicit-mask attention, the KV cache, left padding,
both residual forms, rotary on part of the head and on all of it, bf16. No timing is asserted here
(scripts/bench.py measures speed).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import hf_pair, ours_from_hf

from neox_mini import GPTNeoX, NeoXConfig, fast, generate, matvec
from neox_mini.parity import TOLERANCES, difference

FP32 = TOLERANCES["float32"]

CONFIGS = {
    # vocab 1024 = 8 * 128: the LM head goes through the batched product when decoding
    "parallel": NeoXConfig(
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        rotary_pct=0.25,
        max_position_embeddings=128,
    ),
    # sequential residual, rotary on the whole head, a vocabulary that is no multiple of 8 (F.linear
    # fallback for the LM head)
    "sequential": NeoXConfig(
        vocab_size=1001,
        hidden_size=48,
        num_layers=2,
        num_heads=2,
        intermediate_size=192,
        rotary_pct=1.0,
        use_parallel_residual=False,
        max_position_embeddings=128,
    ),
}


REAL_FASTEST = matvec.fastest


@pytest.fixture(autouse=True)
def split_products(monkeypatch):
    """Which matrix-vector method decoding uses is measured per machine (matvec.py); here every
    product that can be split uses the batched product over 2 row blocks, so that path is covered
    whatever this machine would choose (test_matvec.py checks every method against F.linear)."""
    monkeypatch.setattr(matvec, "_choices", {})
    monkeypatch.setattr(matvec, "fastest", lambda x, w, b: "split-2" if w.shape[0] % 2 == 0 else "linear")


def relative_max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return difference("logits", ours, ref).rel_error


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request):
    """(ours, the transformers model with the same weights)."""
    hf, ours = hf_pair(CONFIGS[request.param])
    return ours, hf


def ids_for(config: NeoXConfig, B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_forward_matches_transformers_and_readable(models):
    ours, hf = models
    ids = ids_for(ours.config, 3, 20)
    ref = hf(ids).logits
    readable = ours(ids)
    got = fast.forward(ours, ids)
    assert got.shape == readable.shape == ref.shape
    assert relative_max_error(got, ref) <= FP32
    assert relative_max_error(got, readable) <= FP32
    last = fast.forward(ours, ids, last_token_only=True)
    assert last.shape == (3, 1, ours.config.vocab_size)
    assert relative_max_error(last, ref[:, -1:]) <= FP32


@torch.no_grad()
def test_kv_cache_prefill_chunks_and_decode(models):
    """Prefill from 0 (is_causal), a chunk at start_pos > 0 (explicit mask), single tokens (no mask):
    every piece equals the matching positions of one full forward."""
    ours, hf = models
    ids = ids_for(ours.config, 2, 24, seed=1)
    ref = hf(ids).logits
    ours.setup_kv_cache(2, 24)
    try:
        pieces = [fast.forward(ours, ids[:, :10]), fast.forward(ours, ids[:, 10:17], start_pos=10)]
        pieces += [fast.forward(ours, ids[:, t : t + 1], start_pos=t) for t in range(17, 24)]
    finally:
        ours.clear_kv_cache()
    assert relative_max_error(torch.cat(pieces, dim=1), ref) <= FP32


@torch.no_grad()
def test_left_padding_matches_each_row_alone(models):
    """A left-padded batch (attention_mask + per-row positions) gives each row its unpadded logits."""
    ours, hf = models
    lengths = [9, 5, 1]
    T = max(lengths)
    ids = ids_for(ours.config, 3, T, seed=2)
    mask = torch.tensor([[i >= T - n for i in range(T)] for n in lengths])  # [B, T] left padding
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], dim=1)  # [B, T + 1]
    ours.setup_kv_cache(3, T + 1)
    try:
        prompt = fast.forward(ours, ids, position_ids=positions, attention_mask=full_mask)
        step_ids = ids_for(ours.config, 3, 1, seed=3)
        step = fast.forward(ours, step_ids, start_pos=T, position_ids=positions[:, -1:] + 1, attention_mask=full_mask)
    finally:
        ours.clear_kv_cache()
    readable = ours(ids, position_ids=positions, attention_mask=mask)
    for row, n in enumerate(lengths):
        alone = torch.cat([ids[row : row + 1, T - n :], step_ids[row : row + 1]], dim=1)  # [1, n + 1]
        ref = hf(alone).logits
        assert relative_max_error(prompt[row, T - n :], ref[0, :n]) <= FP32
        assert relative_max_error(prompt[row, T - n :], readable[row, T - n :]) <= FP32
        assert relative_max_error(step[row], ref[0, n:]) <= FP32


def readable_greedy(model: GPTNeoX, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with the readable model only (model.py's forward and KV cache)."""
    B, T = ids.shape
    out = ids
    model.setup_kv_cache(B, T + n)
    try:
        with torch.inference_mode():
            logits = model(ids, last_token_only=True)[:, -1]
            for pos in range(T, T + n):
                token = logits.argmax(-1, keepdim=True)  # [B, 1]
                out = torch.cat([out, token], dim=1)
                if pos + 1 < T + n:
                    logits = model(token, start_pos=pos)[:, -1]
    finally:
        model.clear_kv_cache()
    return out


@pytest.mark.parametrize("B", [1, 3])
def test_greedy_tokens_identical(models, B):
    """generate() (which runs the fast path) = the readable model's greedy loop = transformers."""
    ours, hf = models
    ids = ids_for(ours.config, B, 8, seed=4)
    n = 40
    got = generate(ours, ids, n, vocab_limit=ours.config.vocab_size)  # no padded-vocab mask: compare all ids
    assert torch.equal(got, readable_greedy(ours, ids, n))
    with torch.no_grad():
        ref = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=1,
        )
    assert torch.equal(got, ref)


@torch.no_grad()
def test_bf16_within_bf16_tolerance(models):
    ours, hf = models
    ids = ids_for(ours.config, 2, 16, seed=5)
    ref = hf(ids).logits
    ours_bf16 = ours_from_hf(hf, ours.config, torch.bfloat16)
    got = fast.forward(ours_bf16, ids)
    assert got.dtype == torch.bfloat16
    assert relative_max_error(got, ref) <= TOLERANCES["bfloat16"]
    # and decoding with the cache in bf16 gives the same logits as the readable bf16 model, roughly
    readable = ours_bf16(ids)
    assert relative_max_error(got, readable) <= TOLERANCES["bfloat16"]


def test_pythia_14m_shape(monkeypatch):
    """The real 14m shape (50304-row LM head, 6 layers) with the methods this machine chooses:
    one prefill + decode against transformers."""
    monkeypatch.setattr(matvec, "fastest", REAL_FASTEST)
    config = NeoXConfig.from_pythia("14m")
    hf, ours = hf_pair(config)
    ids = ids_for(config, 1, 12, seed=6)
    with torch.no_grad():
        ref = hf(ids).logits
    ours.setup_kv_cache(1, 12)
    try:
        got = torch.cat(
            [fast.forward(ours, ids[:, :8])]
            + [fast.forward(ours, ids[:, t : t + 1], start_pos=t) for t in range(8, 12)],
            dim=1,
        )
    finally:
        ours.clear_kv_cache()
    assert relative_max_error(got, ref) <= FP32


def test_same_errors_as_readable(models):
    ours, _ = models
    ids = ids_for(ours.config, 1, 4)
    with pytest.raises(ValueError, match="needs a KV cache"):
        fast.forward(ours, ids, start_pos=3)
    with pytest.raises(ValueError, match="out of range"):
        fast.forward(ours, torch.tensor([[ours.config.vocab_size]]))
    ours.setup_kv_cache(1, 4)
    try:
        with pytest.raises(ValueError, match="does not fit the KV cache"):
            fast.forward(ours, ids, start_pos=1)
    finally:
        ours.clear_kv_cache()


def test_bound_products_compute_the_step_and_follow_replaced_weights(models):
    """generate's decode steps run each product bound to its weights (fast.decode_products): the same
    logits as the general path, also after a weight is replaced by a new tensor or given new data."""
    model, _ = models
    ids = ids_for(model.config, 1, 6, seed=3)
    products = fast.prepare_decode(model, 1)
    assert set(products) == {m for m in model.modules() if type(m) is torch.nn.Linear}

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        model.setup_kv_cache(1, 8)
        fast.forward(model, ids[:, :5])
        bound = fast.forward(model, ids[:, 5:], start_pos=5, checked=True, products=products)
        general = fast.forward(model, ids[:, 5:], start_pos=5, checked=True)
        return bound, general

    bound, general = step()
    assert torch.equal(bound, general)
    head, dense = model.embed_out, model.gpt_neox.layers[0].attention.dense
    head_weight, dense_weight = head.weight, dense.weight.data
    try:
        head.weight = torch.nn.Parameter(head.weight.detach() * 2)  # a new tensor
        dense.weight.data = dense.weight.detach() * 2  # new data under the same tensor
        after, general_after = step()
        assert torch.equal(after, general_after) and not torch.allclose(after, bound)
    finally:
        head.weight, dense.weight.data = head_weight, dense_weight
    assert fast.decode_products(model, matvec.MAX_ROWS + 1) is None  # a matrix product: nothing to bind


def test_bound_int8_products_compute_the_step(models, monkeypatch):
    monkeypatch.setattr(matvec, "fastest", REAL_FASTEST)  # the int8 kernels, as this machine chooses them
    model = copy.deepcopy(models[0]).quantize("int8")
    ids = ids_for(model.config, 2, 6, seed=4)
    products = fast.prepare_decode(model, 2)
    with torch.inference_mode():
        model.setup_kv_cache(2, 8)
        fast.forward(model, ids[:, :5])
        bound = fast.forward(model, ids[:, 5:], start_pos=5, checked=True, products=products)
        general = fast.forward(model, ids[:, 5:], start_pos=5, checked=True)
    assert torch.equal(bound, general)
