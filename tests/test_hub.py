"""Pythia by name and revision: the Hugging Face cache, downloads, provenance, known issues, errors.

The cache tests build a real-layout cache by hand (blobs, refs, snapshots with relative symlinks)
in a temporary folder. The download tests run `GPTNeoX.from_pretrained` in a worker subprocess
whose HF_ENDPOINT points at a local HTTP server (tests/fake_hub.py) that speaks the Hub's file
protocol; nothing inside neox_mini or huggingface_hub is mocked.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub, add_to_cache, folder_files, tree_state

from neox_mini import CheckpointError, GPTNeoX, NeoXConfig, from_pretrained
from neox_mini.checkpoint import save_checkpoint
from neox_mini.hub import (
    KnownIssueWarning,
    ResolveError,
    cache_root,
    cached_revisions,
    hub_repo_id,
    resolve,
    resolve_model,
)
from neox_mini.synthetic import random_model

TINY = NeoXConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=128)
IDS = torch.tensor([[5, 17, 99, 3, 64]])
REPO = "EleutherAI/pythia-70m"  # a real name (so short names and the schedule apply), tiny weights


def tiny_checkpoint(folder: Path, seed: int, **save_kwargs) -> Path:
    save_checkpoint(random_model(TINY, seed=seed), folder, **save_kwargs)
    return folder


def logits(model_or_folder, **kwargs) -> torch.Tensor:
    model = model_or_folder if isinstance(model_or_folder, GPTNeoX) else from_pretrained(model_or_folder, **kwargs)
    with torch.no_grad():
        return model(IDS)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three checkpoints with different weights: main (seed 0), step1000 (seed 1), step2000 (seed 2)."""
    base = tmp_path_factory.mktemp("sources")
    return {rev: tiny_checkpoint(base / rev, seed) for seed, rev in enumerate(["main", "step1000", "step2000"])}


@pytest.fixture
def cache(tmp_path, sources, monkeypatch):
    """A hand-built cache holding REPO at main (= step143000), step1000 and step2000."""
    root = tmp_path / "hub"
    shas = {}
    for rev, refs in [("main", ["main", "step143000"]), ("step1000", ["step1000"]), ("step2000", ["step2000"])]:
        shas[rev] = add_to_cache(root, REPO, folder_files(sources[rev]), refs)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # Should anything try the network it finds a closed port on loopback, never the real Hub.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return root, shas


def test_the_fixture_cache_has_the_hub_layout(cache):
    root, shas = cache
    repo = root / "models--EleutherAI--pythia-70m"
    assert sorted(p.name for p in repo.iterdir()) == ["blobs", "refs", "snapshots"]
    assert (repo / "refs" / "step1000").read_text() == shas["step1000"]
    link = repo / "snapshots" / shas["step1000"] / "model.safetensors"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert os.readlink(link).startswith("../../blobs/")


def test_name_and_revision_load_the_right_weights(cache, sources):
    root, shas = cache
    a = from_pretrained(REPO, revision="step1000")
    b = from_pretrained(REPO, revision="step2000")
    assert not torch.equal(logits(a), logits(b))
    for model, rev in [(a, "step1000"), (b, "step2000")]:
        snapshot = root / "models--EleutherAI--pythia-70m" / "snapshots" / shas[rev]
        assert torch.equal(logits(model), logits(snapshot))  # = loading the snapshot folder directly
        assert torch.equal(logits(model), logits(sources[rev]))  # = the weights that were put there
        p = model.provenance
        assert (p["repo_id"], p["revision"], p["commit_sha"], p["source"]) == (REPO, rev, shas[rev], "cache")
        assert p["step"] == int(rev[4:]) and p["tokens"] == int(rev[4:]) * 2_097_152
        assert p["path"] == str(snapshot)
        assert p["files"] == {str(snapshot / "model.safetensors"): (sources[rev] / "model.safetensors").stat().st_size}
        assert p["dtype"] == "float32" and p["known_issues"] == []


def test_main_is_the_default_and_short_names_work(cache, sources):
    root, shas = cache
    for name in ["EleutherAI/pythia-70m", "pythia-70m", "70m"]:
        model = from_pretrained(name)
        assert torch.equal(logits(model), logits(sources["main"]))
        assert (model.provenance["revision"], model.provenance["commit_sha"]) == ("main", shas["main"])
        assert model.provenance["refs"] == ["main", "step143000"] and model.provenance["step"] == 143000


@pytest.mark.parametrize(
    "name, repo_id",
    [
        ("pythia-160m", "EleutherAI/pythia-160m"),
        ("160m", "EleutherAI/pythia-160m"),
        ("pythia-1.4b-deduped", "EleutherAI/pythia-1.4b-deduped"),
        ("1.4B-Deduped", "EleutherAI/pythia-1.4b-deduped"),
        ("pythia-410m-v0", "EleutherAI/pythia-410m-v0"),
        ("EleutherAI/pythia-12b", "EleutherAI/pythia-12b"),
        ("someone/my-model", "someone/my-model"),
        ("model-folder", None),
        ("./pythia-160m", None),
        ("/abs/path", None),
        ("a/b/c", None),
        ("org/na--me", None),
    ],
)
def test_hub_repo_id(name, repo_id):
    assert hub_repo_id(name) == repo_id


def test_an_unknown_or_renamed_pythia_name_is_refused():
    with pytest.raises(ResolveError, match=r"'pythia-999m' is not a Pythia model.*14m, 31m, 70m"):
        hub_repo_id("pythia-999m")
    with pytest.raises(ResolveError, match=r"pre-2023 name of pythia-1.4b: use pythia-1.4b"):
        hub_repo_id("pythia-1.3b")


def test_a_commit_sha_works(cache, sources):
    root, shas = cache
    model = from_pretrained(REPO, revision=shas["step2000"])
    assert torch.equal(logits(model), logits(sources["step2000"]))
    p = model.provenance
    assert (p["revision"], p["commit_sha"], p["refs"], p["step"]) == (
        shas["step2000"],
        shas["step2000"],
        ["step2000"],
        2000,
    )
    # A snapshot no ref points at is reachable by its sha only.
    lone = add_to_cache(root, REPO, folder_files(sources["step1000"]) | {"extra.txt": b"x"})
    assert resolve_model(REPO, lone) == root / "models--EleutherAI--pythia-70m" / "snapshots" / lone


def test_offline_mode_loads_from_the_cache_and_lists_it_when_missing(cache, sources, monkeypatch):
    root, shas = cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(logits(REPO, revision="step2000"), logits(sources["step2000"]))
    with pytest.raises(ResolveError) as info:
        from_pretrained(REPO, revision="step3000")
    message = str(info.value)
    assert "EleutherAI/pythia-70m at revision 'step3000' is not in the cache" in message
    assert "HF_HUB_OFFLINE=1" in message
    for ref, rev in [("step1000", "step1000"), ("step2000", "step2000"), ("main", "main"), ("step143000", "main")]:
        assert f"{ref} = {shas[rev][:12]}" in message
    with pytest.raises(ResolveError, match=r"nothing of EleutherAI/pythia-160m-deduped is cached"):
        resolve("pythia-160m-deduped")


def test_an_unknown_revision_is_refused_with_the_nearest_ones_before_any_lookup(cache):
    root, _ = cache
    before = tree_state(root)
    with pytest.raises(
        ResolveError,
        match=r"step 1,001 is not a published checkpoint of EleutherAI/pythia-70m; "
        r"nearest: step1000, step2000, step512",
    ):
        from_pretrained(REPO, revision="step1001")
    with pytest.raises(ResolveError, match=r"'step01000' is not a checkpoint name.*nearest: step1000"):
        from_pretrained("pythia-70m", revision="step01000")
    for bad in ["../../../etc", "/abs", "refs//x", "a\\b"]:  # a revision never names a path outside refs/
        with pytest.raises(ResolveError, match=r"is not a revision name"):
            resolve(REPO, bad)
    assert tree_state(root) == before


def test_a_known_issue_revision_warns(cache, sources):
    root, _ = cache
    step1 = add_to_cache(root, REPO, folder_files(sources["main"]) | {"note": b"step1"}, ["step1"])
    with pytest.warns(
        KnownIssueWarning,
        match=r"EleutherAI/pythia-70m at step1 is on the known-issues list "
        r"\(early-steps-identical\).*github\.com/EleutherAI/pythia/issues/83",
    ):
        model = from_pretrained(REPO, revision="step1")
    assert model.provenance["known_issues"] == ["early-steps-identical"]
    # The same commit asked for by sha: the cached ref that points at it still triggers the warning.
    with pytest.warns(KnownIssueWarning, match=r"at step1 is on the known-issues list"):
        from_pretrained(REPO, revision=step1)
    # A revision with no known issue loads silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_pretrained(REPO, revision="step1000")


def test_known_issues_are_per_repo(tmp_path, sources, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    files = folder_files(sources["main"])
    add_to_cache(tmp_path, "EleutherAI/pythia-12b", files, ["step50000"])
    add_to_cache(tmp_path, "EleutherAI/pythia-12b-deduped", files, ["step50000"])
    with pytest.warns(KnownIssueWarning, match=r"pythia-12b-first-shard-is-final"):
        resolve("pythia-12b", "step50000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve("pythia-12b-deduped", "step50000").provenance["known_issues"] == []


def test_a_snapshot_missing_its_weights_is_reported(cache, sources, monkeypatch):
    root, shas = cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    only_config = add_to_cache(
        root,
        REPO,
        {"config.json": (sources["main"] / "config.json").read_bytes(), "tokenizer.json": b"{}"},
        ["step4000"],
    )
    with pytest.raises(ResolveError) as info:
        from_pretrained(REPO, revision="step4000")
    message = str(info.value)
    assert "snapshot of EleutherAI/pythia-70m at step4000" in message and only_config in message
    assert "no weights in" in message and "HF_HUB_OFFLINE=1" in message
    # A snapshot whose blob was deleted (a dangling symlink) is missing its weights too.
    snapshot = root / "models--EleutherAI--pythia-70m" / "snapshots" / shas["step2000"]
    os.unlink(os.path.realpath(snapshot / "model.safetensors"))
    with pytest.raises(ResolveError, match=r"step2000 .* cannot be loaded: no weights in"):
        from_pretrained(REPO, revision="step2000")
    states = {r.ref: r.problem for r in cached_revisions(REPO)}
    assert states["step1000"] is None and "no weights" in states["step2000"] and "no weights" in states["step4000"]


def test_a_local_folder_is_used_as_is(cache, sources, tmp_path):
    assert resolve_model(sources["step1000"]) == sources["step1000"]
    model = from_pretrained(str(sources["step1000"]))
    assert model.provenance["source"] == "local" and "repo_id" not in model.provenance
    with pytest.raises(ResolveError, match=r"revision='step1000' applies to Hub names only"):
        from_pretrained(sources["step1000"], revision="step1000")
    with pytest.raises(CheckpointError, match=r"model folder .*nope does not exist"):
        from_pretrained(tmp_path / "nope")


def test_a_snapshot_folder_loaded_directly_knows_its_repo_and_commit(cache):
    root, shas = cache
    snapshot = root / "models--EleutherAI--pythia-70m" / "snapshots" / shas["step1000"]
    p = from_pretrained(snapshot).provenance
    assert (p["source"], p["repo_id"], p["commit_sha"], p["refs"], p["step"]) == (
        "local",
        REPO,
        shas["step1000"],
        ["step1000"],
        1000,
    )


def test_cache_root_follows_the_huggingface_order(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_root() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert cache_root() == tmp_path / "hubcache"


def test_cli_revisions_cached(cache, capsys):
    from neox_mini.cli import main  # in-process: test_revisions.py runs the console script itself

    root, shas = cache
    assert main(["revisions", "--cached", "pythia-70m"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split()[0] for line in lines] == ["step1000", "step2000", "step143000", "main"]
    assert all("complete" in line for line in lines)
    assert shas["step1000"][:12] in lines[0] and "2,097,152,000 tokens" in lines[0]
    assert "4 revision(s) of EleutherAI/pythia-70m" in out.err


# ----------------------------------------------------------------------------- downloads, over HTTP


class Worker:
    """`python tests/fake_hub.py` in a subprocess, with HF_ENDPOINT set before huggingface_hub is
    imported (it reads HF_ENDPOINT once, at import time)."""

    def __init__(self, endpoint: str, home: Path):
        env = dict(
            os.environ,
            HF_ENDPOINT=endpoint,
            HF_HOME=str(home),
            # huggingface_hub otherwise fetches its "agent harness" registry (telemetry) from the
            # endpoint once a day; that request has nothing to do with the model files.
            HF_HUB_DISABLE_TELEMETRY="1",
            TQDM_POSITION="-1",
        )  # progress bars on even though stderr is not a terminal
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
            env.pop(var, None)
        self.stderr_path = home / "worker-stderr.txt"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "fake_hub.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "w"),
            text=True,
        )

    def load(self, name, revision=None, *, cache: Path, offline=False) -> dict:
        cmd = {
            "name": name,
            "revision": revision,
            "ids": IDS[0].tolist(),
            "env": {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1" if offline else "0"},
        }
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise RuntimeError(f"the worker died: {self.stderr_path.read_text()[-2000:]}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory, sources):
    """The fake Hub with REPO at main (single safetensors, plus a .bin copy and other files that must
    not be fetched), step1000 (sharded safetensors + sharded .bin), step2000 (.bin only), and a
    worker process pointed at it."""
    base = tmp_path_factory.mktemp("served")
    hub = FakeHub()
    main = folder_files(sources["main"]) | {
        "pytorch_model.bin": (tiny_checkpoint(base / "main-bin", 0, weights="bin") / "pytorch_model.bin").read_bytes(),
        "tokenizer.json": b'{"fake": "tokenizer"}',
        "README.md": b"# pythia-70m\n",
        ".gitattributes": b"*.bin lfs\n",
        "special_tokens_map.json": b"{}",
    }
    sharded = folder_files(tiny_checkpoint(base / "st-shards", 1, max_shard_bytes=40_000))
    sharded |= folder_files(tiny_checkpoint(base / "bin-shards", 1, weights="bin", max_shard_bytes=40_000))
    assert sum(n.endswith(".safetensors") for n in sharded) >= 3 and "pytorch_model.bin.index.json" in sharded
    bin_only = folder_files(tiny_checkpoint(base / "bin", 2, weights="bin"))
    shas = {
        "main": hub.add(REPO, ["main", "step143000"], main),
        "step1000": hub.add(REPO, ["step1000"], sharded),
        "step2000": hub.add(REPO, ["step2000"], bin_only),
        "weightless": hub.add("someone/weightless", ["main"], {"config.json": b"{}", "README.md": b"hi"}),
    }
    url = hub.start()
    worker = Worker(url, base)
    yield hub, worker, shas, base
    worker.close()
    hub.stop()


def resolve_path(sha):
    return f"/EleutherAI/pythia-70m/resolve/{sha}"


def test_download_fetches_only_the_needed_files_and_a_second_run_nothing(served, sources, tmp_path):
    hub, worker, shas, base = served
    cache, sha = tmp_path / "hub", shas["main"]
    hub.take_log()
    first = worker.load("pythia-70m", cache=cache)
    assert first["ok"], first
    digest = __import__("hashlib").sha256((sources["main"] / "model.safetensors").read_bytes()).hexdigest()
    assert hub.take_log() == [
        ("GET", "/api/models/EleutherAI/pythia-70m/revision/main"),  # the file list at that revision
        ("HEAD", f"{resolve_path(sha)}/config.json"),
        ("GET", f"{resolve_path(sha)}/config.json"),
        ("HEAD", f"{resolve_path(sha)}/tokenizer.json"),
        ("GET", f"{resolve_path(sha)}/tokenizer.json"),
        ("HEAD", f"{resolve_path(sha)}/model.safetensors"),  # 302 to the "CDN"
        ("CDN GET", f"/lfs/{digest}"),
    ]  # not pytorch_model.bin, README.md, special_tokens_map.json, .gitattributes
    p = first["provenance"]
    assert (p["repo_id"], p["revision"], p["commit_sha"], p["source"]) == (REPO, "main", sha, "download")
    assert first["logits_sum"] == pytest.approx(float(logits(sources["main"]).double().sum()), rel=1e-6)

    repo = cache / "models--EleutherAI--pythia-70m"
    snapshot = repo / "snapshots" / sha
    assert sorted(os.listdir(snapshot)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert all(not os.path.isabs(os.readlink(snapshot / n)) for n in os.listdir(snapshot))
    assert (repo / "refs" / "main").read_text() == sha
    assert torch.equal(logits(snapshot), logits(sources["main"]))
    bars = worker.stderr_path.read_text()  # huggingface_hub's progress bars, labelled with the URL's end
    assert f"{digest[-30:]}: 100%" in bars and "config.json:" in bars

    state = tree_state(cache)
    second = worker.load("EleutherAI/pythia-70m", "main", cache=cache)
    assert second["ok"] and second["provenance"]["source"] == "cache"
    assert second["logits_sum"] == first["logits_sum"]
    assert hub.take_log() == []  # nothing downloaded, not even a HEAD
    offline = worker.load("pythia-70m", cache=cache, offline=True)
    assert offline["ok"] and hub.take_log() == []
    assert tree_state(cache) == state


def test_download_sharded_safetensors_and_bin_only_revisions(served, tmp_path):
    hub, worker, shas, base = served
    cache = tmp_path / "hub"
    hub.take_log()
    sharded = worker.load("pythia-70m", "step1000", cache=cache)
    assert sharded["ok"], sharded
    fetched = sorted(
        path.rsplit("/", 1)[1] for method, path in hub.take_log() if method == "GET" and "/resolve/" in path
    )
    assert fetched == ["config.json", "model.safetensors.index.json"]  # shards come from the CDN
    snapshot = cache / "models--EleutherAI--pythia-70m" / "snapshots" / shas["step1000"]
    names = sorted(os.listdir(snapshot))
    assert names[0] == "config.json" and names[-1] == "model.safetensors.index.json"
    assert all(n.startswith("model-000") and n.endswith(".safetensors") for n in names[1:-1])  # no .bin shard
    assert torch.equal(logits(snapshot), logits(base / "st-shards"))

    bin_only = worker.load("pythia-70m", "step2000", cache=cache)
    assert bin_only["ok"], bin_only
    assert [p for m, p in hub.take_log() if m == "CDN GET"] != []
    snapshot = cache / "models--EleutherAI--pythia-70m" / "snapshots" / shas["step2000"]
    assert sorted(os.listdir(snapshot)) == ["config.json", "pytorch_model.bin"]
    assert torch.equal(logits(snapshot), logits(base / "bin"))
    assert bin_only["provenance"]["step"] == 2000


def test_a_download_failing_midway_leaves_the_cache_as_it_was(served, sources, tmp_path):
    hub, worker, shas, base = served
    cache = tmp_path / "hub"
    add_to_cache(cache, REPO, folder_files(sources["main"]), ["main"])  # something already cached
    before = tree_state(cache)
    shards = sorted(n for n in hub.repos[REPO]["commits"][shas["step1000"]] if n.endswith(".safetensors"))
    import hashlib

    last = hashlib.sha256(hub.repos[REPO]["commits"][shas["step1000"]][shards[-1]]).hexdigest()
    hub.truncate[last] = 1000  # the last shard's transfer stops after 1,000 bytes
    try:
        hub.take_log()
        failed = worker.load("pythia-70m", "step1000", cache=cache)
        log = hub.take_log()
    finally:
        hub.truncate.clear()
    assert not failed["ok"]
    assert failed["error"].startswith("ResolveError: downloading EleutherAI/pythia-70m@step1000")
    assert "Consistency check failed" in failed["error"] and "was left as it was" in failed["error"]
    assert len([m for m, _ in log if m == "CDN GET"]) == len(shards)  # the other shards did arrive
    assert tree_state(cache) == before  # ... and were removed again, with every lock, ref and link

    retry = worker.load("pythia-70m", "step1000", cache=cache)
    assert retry["ok"] and retry["provenance"]["source"] == "download"


def test_download_errors(served, tmp_path):
    hub, worker, shas, base = served
    cache = tmp_path / "hub"
    cached = add_to_cache(cache, REPO, folder_files(base / "bin"), ["step2000"])
    before = tree_state(cache)
    hub.take_log()

    unknown_repo = worker.load("EleutherAI/pythia-nope", cache=cache)
    assert unknown_repo["error"].startswith(
        "ResolveError: EleutherAI/pythia-nope is not a model repo on http://127.0.0.1"
    )
    unknown_rev = worker.load("someone/weightless", "v2", cache=cache)
    assert "someone/weightless has no revision 'v2'" in unknown_rev["error"]
    no_weights = worker.load("someone/weightless", cache=cache)
    assert "has no weights: expected one of model.safetensors.index.json" in no_weights["error"]
    assert "the revision has README.md, config.json" in no_weights["error"]
    assert [m for m, _ in hub.take_log()] == ["GET", "GET", "GET"]  # three file listings, no file requests

    offline = worker.load("pythia-70m", "step3000", cache=cache, offline=True)
    assert "HF_HUB_OFFLINE=1 forbids downloading" in offline["error"]
    assert f"cached revisions of EleutherAI/pythia-70m in {cache}: step2000 = {cached[:12]}." in offline["error"]
    assert hub.take_log() == []
    assert tree_state(cache) == before


def test_a_snapshot_missing_its_weights_is_completed_online(served, sources, tmp_path):
    hub, worker, shas, base = served
    cache, sha = tmp_path / "hub", shas["main"]
    assert worker.load("pythia-70m", cache=cache)["ok"]
    snapshot = cache / "models--EleutherAI--pythia-70m" / "snapshots" / sha
    os.unlink(os.path.realpath(snapshot / "model.safetensors"))  # e.g. deleted to free space
    os.unlink(snapshot / "model.safetensors")
    hub.take_log()
    again = worker.load("pythia-70m", cache=cache)
    assert again["ok"] and again["provenance"]["source"] == "download"
    log = hub.take_log()
    assert [(m, p.rsplit("/", 1)[1]) for m, p in log[:2]] == [("GET", "main"), ("HEAD", "model.safetensors")]
    assert len(log) == 3 and log[2][0] == "CDN GET"  # config.json and tokenizer.json were not fetched again
    assert torch.equal(logits(snapshot), logits(sources["main"]))
