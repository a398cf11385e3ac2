"""Parity with transformers' GPTNeoXForCausalLM (eager attention, fp32) on random weights.

Every activation is compared, not only the logits, so errors that cancel out cannot hide; failure
messages name the first activation over tolerance and where the largest difference is. Tolerances
come from neox_mini.parity.TOLERANCES (stated once, with the reasons). Both models hold the same
weights in memory (our parameter names are transformers'); loading them from the three file
formats is checked in test_loading.py.
"""

import pytest
import torch
from helpers import hf_activations, hf_pair, ours_from_hf, random_ids, tiny

from neox_mini import NeoXConfig, generate
from neox_mini.parity import TOLERANCES, difference, first_divergence

FP32 = TOLERANCES["float32"]

# The real Pythia shapes that are cheap enough for CI, and a grid of small variations.
CONFIGS = {
    "pythia-14m": NeoXConfig.from_pythia("14m"),
    "pythia-31m": NeoXConfig.from_pythia("31m"),
    "pythia-70m": NeoXConfig.from_pythia("70m"),
    "rot0.25-parallel-hs16": tiny(),
    "rot0.5-parallel-hs16": tiny(rotary_pct=0.5),
    "rot1.0-parallel-hs16": tiny(rotary_pct=1.0),
    "rot0.25-sequential-hs16": tiny(use_parallel_residual=False),
    "rot1.0-sequential-hs32": tiny(rotary_pct=1.0, use_parallel_residual=False, num_heads=2),
    "rot0.5-parallel-hs8-oddvocab": tiny(num_heads=8, vocab_size=997, rotary_pct=0.5),
    "rot0.25-parallel-hs64": tiny(hidden_size=128, num_heads=2, intermediate_size=512),
    "tanh-gelu": tiny(gelu="tanh"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    """(transformers model, our model with the same weights, config)."""
    config = CONFIGS[request.param]
    reference, ours = hf_pair(config, seed=len(request.param))
    return reference, ours, config


def assert_matches(ours: dict, ref: dict, tolerance: float, context: str = ""):
    first, diffs = first_divergence(ours, ref, tolerance)
    if first is not None:
        table = "\n".join(f"  {d}" for d in diffs)
        pytest.fail(f"{context}first activation over tolerance {tolerance:g}: {first}\nall:\n{table}")


def test_logits_and_every_layer_match_fp32(pair):
    reference, ours, config = pair
    ids = random_ids(config)
    ref_logits, ref_acts = hf_activations(reference, ids)
    with torch.no_grad():
        logits, acts = ours(ids, return_hidden_states=True)
    assert_matches({**acts, "logits": logits}, {**ref_acts, "logits": ref_logits}, FP32)


def test_greedy_generation_matches_transformers(pair):
    reference, ours, config = pair
    prompt = random_ids(config, batch=1, length=7, seed=1)
    reference.generation_config.eos_token_id = None  # generate all 40 tokens, as ours does
    expected = reference.generate(prompt, max_new_tokens=40, do_sample=False)
    got = generate(ours, prompt, max_new_tokens=40)
    assert got.shape == expected.shape == (1, 47)
    mismatch = (got != expected).nonzero()
    assert mismatch.numel() == 0, (
        f"first differing token at position {mismatch[0].tolist()}: "
        f"ours {got[0, 7:].tolist()} vs transformers {expected[0, 7:].tolist()}"
    )


def test_kv_cache_path_equals_no_cache_path(pair):
    _, ours, config = pair
    ids = random_ids(config, batch=2, length=20, seed=2)
    with torch.no_grad():
        full = ours(ids)  # [B, T, V], no cache
        ours.setup_kv_cache(batch_size=2, max_seq_len=20)
        try:
            steps = [ours(ids[:, :8])]  # prefill 8 tokens
            for pos in range(8, 20):  # then one token at a time
                steps.append(ours(ids[:, pos : pos + 1], start_pos=pos))
        finally:
            ours.clear_kv_cache()
    cached = torch.cat(steps, dim=1)
    d = difference("logits (cached vs uncached)", cached, full)
    assert not d.over(FP32), str(d)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_within_documented_tolerance(pair, dtype):
    reference, _, config = pair
    half = ours_from_hf(reference, config, getattr(torch, dtype))
    assert half.embed_out.weight.dtype == getattr(torch, dtype)
    ids = random_ids(config)
    ref_logits, ref_acts = hf_activations(reference, ids)
    with torch.no_grad():
        logits, acts = half(ids, return_hidden_states=True)
    got = {k: v.float() for k, v in {**acts, "logits": logits}.items()}
    assert_matches(got, {**ref_acts, "logits": ref_logits}, TOLERANCES[dtype], f"{dtype}: ")
