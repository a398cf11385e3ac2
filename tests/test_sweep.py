"""Sweeps over checkpoints, offline, on a hand-built Hugging Face cache in the real layout: a random
pythia-14m-shape model at six revisions, step1000 and step2000 byte-identical (as Pythia's step0/1/2
are), each compared with a fresh from_pretrained of that revision."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fake_hub import add_to_cache, folder_files, tree_state

from neox_mini import NeoXConfig, ResolveError, RevisionError, Tokenizer, from_pretrained
from neox_mini.generation import generate_batch
from neox_mini.parity import TOLERANCES, difference
from neox_mini.scoring import token_logprobs as score_logprobs
from neox_mini.sweep import memorization, parse_revisions, token_logprobs, weight_diffs
from neox_mini.synthetic import write_random_checkpoint

REPO = "EleutherAI/pythia-14m"
REVISIONS = ["step0", "step1000", "step2000", "step3000", "step4000", "main"]
SEEDS = {"step0": 0, "step1000": 1, "step2000": 1, "step3000": 2, "step4000": 3, "main": 4}  # 1000 == 2000


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The cache root and the source folder of each revision."""
    base = tmp_path_factory.mktemp("sweep")
    config = NeoXConfig.from_pythia("14m")
    sources = {}
    for revision, seed in SEEDS.items():
        if revision == "step2000":
            sources[revision] = sources["step1000"]
        else:
            sources[revision] = write_random_checkpoint(base / revision, config, seed=seed)
    root = base / "hub"
    for revision in REVISIONS:
        refs = [revision, "step143000"] if revision == "main" else [revision]
        add_to_cache(root, REPO, folder_files(sources[revision]) | {"revision.txt": revision.encode()}, refs)
    return root, sources


@pytest.fixture
def offline(hub, monkeypatch):
    root, _ = hub
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return hub


def sequences(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50000, (n, length), generator=torch.Generator().manual_seed(seed))


def test_parse_revisions():
    assert parse_revisions("step1000:step3000:1000") == ["step1000", "step2000", "step3000"]
    assert parse_revisions("main, step0,step0") == ["main", "step0"]
    assert parse_revisions("every=50000") == ["step0", "step50000", "step100000"]
    assert len(parse_revisions("all")) == 154
    assert parse_revisions("all", available=["step0", "step1000"]) == ["step0", "step1000"]
    with pytest.raises(RevisionError, match="step 1,500 is not a published checkpoint; nearest: step1000"):
        parse_revisions("step1000:step2000:500")
    with pytest.raises(ResolveError, match="no revisions"):
        parse_revisions(" , ")


def test_token_logprobs_equal_a_fresh_load_of_every_revision(offline):
    ids = sequences(5, 40)
    result = token_logprobs("pythia-14m", REVISIONS, ids, batch_size=2)
    got = result.values["logprobs"]
    assert got.shape == (6, 5, 39) and got.dtype == torch.float32
    assert [r.name for r in result.revisions] == REVISIONS and result.skipped == []
    for r, revision in enumerate(REVISIONS):
        model = from_pretrained("pythia-14m", revision=revision)
        for n in range(5):
            expected = score_logprobs(model, ids[n])
            assert (got[r, n] - expected).abs().max() <= 1e-6, (revision, n)
    assert torch.equal(got[1], got[2]) and not torch.equal(got[0], got[1])  # identical weights, same numbers
    p = result.provenance()
    assert [x["revision"] for x in p] == REVISIONS and p[3]["step"] == 3000 and p[3]["tokens"] == 3000 * 2_097_152
    assert p[0]["known_issues"] == ["early-steps-identical"] and len(p[0]["commit_sha"]) == 40


def test_memorization_equals_greedy_generation(offline):
    """110 sequences: 100 random, and 10 built from step3000's own greedy continuation, which that
    revision reproduces exactly by construction."""
    model = from_pretrained("pythia-14m", revision="step3000")
    prompts = sequences(10, 32, seed=1).tolist()
    memorized = [p + c for p, c in zip(prompts, generate_batch(model, prompts, 32), strict=True)]
    ids = torch.cat([sequences(100, 64, seed=2), torch.tensor(memorized)])
    result = memorization("pythia-14m", ["step0", "step3000", "main"], ids, batch_size=32)
    exact, matched = result.values["exact"], result.values["matched"]
    assert exact.shape == matched.shape == (3, 110)
    assert exact[1, 100:].all() and (matched[1, 100:] == 32).all()
    for r, revision in enumerate(["step0", "step3000", "main"]):
        m = from_pretrained("pythia-14m", revision=revision)
        greedy = generate_batch(m, ids[:, :32].tolist(), 32)
        for n in range(110):
            truth = ids[n, 32:].tolist()
            lead = next((i for i, (a, b) in enumerate(zip(greedy[n], truth, strict=True)) if a != b), 32)
            assert bool(exact[r, n]) == (greedy[n] == truth) and int(matched[r, n]) == lead, (revision, n)


def test_weight_diffs_flag_the_identical_pair(offline, tmp_path):
    result = weight_diffs("pythia-14m", REVISIONS)
    identical, change, cosine = (result.values[k] for k in ("identical", "relative_change", "cosine"))
    assert identical.shape == (5, 76) and len(result.names) == 76
    assert identical[1].all() and (change[1] == 0).all() and (cosine[1] == 1).all()  # step1000 -> step2000
    assert not identical[[0, 2, 3, 4]].any() and (change[[0, 2, 3, 4]] > 0.1).all()


def test_a_local_folder_of_revisions_and_read_only_inputs(hub, tmp_path):
    _, sources = hub
    runs = tmp_path / "runs"
    for revision in ("step0", "step3000"):
        shutil.copytree(sources[revision], runs / revision)
    before = tree_state(runs)
    ids = sequences(2, 16)
    result = token_logprobs(runs, "all", ids)
    assert [r.name for r in result.revisions] == ["step0", "step3000"]
    expected = score_logprobs(from_pretrained(runs / "step3000"), ids[1])
    assert (result.values["logprobs"][1, 1] - expected).abs().max() <= 1e-6
    assert tree_state(runs) == before


def test_offline_skips_what_is_not_cached_and_says_so(offline):
    result = token_logprobs("pythia-14m", ["step0", "step5000", "main"], sequences(1, 8))
    assert [r.name for r in result.revisions] == ["step0", "main"] and result.skipped == ["step5000"]


def test_ragged_sequences_are_refused(offline):
    with pytest.raises(ValueError, match="same length"):
        token_logprobs("pythia-14m", ["step0"], [[1, 2, 3], [1, 2]])


# ----------------------------------------------------------------------------- the command line


def test_cli_writes_the_tables(offline, tmp_path, capsys):
    from neox_mini.cli import main

    tokens = tmp_path / "seqs.npy"
    np.save(tokens, sequences(4, 64).numpy())
    for kind in ("logprobs", "memorization", "weights"):
        argv = [
            "sweep",
            kind,
            "--model",
            "pythia-14m",
            "--revisions",
            "step0,step1000:step3000:1000,main",
            "--out",
            str(tmp_path / kind),
        ] + ([] if kind == "weights" else ["--tokens", str(tokens)])
        assert main(argv) == 0, capsys.readouterr().err
    rows = (tmp_path / "logprobs.csv").read_text().splitlines()
    assert rows[0] == "revision,step,tokens,commit_sha,known_issues,mean_logprob" and len(rows) == 6
    assert rows[1].startswith("step0,0,0,") and "early-steps-identical" in rows[1]
    assert np.load(tmp_path / "logprobs.npy").shape == (5, 4, 63)
    memo = (tmp_path / "memorization.csv").read_text().splitlines()
    assert memo[0].endswith("memorized_fraction,mean_matched_tokens") and len(memo) == 6
    weights = (tmp_path / "weights.csv").read_text().splitlines()
    assert weights[0].startswith("from,to,step") and weights[2].startswith("step1000,step2000,2000,")
    assert ",76,76," in weights[2]  # every tensor of the identical pair flagged
    meta = json.loads((tmp_path / "weights.json").read_text())
    assert [r["revision"] for r in meta["revisions"]] == ["step0", "step1000", "step2000", "step3000", "main"]


def test_torchrun_gives_byte_identical_files(offline, tmp_path):
    """Two ranks (gloo) split the revisions; rank 0 writes exactly what one process writes."""
    import os
    import subprocess
    import sys

    from neox_mini.cli import main

    tokens = tmp_path / "seqs.npy"
    np.save(tokens, sequences(3, 40).numpy())
    common = ["sweep", "logprobs", "--model", "pythia-14m", "--revisions", ",".join(REVISIONS), "--tokens", str(tokens)]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "neox_mini",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for suffix in (".npy", ".csv", ".json"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes(), suffix

    # --tensor-parallel: each revision split over the two ranks instead; the same log-probs up to
    # the order of the sums (the fp32 tolerance).
    proc = subprocess.run(
        [
            *proc.args[: proc.args.index("--out")],
            "--out",
            str(tmp_path / "split"),
            "--tensor-parallel",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, split = np.load(tmp_path / "one.npy"), np.load(tmp_path / "split.npy")
    d = difference("log-probs", torch.from_numpy(split), torch.from_numpy(one))
    assert not d.over(TOLERANCES["float32"]), str(d)


def test_cli_reads_text_and_jsonl_and_skips_offline(offline, tmp_path, capsys, tokenizer_json):
    from neox_mini.cli import main

    root, sources = offline
    text = tmp_path / "book.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        '{"text": "' + "word " * 50 + '"}\n{"tokens": [1, 2, 3]}\n{"tokens": ' + str(list(range(70))) + "}\n"
    )
    common = [
        "sweep",
        "logprobs",
        "--model",
        "pythia-14m",
        "--revisions",
        "step0,step5000,main",
        "--length",
        "32",
        "--tokenizer",
        str(tokenizer_json),
        "--offline",
    ]
    assert main(common + ["--text", str(text), "--out", str(tmp_path / "text")]) == 0
    err = capsys.readouterr().err
    assert "skipped (offline): step5000" in err
    pieces = len(Tokenizer(tokenizer_json).encode(text.read_text(), bos=True)) // 32
    assert np.load(tmp_path / "text.npy").shape == (2, pieces, 31)  # 2 cached revisions, 32-token pieces
    assert main(common + ["--jsonl", str(jsonl), "--out", str(tmp_path / "docs")]) == 0
    assert "1 line(s)" in capsys.readouterr().err  # the 3-token line is too short
    assert np.load(tmp_path / "docs.npy").shape == (2, 2, 31)
    plot = main(common + ["--jsonl", str(jsonl), "--out", str(tmp_path / "p"), "--plot", str(tmp_path / "p.png")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert plot == 1 and "plots need matplotlib" in capsys.readouterr().err
    else:
        assert plot == 0 and (tmp_path / "p.png").is_file()
