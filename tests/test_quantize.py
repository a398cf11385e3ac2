"""Weight-only int8 (quantize.py): the rounding, the model's accuracy against fp32 on both paths and
every kernel, saving once and loading like any checkpoint, and the refusals."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import random_ids, tiny

from neox_mini import NeoXConfig, fast, matvec
from neox_mini.cli import main
from neox_mini.errors import ConfigError
from neox_mini.loading import load_folder
from neox_mini.parity import TOLERANCES, difference, quantization_error
from neox_mini.quantize import Int8Linear, quantize_rows
from neox_mini.synthetic import random_model, write_random_checkpoint

INT8 = TOLERANCES["int8"]


def test_rows_round_to_the_nearest_level():
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    w[3] = 0  # an all-zero row stays zero
    w[4, 7], w[5, 9], w[6] = 1e30, -3e30, -2.5  # each row's extreme is exactly +-127 levels, unclamped
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (64,)
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7)
    assert torch.all(q[3] == 0)
    assert q[4, 7] == 127 and q[5, 9] == -127 and torch.all(q[6] == -127)


def test_the_int8_kernel_is_never_given_an_unaligned_weight():
    """aten._weight_int8pack_mm crashes the process on a weight that is not 64-byte aligned."""
    q, scale = quantize_rows(torch.randn(96, 64))
    storage = torch.empty(96 * 64 + 64, dtype=torch.int8)
    offset = next(i for i in range(1, 64) if (storage.data_ptr() + i) % 64)
    unaligned = storage[offset : offset + 96 * 64].view(96, 64).copy_(q)
    x = torch.randn(3, 64)
    assert unaligned.data_ptr() % 64
    assert torch.equal(matvec.int8_pack(x, unaligned, scale, None), matvec.int8_dequant(x, unaligned, scale, None))


@pytest.mark.parametrize("method", list(matvec.INT8_METHODS))
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_every_int8_kernel_computes_the_dequantized_product(method, rows):
    g = torch.Generator().manual_seed(rows)
    w, bias, x = torch.randn(96, 64, generator=g), torch.randn(96, generator=g), torch.randn(2, rows, 64, generator=g)
    q, scale = quantize_rows(w)
    want = torch.nn.functional.linear(x, q.float() * scale[:, None], bias)
    # int8-pack rounds the activations to bf16 (bf16's tolerance); int8-dynamic and int8-onednn
    # round them to 255 levels per row, like the weights, and int8-fbgemm to 256 levels per input
    # (the int8 tolerance).
    tolerance = {"int8-pack": TOLERANCES["bfloat16"], "int8-dequant": TOLERANCES["float32"]}.get(method, INT8)
    d = difference(method, matvec.INT8_METHODS[method](x, q, scale, bias), want)
    assert not d.over(tolerance), str(d)


def test_without_vnni_no_packed_kernel_is_offered_and_onednn_computes_int8_dynamic(monkeypatch):
    """Without VNNI, fbgemm keeps 7-bit activations and oneDNN's u8 x s8 sums can saturate."""
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    for rows in (1, 8, 40):
        assert not {"int8-fbgemm", "int8-onednn"} & set(matvec.int8_candidates(rows))
    q, scale = quantize_rows(torch.randn(96, 64, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(3, 64) * 4
    assert torch.equal(matvec.int8_onednn(x, q, scale, None), matvec.int8_dynamic(x, q, scale, None))


def test_with_onednn_held_to_avx2_every_int8_kernel_stays_within_tolerance():
    """oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA, in a fresh process): its int8 products then sum
    pairs in 16 bits and saturate, as on a CPU without VNNI (int8-dynamic was 23-25 % off)."""
    code = textwrap.dedent(
        """
        import torch
        from neox_mini import matvec
        assert not matvec.vnni()
        from neox_mini.parity import TOLERANCES, difference
        g = torch.Generator().manual_seed(0)
        q, scale = matvec.quantize_rows(torch.randn(96, 64, generator=g))
        for rows in (1, 40):
            x = torch.randn(2, rows, 64, generator=g) * 3
            want = torch.nn.functional.linear(x, q.float() * scale[:, None])
            for method, kernel in matvec.INT8_METHODS.items():
                d = difference(f"{method}, {rows} rows", kernel(x, q, scale, None), want)
                print(str(d) if d.over(TOLERANCES["int8"]) else "ok")
        """
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(matvec.INT8_METHODS) and set(lines) == {"ok"}, result.stdout


@pytest.mark.parametrize(
    "isa, allowed",
    [("AVX2", False), ("avx512_core", False), ("AVX2_VNNI", True), ("AVX512_CORE_VNNI", True), ("ALL", True)],
)
def test_onednn_held_below_vnni_is_read_from_the_environment(monkeypatch, isa, allowed):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    matvec.onednn_may_use_vnni.cache_clear()
    try:
        assert matvec.onednn_may_use_vnni() is allowed
    finally:
        monkeypatch.undo()
        matvec.onednn_may_use_vnni.cache_clear()


def test_onednn_computes_what_int8_dynamic_computes():
    """Both round the activations per row the same way; only the kernel differs."""
    if "int8-onednn" not in matvec.int8_candidates(rows=40):
        pytest.skip("oneDNN's int8 kernel is offered only on CPUs with VNNI")
    g = torch.Generator().manual_seed(1)
    q, scale = quantize_rows(torch.randn(96, 64, generator=g))
    x, bias = torch.randn(2, 40, 64, generator=g) * 3, torch.randn(96, generator=g)
    d = difference("onednn", matvec.int8_onednn(x, q, scale, bias), matvec.int8_dynamic(x, q, scale, bias))
    assert not d.over(TOLERANCES["float32"]), str(d)


@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_a_packed_weight_edited_in_place_is_packed_again(kernel):
    """int8-fbgemm and int8-onednn multiply with a packed copy of the weight: an edit to the weight
    (an ablated row, say) must reach the product, and a freed weight must not leave its copy behind."""
    if f"int8-{kernel}" not in matvec.int8_candidates(rows=1):
        pytest.skip(f"int8-{kernel} is not offered on this machine")
    product = matvec.INT8_METHODS[f"int8-{kernel}"]
    g = torch.Generator().manual_seed(0)
    q, scale = quantize_rows(torch.randn(96, 64, generator=g))
    x, bias = torch.randn(1, 64, generator=g), torch.randn(96, generator=g)  # fbgemm packs the bias too
    before = product(x, q, scale, bias)
    with torch.inference_mode():  # in-place writes there count too
        q[5] = 0
        scale[7] *= 2
        bias[5] = 0
    after, want = product(x, q, scale, bias), matvec.int8_dequant(x, q, scale, bias)
    assert after[0, 5] == 0 and before[0, 5] != 0
    d = difference("after the edit", after, want)
    assert not d.over(INT8), str(d)
    bias[9] += 1  # the bias alone
    assert torch.allclose(product(x, q, scale, bias)[0, 9], after[0, 9] + 1)
    key = (kernel, q.data_ptr())
    assert key in matvec._packs
    del q
    assert key not in matvec._packs


@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_inference_tensors_are_computed_without_a_packed_copy(kernel):
    """Inference tensors have no version counter, so an edit could not be told from the packed copy:
    the packed kernels compute int8_dynamic's product for them and keep nothing."""
    if f"int8-{kernel}" not in matvec.int8_candidates(rows=1):
        pytest.skip(f"int8-{kernel} is not offered on this machine")
    with torch.inference_mode():
        q, scale = quantize_rows(torch.randn(96, 64, generator=torch.Generator().manual_seed(0)))
        x, bias = torch.randn(1, 64), torch.randn(96)
        y = matvec.INT8_METHODS[f"int8-{kernel}"](x, q, scale, bias)
        assert torch.equal(y, matvec.int8_dynamic(x, q, scale, bias))
    assert (kernel, q.data_ptr()) not in matvec._packs


@pytest.mark.parametrize("method", list(matvec.INT8_METHODS))
@pytest.mark.parametrize("size", ["14m", "70m"])
def test_int8_model_within_its_tolerance_of_fp32(size, method, monkeypatch):
    """Whichever int8 kernel a machine picks (matvec.py), the model stays within the tolerance."""
    monkeypatch.setattr(matvec, "_choices", {})
    monkeypatch.setattr(matvec, "fastest", lambda x, w, b, scale=None: "linear" if scale is None else method)
    model = random_model(NeoXConfig.from_pythia(size), seed=0)
    ids = random_ids(model.config, batch=2, length=40)
    with torch.inference_mode():
        reference = fast.forward(model, ids)
        model.quantize("int8")
        prefill, readable = fast.forward(model, ids), model(ids)
        model.setup_kv_cache(2, 40)
        fast.forward(model, ids[:, :36])
        decode = torch.cat([fast.forward(model, ids[:, t : t + 1], start_pos=t) for t in range(36, 40)], dim=1)
    for name, got, want in (
        ("prefill", prefill, reference),
        ("readable", readable, reference),
        ("decode", decode, reference[:, 36:]),
    ):
        e = quantization_error(want, got)
        assert e["rel_error"] <= INT8, f"{size} {name}: {difference('logits', got, want)}"
        # (top-1 agreement says little here: random weights give near-flat logits, 90-98% measured)
        assert e["kl_max"] < 1e-3, (size, name, e)


def test_quantize_once_then_load_like_any_checkpoint(tmp_path, capsys):
    source = write_random_checkpoint(tmp_path / "fp32", tiny(), seed=3)
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(source), "--out", str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bits"] == 8
    loaded = load_folder(out)
    assert loaded.quantization == "int8" and loaded.provenance["quantization"] == "int8"
    int8_weights = [b for b in loaded.buffers() if b.dtype == torch.int8]
    assert int8_weights and all(b.data_ptr() % 64 == 0 for b in int8_weights)  # what the int8 kernel needs
    in_memory = load_folder(source).quantize("int8")
    ids = random_ids(loaded.config)
    with torch.inference_mode():
        assert torch.equal(fast.forward(loaded, ids), fast.forward(in_memory, ids))
    # a second quantize into the same folder is refused, and writes nothing
    before = sorted(p.stat().st_mtime_ns for p in out.iterdir())
    assert main(["quantize", "--model", str(source), "--out", str(out)]) == 1
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in out.iterdir()) == before


def test_generate_says_when_it_times_the_int8_kernels(tmp_path, capsys, monkeypatch, tokenizer_json):
    monkeypatch.setenv("NEOX_MINI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(matvec, "_choices", None)
    source = write_random_checkpoint(tmp_path / "fp32", tiny(vocab_size=50304), seed=3, tokenizer=tokenizer_json)
    argv = ["generate", "--model", str(source), "--quantize", "int8", "--greedy", "-n", "3", "Hello"]
    assert main(argv) == 0
    assert "timed this machine's int8 decode kernels in" in capsys.readouterr().err
    monkeypatch.setattr(matvec, "_choices", None)  # a new process: the choice is read from the file
    assert main(argv) == 0
    assert "int8 decode kernels" not in capsys.readouterr().err


def test_other_quantization_configs_are_refused(tmp_path):
    folder = write_random_checkpoint(tmp_path / "m", tiny())
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"unsupported quantization_config \{\"quant_method\": \"gptq\""):
        load_folder(folder)


def test_a_quantized_model_keeps_its_hooks():
    model = random_model(tiny(), seed=1).quantize("int8")
    ids = random_ids(model.config)
    logits, cache = model.run_with_cache(ids, names=["blocks.0.hook_mlp_out"])
    assert cache["blocks.0.hook_mlp_out"].shape == (2, 37, 64) and torch.isfinite(logits).all()


def test_decode_kernels_are_chosen_once_over_whole_steps(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOX_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(matvec, "_choices", None)
    model = random_model(NeoXConfig.from_pythia("14m"), seed=0).quantize("int8")
    model.setup_kv_cache(1, 12)
    caches = [block.attention.kv_cache for block in model.gpt_neox.layers]
    fast.choose_int8_decode_kernels(model, 1)
    assert [block.attention.kv_cache for block in model.gpt_neox.layers] == caches  # the model's own, untouched
    choices = matvec.load_choices()
    step = [key for key in choices if key.startswith("decode ")]
    assert len(step) == 1 and choices[step[0]] in ("per-product", *matvec.int8_candidates(1))
    for module in model.modules():
        if isinstance(module, Int8Linear):
            assert choices[matvec.int8_choice_key(torch.float32, module.weight.shape, 1)] in matvec.INT8_METHODS
    # Kept on disk: a new process (here: choices read again) does not time the steps again.
    monkeypatch.setattr(matvec, "_choices", None)
    monkeypatch.setattr(fast, "forward", lambda *a, **k: pytest.fail("timed again"))
    fast.choose_int8_decode_kernels(model, 1)


def test_interrupted_kernel_choice_leaves_the_model_as_it_was(monkeypatch, tmp_path):
    monkeypatch.setenv("NEOX_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(matvec, "_choices", None)
    model = random_model(NeoXConfig.from_pythia("14m"), seed=0).quantize("int8")
    forward, calls = fast.forward, []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(fast, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fast.choose_int8_decode_kernels(model, 1)
    assert all(block.attention.kv_cache is None for block in model.gpt_neox.layers)
    assert not any(key.startswith("decode ") for key in matvec.load_choices())
    monkeypatch.setattr(fast, "forward", forward)
    ids = random_ids(model.config, batch=1, length=8)
    with torch.inference_mode():
        assert torch.isfinite(fast.forward(model, ids)).all()  # every product has a kernel again
