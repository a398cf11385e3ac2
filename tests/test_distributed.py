"""Tensor parallelism (distributed.py): the model split over 2 ranks (torchrun, gloo on CPU)
computes what the one-process model computes, from every checkpoint layout, each rank reading
only its slice; and the errors of a split that cannot be made."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny
from tensor_parallel_worker import outputs

import neox_mini.plan
from neox_mini import NeoXConfig
from neox_mini.cli import main
from neox_mini.errors import DoesNotFitError
from neox_mini.loading import load_folder
from neox_mini.parity import TOLERANCES, difference
from neox_mini.plan import check_fits, plan, split_dim
from neox_mini.synthetic import write_random_checkpoint

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")


def torchrun(ranks: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--standalone"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# The suite runs the 70m shape on 2 ranks (~20 s); NEOX_MINI_TP_FULL=1 adds the 160m shape and 4 ranks.
FULL = os.environ.get("NEOX_MINI_TP_FULL") == "1"


@pytest.fixture(scope="module", params=["70m", "160m"] if FULL else ["70m"])
def checkpoints(request, tmp_path_factory) -> dict[str, Path]:
    """Random weights in a real Pythia shape, in the three layouts Pythia repos use."""
    root = tmp_path_factory.mktemp(f"tp{request.param}")
    config = NeoXConfig.from_pythia(request.param)
    shard = 80_000_000 if request.param == "70m" else 200_000_000  # 4 shards of each
    return {
        "safetensors": write_random_checkpoint(root / "single", config, seed=1),
        "sharded safetensors": write_random_checkpoint(root / "sharded", config, seed=1, max_shard_bytes=shard),
        "sharded bin": write_random_checkpoint(root / "bin", config, seed=1, weights="bin", max_shard_bytes=shard),
    }


@pytest.mark.parametrize("ranks", [2, 4] if FULL else [2])
def test_ranks_match_one_process(checkpoints, ranks, tmp_path):
    torchrun(ranks, str(WORKER), str(tmp_path), *map(str, checkpoints.values()))
    outputs_of = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(ranks)]
    whole = load_folder(checkpoints["safetensors"])
    reference = outputs(whole)  # the same weights in every layout
    full = sum(t.numel() * t.element_size() for t in whole.state_dict().values())
    small = sum(t.numel() * t.element_size() for n, t in whole.state_dict().items() if split_dim(n) is None)
    for layout, folder in checkpoints.items():
        for r, results in enumerate(outputs_of):
            got, where = results[str(folder)], f"{layout}, rank {r} of {ranks}"
            d = difference(f"{where}: logits", got["logits"], reference["logits"])
            assert not d.over(TOLERANCES["float32"]), str(d)
            assert torch.equal(got["greedy"], reference["greedy"]), f"{where}: greedy tokens differ"
            assert got["tokens"] == reference["tokens"]
            assert got["nll"] == pytest.approx(reference["nll"], rel=TOLERANCES["float32"]), where
            # Each rank read its 1/N of the split weights plus the small replicated ones: no more.
            read = got["provenance"]["tensor_parallel"]["bytes_read"]
            assert read == (full - small) // ranks + small, f"{where}: read {read:,} of {full:,} bytes"


def test_commands_under_torchrun(tmp_path, tokenizer_json, capsys):
    """generate, score and parity run split over 2 ranks; only rank 0 prints, and generate and
    score print what one process prints (score's numbers within fp32's tolerance: the ranks sum
    their partial products in another order, which moved the sixth decimal under AVX2 kernels)."""
    folder = write_random_checkpoint(tmp_path / "m", tiny(vocab_size=50304), tokenizer=tokenizer_json)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    for command in (
        ["generate", "--model", str(folder), "--greedy", "-n", "32", "Once upon a time"],
        ["score", "--model", str(folder), str(text), "--window", "32"],
    ):
        assert main(command) == 0
        assert_same_output(torchrun(2, "-m", "neox_mini", *command).stdout, capsys.readouterr().out)
    parity = torchrun(2, "-m", "neox_mini", "parity", "--model", str(folder)).stdout
    assert parity.count("PASS") == 1, parity


def assert_same_output(got: str, want: str) -> None:
    """The same words; numbers equal within fp32's tolerance."""
    got_words, want_words = got.split(), want.split()
    assert len(got_words) == len(want_words), f"{got!r} != {want!r}"
    for g, w in zip(got_words, want_words, strict=True):
        try:
            g_number, w_number = float(g), float(w)
        except ValueError:
            assert g == w, f"{g!r} != {w!r} in {got!r}"
            continue
        assert g_number == pytest.approx(w_number, rel=TOLERANCES["float32"]), f"{g} != {w} in {got!r}"


def test_ranks_must_divide_the_heads():
    config = NeoXConfig.from_pythia("70m")  # 8 heads
    with pytest.raises(ValueError, match=r"3 devices do not divide the 8 attention heads: use one of \[1, 2, 4, 8\]"):
        check_fits(config, torch.float32, 3, "cpu")


def test_refuses_up_front_when_the_weights_do_not_fit(monkeypatch):
    config = NeoXConfig.from_pythia("12b")
    monkeypatch.setattr(neox_mini.plan, "available_memory", lambda device: 20 * 2**30)
    per_rank = plan(config, "bf16", devices=2, context=1).weights
    with pytest.raises(DoesNotFitError, match=rf"{per_rank / 2**30:.2f} GiB per rank x 2 rank\(s\) on this cpu"):
        check_fits(config, torch.bfloat16, 2, "cpu", ranks_here=2)  # two ranks share the machine's RAM
    check_fits(config, torch.bfloat16, 2, "cuda")  # one rank per GPU: 11.0 GiB of 20 fits


def test_one_process_refuses_a_cast_that_does_not_fit(tmp_path, monkeypatch):
    folder = write_random_checkpoint(tmp_path / "m", tiny())
    monkeypatch.setattr(neox_mini.plan, "available_memory", lambda device: 1000)
    load_folder(folder)  # as stored: memory-mapped file pages, nothing to fit
    with pytest.raises(DoesNotFitError, match=r"1 rank\(s\) on this cpu"):
        load_folder(folder, dtype="bf16")
