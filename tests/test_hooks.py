"""Hook points, the activation cache, interventions on every path, and the analysis helpers.

Every hook point is checked against the corresponding activation of transformers' eager
GPTNeoXForCausalLM on the same weights, captured with torch hooks (and its eager attention
function, for the rotated q/k and the pattern), at the fp32 tolerance of parity.TOLERANCES.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import hf_pair, random_ids, tiny

from neox_mini import NeoXConfig, fast, generate
from neox_mini.analysis import attention_patterns, logit_lens, patch_resid
from neox_mini.generation import generate_batch, left_pad, mask_padded_vocab
from neox_mini.parity import TOLERANCES, difference
from neox_mini.scoring import score_ids
from neox_mini.transforms import center_unembed, center_writing_weights, fold_layer_norm, process

FP32 = TOLERANCES["float32"]

CONFIGS = {
    "pythia-70m": NeoXConfig.from_pythia("70m"),
    "rot0.25-parallel": tiny(),
    "rot1.0-sequential": tiny(rotary_pct=1.0, use_parallel_residual=False),
    "rot0.5-sequential-tanh": tiny(rotary_pct=0.5, use_parallel_residual=False, gelu="tanh", num_heads=2),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    hf, ours = hf_pair(CONFIGS[request.param], seed=7)
    return hf, ours, CONFIGS[request.param]


def assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, tolerance: float = FP32) -> None:
    d = difference(name, ours, ref)
    assert not d.over(tolerance), str(d)


@torch.no_grad()
def transformers_hook_values(hf, ids: torch.Tensor, config: NeoXConfig) -> dict[str, torch.Tensor]:
    """transformers' activations under our hook point names, captured with torch hooks."""
    import transformers.models.gpt_neox.modeling_gpt_neox as modeling

    B, T = ids.shape
    nh, hs = config.num_heads, config.head_size
    out: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, pick=lambda output: output[0] if isinstance(output, tuple) else output):
        def hook(module, inputs, output):
            out[name] = pick(output).detach()

        return hook

    def keep_input(name):
        def hook(module, args, kwargs):
            out[name] = (args[0] if args else kwargs["hidden_states"]).detach()

        return hook

    def scale(x: torch.Tensor, eps: float) -> torch.Tensor:
        x = x.double()
        return ((x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def normalized(x: torch.Tensor, eps: float) -> torch.Tensor:  # TransformerLens: before weight and bias
        x = x.double()
        return (x - x.mean(-1, keepdim=True)) / scale(x, eps)

    model = hf.gpt_neox
    handles.append(model.embed_in.register_forward_hook(keep("hook_embed")))
    current = {}
    for i, layer in enumerate(model.layers):
        p = f"blocks.{i}."
        handles.append(layer.register_forward_pre_hook(keep_input(p + "hook_resid_pre"), with_kwargs=True))
        handles.append(layer.register_forward_hook(keep(p + "hook_resid_post")))
        handles.append(layer.attention.register_forward_hook(keep(p + "hook_attn_out")))
        handles.append(layer.mlp.register_forward_hook(keep(p + "hook_mlp_out")))
        handles.append(layer.mlp.dense_h_to_4h.register_forward_hook(keep(p + "mlp.hook_pre")))
        handles.append(layer.mlp.act.register_forward_hook(keep(p + "mlp.hook_post")))
        handles.append(layer.attention.query_key_value.register_forward_hook(keep(p + "qkv")))
        handles.append(
            layer.attention.register_forward_pre_hook(
                lambda module, args, kwargs, p=p: current.__setitem__("prefix", p), with_kwargs=True
            )
        )

    original = modeling.eager_attention_forward

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        attn_output, attn_weights = original(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        p = current["prefix"]
        out[p + "attn.hook_rot_q"] = query.transpose(1, 2).detach()  # [B, T, nh, hs]
        out[p + "attn.hook_rot_k"] = key.transpose(1, 2).detach()
        out[p + "attn.scores"] = (query @ key.transpose(2, 3) * scaling).detach()  # unmasked, [B, nh, T, S]
        out[p + "attn.hook_pattern"] = attn_weights.detach()
        out[p + "attn.hook_z"] = attn_output.detach()  # [B, T, nh, hs]
        return attn_output, attn_weights

    modeling.eager_attention_forward = eager
    try:
        out["hook_logits"] = hf(ids).logits
    finally:
        modeling.eager_attention_forward = original
        for h in handles:
            h.remove()
    for i in range(config.num_layers):
        p = f"blocks.{i}."
        q, k, v = out.pop(p + "qkv").view(B, T, nh, 3 * hs).split(hs, dim=-1)
        out[p + "attn.hook_q"], out[p + "attn.hook_k"], out[p + "attn.hook_v"] = q, k, v
        eps, pre = config.layer_norm_eps, out[p + "hook_resid_pre"]
        if not config.use_parallel_residual:
            out[p + "hook_resid_mid"] = pre + out[p + "hook_attn_out"]
        ln2_input = pre if config.use_parallel_residual else out[p + "hook_resid_mid"]
        out[p + "ln1.hook_scale"], out[p + "ln1.hook_normalized"] = scale(pre, eps), normalized(pre, eps)
        out[p + "ln2.hook_scale"], out[p + "ln2.hook_normalized"] = scale(ln2_input, eps), normalized(ln2_input, eps)
    last = out[f"blocks.{config.num_layers - 1}.hook_resid_post"]
    out["ln_final.hook_scale"] = scale(last, config.layer_norm_eps)
    out["ln_final.hook_normalized"] = normalized(last, config.layer_norm_eps)
    return out


def test_every_hook_point_equals_transformers(pair):
    hf, ours, config = pair
    ids = random_ids(config, batch=2, length=19, seed=3)
    ref = transformers_hook_values(hf, ids, config)
    _, cache = ours.run_with_cache(ids)
    parallel = config.use_parallel_residual  # then no block has a resid_mid
    assert set(cache) == {n for n in ours.hook_points() if not (parallel and n.endswith("hook_resid_mid"))}
    for name, value in cache.items():
        if name.endswith("hook_attn_scores"):
            scores = ref[name.replace("hook_attn_scores", "scores")]
            causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
            assert torch.isneginf(value[..., ~causal]).all(), f"{name}: masked scores are not -inf"
            assert_close(name, value[..., causal], scores[..., causal])
        else:
            assert_close(name, value, ref[name])


def test_hook_point_shapes_are_transformer_lens(pair):
    _, ours, config = pair
    ids = random_ids(config, batch=2, length=5)
    _, cache = ours.run_with_cache(ids)
    B, T, C, nh, hs = 2, 5, config.hidden_size, config.num_heads, config.head_size
    assert cache["blocks.0.attn.hook_q"].shape == cache["blocks.0.attn.hook_z"].shape == (B, T, nh, hs)
    assert cache["blocks.0.attn.hook_pattern"].shape == (B, nh, T, T)
    assert cache["blocks.0.mlp.hook_post"].shape == (B, T, config.intermediate_size)
    assert cache["blocks.0.ln1.hook_scale"].shape == (B, T, 1)
    assert cache["hook_embed"].shape == cache["blocks.0.hook_resid_post"].shape == (B, T, C)
    assert cache["hook_logits"].shape == (B, T, config.vocab_size)


def test_zeroing_an_mlp_output_equals_transformers_with_the_same_ablation(pair):
    hf, ours, config = pair
    ids = random_ids(config, batch=2, length=11, seed=4)
    handle = hf.gpt_neox.layers[1].mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            expected = hf(ids).logits
    finally:
        handle.remove()
    got = ours.run_with_hooks(ids, {"blocks.1.hook_mlp_out": lambda t, name: torch.zeros_like(t)})
    assert_close("logits with blocks.1.hook_mlp_out zeroed", got, expected)
    plain = ours(ids)
    assert not torch.allclose(got, plain), "the ablation changed nothing"


# ----------------------------------------------------------------------------- every path


def steer(vector: torch.Tensor):
    return {"blocks.2.hook_resid_post": lambda t, name: t + vector}


@torch.no_grad()
def hooked_loop(model, prompts: list[list[int]], n: int, hooks) -> list[list[int]]:
    """Greedy decoding as a loop of hooked full forwards, written out: what generate must equal."""
    ids, mask = left_pad(prompts)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    for _ in range(n):
        logits = model.run_with_hooks(ids, hooks, position_ids=positions, attention_mask=mask)[:, -1]
        token = mask_padded_vocab(logits, model.config.vocab_size).argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token, dtype=torch.bool)], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)
    return [row[len(ids[0]) - n :] for row in ids.tolist()]


@pytest.fixture(scope="module")
def steered():
    config = tiny(num_layers=4, vocab_size=300)
    _, ours = hf_pair(config, seed=11)
    vector = 3.0 * torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(0))
    return ours, steer(vector)


def test_steering_changes_generation_and_equals_a_loop_of_hooked_forwards(steered):
    model, hooks = steered
    prompt = torch.tensor([[5, 17, 200, 3, 9]])
    plain = generate(model, prompt, 12)[0, 5:].tolist()
    with model.hooks(hooks):
        inside = generate(model, prompt, 12)[0, 5:].tolist()
    shorthand = generate(model, prompt, 12, hooks=hooks)[0, 5:].tolist()
    assert inside != plain, "steering did not change the greedy output"
    assert inside == shorthand == hooked_loop(model, [prompt[0].tolist()], 12, hooks)[0]
    assert generate(model, prompt, 12)[0, 5:].tolist() == plain, "the hooks outlived their block"


def test_steering_a_left_padded_batch(steered):
    model, hooks = steered
    prompts = [[5, 17, 200, 3, 9], [42], [7, 7, 250]]
    with model.hooks(hooks):
        batch = generate_batch(model, prompts, 10)
    assert batch == hooked_loop(model, prompts, 10, hooks)
    assert batch != generate_batch(model, prompts, 10)


def test_hooks_reach_the_fast_path_scoring_and_are_removed_on_error(steered):
    model, hooks = steered
    ids = torch.tensor([[5, 17, 200, 3, 9, 44]])
    with torch.no_grad():
        with model.hooks(hooks):
            assert model.hooked
            assert torch.equal(fast.forward(model, ids), model(ids))
            steered_score = score_ids(model, ids[0].tolist()).nll
        assert not model.hooked
        assert score_ids(model, ids[0].tolist()).nll != steered_score
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(hooks):
            raise RuntimeError("boom")
    assert not model.hooked and all(not p.fns for p in model.points.values())


def test_run_with_cache_keeps_only_what_is_asked(steered):
    model, _ = steered
    ids = torch.tensor([[1, 2, 3, 4]])
    _, only = model.run_with_cache(ids, names=["blocks.1.hook_resid_post", "hook_embed"])
    assert set(only) == {"blocks.1.hook_resid_post", "hook_embed"}
    _, predicate = model.run_with_cache(ids, names=lambda name: name.endswith("hook_resid_post"))
    assert list(predicate) == [f"blocks.{i}.hook_resid_post" for i in range(4)]
    _, everything = model.run_with_cache(ids)
    assert list(everything)[0] == "hook_embed" and list(everything)[-1] == "hook_logits"
    assert len(everything) == len(model.hook_points()) - 4  # no resid_mid: the residual is parallel
    with pytest.raises(KeyError, match="no hook point 'blocks.1.hook_resid_middle'"):
        model.run_with_cache(ids, names=["blocks.1.hook_resid_middle"])
    assert not model.hooked


# ----------------------------------------------------------------------------- the cache's views


@pytest.fixture(scope="module")
def cached():
    config = tiny(num_layers=3)
    _, model = hf_pair(config, seed=5)
    ids = random_ids(config, batch=2, length=9, seed=5)
    logits, cache = model.run_with_cache(ids)
    return model, ids, logits, cache


def test_logit_lens_is_the_final_norm_and_unembedding_of_each_layer(cached):
    model, ids, logits, cache = cached
    lens = cache.logit_lens()  # [L + 1, B, T, V]
    assert lens.shape == (4, *logits.shape)
    with torch.no_grad():
        head = lambda x: model.embed_out(model.gpt_neox.final_layer_norm(x))  # noqa: E731
        assert_close("lens[0]", lens[0], head(cache["hook_embed"]))
        for i in range(3):
            assert_close(f"lens[{i + 1}]", lens[i + 1], head(cache[f"blocks.{i}.hook_resid_post"]))
    assert_close("lens[-1] vs logits", lens[-1], logits)
    values, indices = logit_lens(model, ids[:1], top_k=3)
    assert values.shape == indices.shape == (4, 9, 3)
    assert torch.equal(indices[-1], logits[0].topk(3).indices)


def test_attention_patterns_are_causal_and_rows_sum_to_one(cached):
    model, ids, _, _ = cached
    pattern = attention_patterns(model, ids[:1], layer=1)  # [nh, T, T]
    assert pattern.shape == (4, 9, 9)
    assert (pattern.triu(diagonal=1) == 0).all()
    assert (pattern.sum(-1) - 1).abs().max() <= 1e-6


def test_decompose_resid_and_head_results_add_up(cached):
    model, _, _, cache = cached
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(labels) == 7
    assert_close("sum of components", parts.sum(0), cache["blocks.2.hook_resid_post"])
    heads = cache.stack_head_results()  # [L * nh, B, T, C]
    assert heads.shape[0] == 3 * 4
    for i in range(3):
        bias = model.gpt_neox.layers[i].attention.dense.bias
        assert_close(
            f"layer {i} heads + bias", heads[4 * i : 4 * i + 4].sum(0) + bias, cache[f"blocks.{i}.hook_attn_out"]
        )
    acc = cache.accumulated_resid()
    assert acc.shape[0] == 4 and torch.equal(acc[1], cache["blocks.1.hook_resid_pre"])
    normed = cache.accumulated_resid(apply_ln=True)
    assert_close("apply_ln", normed[-1], cache["ln_final.hook_normalized"])  # the last entry is the real one


def test_patch_resid_equals_a_hand_written_loop(cached):
    model, ids, _, _ = cached
    clean, corrupt = ids[:1], ids[1:]
    target = int(ids[0, -1])

    def metric(logits):
        return logits[0, -1, target]

    got = patch_resid(model, clean, corrupt, metric)
    _, clean_cache = model.run_with_cache(clean)
    for layer in range(3):
        for pos in range(9):
            name = f"blocks.{layer}.hook_resid_pre"

            def put(t, _, pos=pos, name=name):
                t = t.clone()
                t[:, pos] = clean_cache[name][:, pos]
                return t

            with torch.no_grad():
                assert got[layer, pos] == float(metric(model.run_with_hooks(corrupt, {name: put})))
    # patching every position of layer 0 with the clean stream gives the clean answer there
    assert got[0].shape == (9,)


# ----------------------------------------------------------------------------- transforms


def test_folding_and_centring_keep_the_logits(cached):
    model, ids, logits, _ = cached
    with torch.no_grad():
        folded = fold_layer_norm(model)
        assert_close("fold_layer_norm", folded(ids), logits)
        assert (folded.gpt_neox.final_layer_norm.weight == 1).all()
        assert_close("center_writing_weights", center_writing_weights(folded)(ids), logits)
        shifted = center_unembed(model)(ids)  # logits move by a constant per position
        assert_close("center_unembed", shifted - shifted.mean(-1, keepdim=True), logits - logits.mean(-1, keepdim=True))
        processed = process(model)(ids)
        assert_close("process", processed.log_softmax(-1), logits.log_softmax(-1))
        _, cache = process(model).run_with_cache(ids, names=["blocks.0.hook_resid_pre"])
        assert cache["blocks.0.hook_resid_pre"].mean(-1).abs().max() < 1e-5 * math.sqrt(model.config.hidden_size)
    assert torch.equal(model(ids), logits), "the transforms changed the given model"


def test_the_worked_example_in_the_docs_runs(tmp_path, tokenizer_json, capsys):
    """docs/hooks.md's example, on a random checkpoint (the 14m shape, to be quick)."""
    from pathlib import Path

    from neox_mini.synthetic import write_random_checkpoint

    doc = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text()
    code = doc.split("## A worked example, offline")[1].split("```python\n")[1].split("```")[0]
    folder = write_random_checkpoint(tmp_path / "random", NeoXConfig.from_pythia("14m"), tokenizer=tokenizer_json)
    assert 'folder = "/tmp/pythia-70m-random"' in code  # the README main job's checkpoint
    try:
        exec(code.replace("/tmp/pythia-70m-random", str(folder)), {})
    finally:
        torch.set_grad_enabled(True)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 + 1 + 1 and out[0].strip().startswith("embed") and "KL(clean || ablated)" in out[-1]


TRANSFORMER_LENS_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from fake_hub import add_to_cache, folder_files
from helpers import hf_pair, random_ids, save_hf_model
from neox_mini import NeoXConfig
from neox_mini.parity import difference
import transformer_lens

config = NeoXConfig.from_pythia("70m")
hf, ours = hf_pair(config, seed=3)
folder = save_hf_model(hf, sys.argv[2])
add_to_cache(sys.argv[3], "EleutherAI/pythia-70m", folder_files(folder), ["main"])  # its config, offline
tl = transformer_lens.HookedTransformer.from_pretrained_no_processing("EleutherAI/pythia-70m", hf_model=hf,
                                                                      device="cpu", tokenizer=None)
ids = random_ids(config, 2, 17, 1)
_, theirs = tl.run_with_cache(ids)
_, cache = ours.run_with_cache(ids)
errors, missing = {}, []
for name, value in cache.items():
    if name not in theirs:
        missing.append(name)
        continue
    keep = torch.isfinite(value) if name.endswith("hook_attn_scores") else torch.ones_like(value, dtype=torch.bool)
    errors[name] = difference(name, value[keep], theirs[name][keep]).rel_error
    if name.endswith("hook_attn_scores"):
        assert torch.isneginf(theirs[name][~keep]).all()
print(json.dumps({"errors": errors, "missing": missing}))
"""


def test_hook_points_equal_transformer_lens_unprocessed(tmp_path):
    """TransformerLens' HookedTransformer (from_pretrained_no_processing) on the same weights, in a
    fresh process: it reads its config from the Hub cache, here a hand-built offline one."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("transformer_lens") is None:
        pytest.skip("TransformerLens is not installed (an optional comparison: pip install transformer-lens)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    tests = str(Path(__file__).resolve().parent)
    proc = subprocess.run(
        [sys.executable, "-c", TRANSFORMER_LENS_SCRIPT, tests, str(tmp_path / "ckpt"), str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["missing"] == ["hook_logits"]  # an addition of ours
    assert len(report["errors"]) > 100
    worst = max(report["errors"].items(), key=lambda kv: kv[1])
    assert worst[1] <= FP32, f"worst: {worst}"
