"""The parity tool: `neox-mini parity` against transformers and against golden reference files.

One small synthetic checkpoint (5 layers, so that layer 3 is neither first nor last) and one
reference file made from it by transformers are shared by the tests of this module. Checks that
must not see transformers run in a subprocess where importing it fails (sitecustomize puts None in
sys.modules["transformers"]).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from neox_mini import GPTNeoX, NeoXConfig
from neox_mini.checkpoint import save_checkpoint
from neox_mini.cli import main
from neox_mini.golden import channel_subset, load_reference, save_reference, tensors_sha256
from neox_mini.parity import TOLERANCES, compare_summary, next_token_stats
from neox_mini.synthetic import random_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
GOLDEN_FIXTURES = ["tiny-parallel", "tiny-sequential"]  # written by scripts/make_reference.py --golden
CONFIG = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=5, num_heads=4, intermediate_size=256)
NAMES = ["gpt_neox.embed_in"] + [f"gpt_neox.layers.{i}" for i in range(5)] + ["gpt_neox.final_layer_norm"]


def build_synthetic(folder: Path, config: NeoXConfig, seed: int) -> GPTNeoX:
    """The same recipe as scripts/make_reference.py: torch.Generator-seeded weights, fp32."""
    model = random_model(config, seed=seed)
    save_checkpoint(model, folder)
    return model


def parity(capsys, *args) -> tuple[int, str, str]:
    rc = main(["parity", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def run_without_transformers(tmp_path: Path, argvs: list[list[str]]) -> list[dict]:
    """Run `neox-mini` argument lists in a fresh interpreter where `import transformers` fails."""
    block = tmp_path / "no_transformers"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['transformers'] = None\n")
    runner = textwrap.dedent("""
        import contextlib, io, json, sys
        assert sys.modules.get("transformers", "missing") is None, "the import block did not load"
        from neox_mini.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
            results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
        loaded = sorted(m for m, v in sys.modules.items() if m.startswith("transformers") and v is not None)
        print(json.dumps({"results": results, "transformers_modules": loaded}))
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(block)}
    proc = subprocess.run(
        [sys.executable, "-c", runner, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["transformers_modules"] == []
    return report["results"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_json) -> Path:
    folder = tmp_path_factory.mktemp("parity") / "tiny"
    build_synthetic(folder, CONFIG, seed=3)
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")  # so the built-in texts are used
    return folder


@pytest.fixture(scope="module")
def made_reference(checkpoint, tmp_path_factory) -> tuple[Path, int, str]:
    """`parity --against transformers --save-reference`: (file, exit code, printed table)."""
    ref = tmp_path_factory.mktemp("ref") / "tiny.safetensors"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["parity", "--model", str(checkpoint), "--against", "transformers", "--save-reference", str(ref)])
    return ref, rc, buf.getvalue()


@pytest.fixture(scope="module")
def against_json(checkpoint) -> tuple[int, dict]:
    """`parity --against transformers --json` on the good checkpoint: (exit code, report)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["parity", "--model", str(checkpoint), "--json"])
    return rc, json.loads(buf.getvalue())


def changed_copy(checkpoint: Path, dest: Path, tensor: str) -> Path:
    """A copy of the checkpoint with one tensor changed by 1% of its scale."""
    shutil.copytree(checkpoint, dest)
    state = load_file(str(dest / "model.safetensors"))
    t = state[tensor]
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    state[tensor] = t + 0.01 * t.abs().max() * noise
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


# ----------------------------------------------------------------------------- good checkpoints pass


def test_against_transformers_passes_and_prints_the_table(made_reference):
    ref, rc, table = made_reference
    assert rc == 0, table
    for name in NAMES + ["logits"]:
        assert any(line.startswith(name + " ") and line.split()[4] == "ok" for line in table.splitlines()), name
    assert "top-1 agreement 100.00%" in table
    assert "PASS: every activation within 1e-05" in table
    assert ref.is_file()


def test_against_transformers_json_statistics(against_json):
    rc, report = against_json
    assert rc == 0 and report["passed"] and report["first_divergence"] is None
    assert [a["name"] for a in report["activations"]] == NAMES + ["logits"]
    tol = TOLERANCES["float32"]
    assert report["tolerance"] == tol
    for a in report["activations"]:
        assert a["compared"] == "all values" and a["within_tolerance"]
        assert 0 <= a["rel_error"] <= tol and a["nmse"] <= tol**2
    assert report["activations"][0]["max_abs"] == 0.0  # an embedding lookup is exact
    nt = report["next_token"]
    assert nt["top1_agreement"] == 1.0 and nt["top5_agreement"] == 1.0
    assert 0 <= nt["kl_mean"] <= nt["kl_max"] < 1e-10
    # 4 built-in texts tokenized with the real tokenizer, plus 2 random sequences
    assert len(report["inputs"]) == 6 and sum("random ids" in s for s in report["inputs"]) == 2
    assert nt["positions"] == report["num_tokens"]


@pytest.fixture(scope="module")
def without_transformers(made_reference, checkpoint, tmp_path_factory) -> dict[str, dict]:
    """One interpreter with transformers blocked runs: the module's reference, --against transformers,
    and each golden fixture on its checkpoint rebuilt from the seed in the file (see below)."""
    tmp = tmp_path_factory.mktemp("blocked")
    ref, _, _ = made_reference
    argvs = {
        "reference": ["parity", "--model", str(checkpoint), "--reference", str(ref)],
        "against": ["parity", "--model", str(checkpoint), "--against", "transformers"],
    }
    for name in GOLDEN_FIXTURES:
        path = GOLDEN / f"{name}.safetensors"
        assert path.is_file(), f"{path} is missing: run python scripts/make_reference.py --golden"
        meta = load_reference(path).metadata
        recipe = json.loads(meta["synthetic_recipe"])
        # Files written before the config held only architecture also record dtype and name.
        fields = {f.name for f in dataclasses.fields(NeoXConfig)}
        config = NeoXConfig(**{k: v for k, v in recipe["config"].items() if k in fields})
        model = build_synthetic(tmp / name, config, recipe["seed"])
        assert tensors_sha256(model.state_dict()) == meta["weights_sha256"], (
            f"{name}: the rebuilt checkpoint is not the one the golden file was made from"
        )
        argvs[name] = ["parity", "--model", str(tmp / name), "--reference", str(path), "--json"]
    return dict(zip(argvs, run_without_transformers(tmp, list(argvs.values())), strict=True))


def test_reference_passes_without_transformers(without_transformers):
    reference_run, against_run = without_transformers["reference"], without_transformers["against"]
    assert reference_run["rc"] == 0, reference_run["err"]
    assert "PASS: every activation within 1e-05" in reference_run["out"]
    for name in NAMES + ["logits"]:
        assert f"\n{name} " in reference_run["out"]
    # Without transformers, --against transformers is an error (2) that says what to install.
    assert against_run["rc"] == 2
    assert "pip install transformers" in against_run["err"] and len(against_run["err"].splitlines()) == 1


def test_reference_file_contents(made_reference):
    ref, _, _ = made_reference
    with safe_open(str(ref), framework="pt") as f:
        meta = f.metadata()
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    for key in (
        "repo_id",
        "revision",
        "commit_sha",
        "reference_dtype",
        "transformers_version",
        "torch_version",
        "date",
        "config",
        "inputs",
        "activations",
    ):
        assert key in meta, key
    assert meta["reference_dtype"] == "float32"
    config = json.loads(meta["config"])
    assert {k: config[k] for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")} == {
        "vocab_size": 50304,
        "hidden_size": 64,
        "num_layers": 5,
        "num_heads": 4,
        "intermediate_size": 256,
    }
    assert json.loads(meta["activations"]) == NAMES
    N = shapes["input_ids"][0]
    assert shapes["logits.top_values"] == [N, 64] and shapes["logits.top_indices"] == [N, 64]
    assert shapes["logits.logsumexp"] == [N] and shapes["channels"] == [64]  # C = 64: every channel
    for name in NAMES:
        assert shapes[f"{name}.sample"] == [N, 64] and shapes[f"{name}.norm"] == [N]


# ----------------------------------------------------------------------------- divergence is localised


@pytest.mark.parametrize(
    "tensor, first",
    [
        ("gpt_neox.layers.3.mlp.dense_4h_to_h.weight", "gpt_neox.layers.3"),
        ("gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.layers.0"),
        ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm"),
        ("embed_out.weight", "logits"),
    ],
)
def test_changed_tensor_names_the_first_diverging_layer(made_reference, checkpoint, tmp_path, capsys, tensor, first):
    ref, _, _ = made_reference
    changed = changed_copy(checkpoint, tmp_path / "changed", tensor)
    rc, out, _ = parity(capsys, "--model", changed, "--reference", ref, "--json")
    report = json.loads(out)
    assert rc == 1 and not report["passed"]
    assert report["first_divergence"] == first
    by_name = {a["name"]: a for a in report["activations"]}
    names = NAMES + ["logits"]
    for name in names[: names.index(first)]:  # everything before it is untouched by the change
        assert by_name[name]["within_tolerance"], name
    assert by_name[first]["rel_error"] > 100 * TOLERANCES["float32"]
    rc, table, _ = parity(capsys, "--model", changed, "--reference", ref)
    assert rc == 1 and f"FAIL: first divergence at {first}:" in table


def test_a_change_outside_the_stored_channels_is_caught_by_the_norm():
    # C = 256 stores 64 channels; change only channel 1 (not stored) of layer 1 in "our" outputs.
    N, C, V = 10, 256, 100
    gen = torch.Generator().manual_seed(0)
    acts = {
        name: torch.randn(N, C, generator=gen)
        for name in ["gpt_neox.embed_in", "gpt_neox.layers.0", "gpt_neox.layers.1", "gpt_neox.final_layer_norm"]
    }
    logits = torch.randn(N, V, generator=gen)
    channels = channel_subset(C)
    assert 1 not in channels.tolist() and channels[0] == 0 and channels[-1] == C - 1 and len(channels) == 64
    ours = {k: v.clone() for k, v in acts.items()}
    ours["gpt_neox.layers.1"][:, 1] += 1.0
    from neox_mini.parity import Reference, summarize

    ref = Reference(Path("x"), summarize(logits, acts), {}, {}, list(acts))
    stats, _ = compare_summary((logits, ours), ref)
    errors = {s.name: s.rel_error for s in stats}
    assert errors["gpt_neox.layers.0"] == 0 and errors["gpt_neox.layers.1"] > 1e-3


# ----------------------------------------------------------------------------- statistics


def test_next_token_stats_exact_and_lumped_kl():
    gen = torch.Generator().manual_seed(0)
    ref, ours = torch.randn(6, 50, generator=gen, dtype=torch.float64), None
    ours = ref + 0.3 * torch.randn(6, 50, generator=gen, dtype=torch.float64)
    exact = (ref.softmax(-1) * (ref.log_softmax(-1) - ours.log_softmax(-1))).sum(-1)  # [6]
    order = ref.sort(-1, descending=True)
    full = next_token_stats(ours, order.values, order.indices, ref.logsumexp(-1))
    assert full["kl_mean"] == pytest.approx(exact.mean().item(), rel=1e-9)
    assert full["kl_max"] == pytest.approx(exact.max().item(), rel=1e-9)
    head = next_token_stats(ours, order.values[:, :10], order.indices[:, :10], ref.logsumexp(-1))
    assert 0 < head["kl_mean"] <= full["kl_mean"]  # lumping the tail can only lose information
    assert full["top1_agreement"] == (ours.argmax(-1) == ref.argmax(-1)).double().mean().item()
    same = next_token_stats(ref, order.values[:, :10], order.indices[:, :10], ref.logsumexp(-1))
    assert same["kl_max"] < 1e-12 and same["top1_agreement"] == 1.0 and same["top5_agreement"] == 1.0
    # Our top-5 shares 4 of the reference's 5 tokens: agreement 0.8.
    swapped = ref.clone()
    swapped[:, order.indices[:, 4]] = -100.0
    assert next_token_stats(swapped[:1], order.values[:1], order.indices[:1], ref[:1].logsumexp(-1))[
        "top5_agreement"
    ] == pytest.approx(0.8)


# ----------------------------------------------------------------------------- GELU: erf vs tanh


def test_gelu_tanh_shows_the_training_time_difference(checkpoint, against_json, capsys):
    rc_erf, erf = against_json  # the checkpoint's own GELU is erf ("gelu"), as in every Pythia config
    rc_tanh, out_tanh, _ = parity(capsys, "--model", checkpoint, "--gelu", "tanh", "--json")
    tanh = json.loads(out_tanh)
    assert rc_erf == 0 and erf["gelu"] == "erf" and tanh["gelu"] == "tanh"
    e = {a["name"]: a["rel_error"] for a in erf["activations"]}
    t = {a["name"]: a["rel_error"] for a in tanh["activations"]}
    assert t["gpt_neox.embed_in"] == 0.0  # the GELU is in the MLP: the embeddings are unaffected
    assert t["logits"] > 10 * e["logits"]  # small, but clearly above fp32 rounding
    assert tanh["next_token"]["kl_mean"] < 1e-6
    assert (rc_tanh == 1) == (tanh["first_divergence"] is not None)


# ----------------------------------------------------------------------------- bad inputs


def rewrite(src: Path, dest: Path, change) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(dest), metadata=meta)
    return dest


def test_bad_reference_files_are_clear_errors(made_reference, checkpoint, tmp_path, capsys):
    ref, _, _ = made_reference
    data = ref.read_bytes()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 10)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(3)}, str(plain))

    def other_ids(tensors, meta):
        tensors["input_ids"] = tensors["input_ids"].flip(0).contiguous()

    other = rewrite(ref, tmp_path / "other_ids.safetensors", other_ids)

    def edited_logits(tensors, meta):
        tensors["logits.top_values"] = tensors["logits.top_values"] + 1

    edited = rewrite(ref, tmp_path / "edited.safetensors", edited_logits)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A different prompt than the reference was made on\n", encoding="utf-8")
    cases = [
        (["--reference", tmp_path / "missing.safetensors"], "does not exist"),
        (["--reference", garbage], "is not a readable safetensors file"),
        (["--reference", truncated], "is not a readable safetensors file"),
        (["--reference", plain], "is not a valid parity reference: metadata 'format'"),
        (["--reference", other], "input_ids do not match the checksum"),
        (["--reference", edited], "tensor data does not match the checksum"),
        (
            ["--reference", GOLDEN / "tiny-parallel.safetensors"],
            "another shape: hidden_size 32 (reference) vs 64 (this model), num_layers 4 (reference) vs 5",
        ),
        (["--reference", ref, "--prompts", prompts], "are not the ids stored in reference file"),
        (["--reference", ref, "--save-reference", tmp_path / "new.safetensors"], "cannot be combined"),
        (["--against", "transformers", "--prompts", tmp_path / "missing.txt"], "prompts file"),
    ]
    for args, message in cases:
        rc, out, err = parity(capsys, "--model", checkpoint, *args)
        assert rc == 2, (args, out, err)
        assert out == "" and len(err.splitlines()) == 1 and message in err, (args, err)
    assert not (tmp_path / "new.safetensors").exists()


def test_model_mismatch_and_missing_model_are_errors(made_reference, tmp_path, capsys):
    ref, _, _ = made_reference
    small = tmp_path / "small-vocab"
    build_synthetic(small, dataclasses.replace(CONFIG, vocab_size=1000), seed=3)
    rc, _, err = parity(capsys, "--model", small, "--reference", ref)
    assert rc == 2 and "vocab_size 50304 (reference) vs 1000 (this model)" in err
    rc, _, err = parity(capsys, "--model", tmp_path / "nope", "--reference", ref)
    assert rc == 2 and "does not exist" in err


# ----------------------------------------------------------------------------- golden fixtures


def test_golden_fixtures_without_transformers(without_transformers):
    """tests/golden/*.safetensors were written once by transformers (scripts/make_reference.py
    --golden). The fixture rebuilt each synthetic checkpoint from the seed recorded in the file,
    proved it is the same checkpoint (weights checksum), and checked neox_mini against it with
    transformers blocked."""
    assert sum(p.stat().st_size for p in GOLDEN.glob("*.safetensors")) < 400_000  # small enough to commit
    for name in GOLDEN_FIXTURES:
        result = without_transformers[name]
        assert result["rc"] == 0, (name, result["err"], result["out"])
        report = json.loads(result["out"])
        assert report["passed"] and report["next_token"]["top1_agreement"] == 1.0, name
        assert len(report["activations"]) == 4 + 3


def test_save_reference_writes_atomically(tmp_path, monkeypatch):
    """The final name appears only once the file is complete, and a write that fails halfway
    leaves nothing behind: neither a partial file nor a temporary one."""
    import safetensors.torch

    out = tmp_path / "r.safetensors"
    seqs = [torch.tensor([1, 2, 3])]
    acts = {"gpt_neox.embed_in": torch.randn(3, 8), "gpt_neox.final_layer_norm": torch.randn(3, 8)}

    def fail_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fail_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_reference(out, seqs, torch.randn(3, 20), acts, {"config": "{}"}, top_k=5)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_reference(out, seqs, torch.randn(3, 20), acts, {"config": "{}"}, top_k=5)
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]


# ----------------------------------------------------------------------------- the sweep script


def test_parity_sweep_writes_one_report(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import parity_sweep
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = tmp_path / "sweep"
    rc = parity_sweep.main(
        [
            "--synthetic",
            "tiny",
            "--dtypes",
            "fp32",
            "bf16",
            "--models",
            str(tmp_path / "not-a-model"),
            "--out",
            str(out),
        ]
    )
    assert rc == 1  # the missing model is an ERROR row, so not everything passed
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [(r["model"], r["dtype"], r["status"]) for r in runs] == [
        ("synthetic tiny", "fp32", "PASS"),
        ("synthetic tiny", "bf16", "PASS"),
        (str(tmp_path / "not-a-model"), "fp32", "ERROR"),
        (str(tmp_path / "not-a-model"), "bf16", "ERROR"),
    ]
    assert runs[0]["tolerance"] == TOLERANCES["float32"] and runs[1]["tolerance"] == TOLERANCES["bfloat16"]
    assert "does not exist" in runs[2]["error"]
    md = out.with_suffix(".md").read_text()
    assert md.count("| synthetic tiny |") == 2 and md.count("| ERROR |") == 2
