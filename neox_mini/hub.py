"""Where a model comes from: a local folder, or a Hub id + revision in the Hugging Face cache.

    resolve_model("/data/pythia-160m")                         -> the folder itself
    resolve_model("EleutherAI/pythia-160m", "step3000")  -> <cache>/models--EleutherAI--pythia-160m/snapshots/<sha>
    resolve_model("pythia-160m-deduped")                       -> the same for EleutherAI/pythia-160m-deduped, main
    resolve(...)                                               -> (folder, provenance)

The cache is the one every Hugging Face tool shares, so models downloaded by transformers are found
here and vice versa. Its root is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
(huggingface_hub's own order, legacy HUGGINGFACE_HUB_CACHE and XDG_CACHE_HOME included). Layout:

    models--EleutherAI--pythia-160m/
        blobs/<etag>                      file contents, named by their git / LFS hash
        refs/step3000                     text file: the commit sha the branch pointed to
        snapshots/<sha>/model.safetensors relative symlink -> ../../blobs/<etag>

Resolution is cache-first: a revision whose snapshot already holds config.json and a complete set
of weights is used without touching the network (Pythia's branches do not move once published; pass
a commit sha to pin one explicitly). Otherwise, unless HF_HUB_OFFLINE=1, the repo's file list at
that revision is fetched and only the files a GPTNeoX needs are downloaded through huggingface_hub
(imported lazily, only here): config.json, tokenizer.json, and the safetensors weights if the
revision has them, else the .bin ones (single file or index + shards). huggingface_hub writes each
blob atomically; if anything fails midway, every path the attempt created is removed again, so the
cache is left exactly as it was.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import pythia
from .checkpoint import WEIGHT_FILES, find_weight_files, shard_names
from .errors import CheckpointError, KnownIssueWarning, NeoxMiniError, ResolveError, UnknownModelError

DEFAULT_ENDPOINT = "https://huggingface.co"

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# A Hub repo id: "org/name", letters, digits, "-", "_", "." (no "--" or "..": the cache uses "--").
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass
class Resolved:
    path: Path  # the folder to load from
    provenance: dict  # repo_id, revision, commit_sha, source, ... (see resolve)


# ----------------------------------------------------------------------------- entry points


def resolve_model(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The local folder holding `name_or_path` at `revision` (see the module docstring)."""
    return resolve(name_or_path, revision).path


def resolve(name_or_path: str | Path, revision: str | None = None, *, warn: bool = True) -> Resolved:
    """Resolve a folder or Hub name to a local folder plus its provenance:

    repo_id, revision (as asked; "main" when not given), commit_sha (the commit actually loaded),
    source ("local", "cache" or "download"), cache (its root), refs (the cached branch names that
    point at that commit), step and tokens (for checkpoint names), known_issues (ids).
    A revision on the known-issues list emits a KnownIssueWarning (when warn=True)."""
    path = Path(name_or_path).expanduser()
    repo_id = None if path.exists() else hub_repo_id(str(name_or_path))
    if repo_id is None:
        # A local folder is used as is; one that does not exist is reported by the loader
        # ("model folder ... does not exist"), exactly as for any other path.
        if revision is not None and path.exists():
            raise ResolveError(
                f"revision={revision!r} applies to Hub names only, but {path} is a local folder (it is loaded as it is)"
            )
        return Resolved(path, _local_provenance(path, warn))

    revision = revision or "main"
    # A revision names a file under refs/: refuse anything that could point outside it.
    if (
        not isinstance(revision, str)
        or revision.startswith("/")
        or "\\" in revision
        or any(part in ("", ".", "..") for part in revision.split("/"))
    ):
        raise ResolveError(f"{revision!r} is not a revision name (a branch such as step3000, a tag, or a commit sha)")
    pythia.check_revision(revision, repo_id)  # a RevisionError (a ResolveError) for a bad step name
    root = cache_root()
    commit = _cached_commit(root, repo_id, revision)
    folder = _snapshot(root, repo_id, commit) if commit else None
    if folder is not None and snapshot_problem(folder) is None:
        source = "cache"
    elif is_offline():
        raise ResolveError(_not_cached_message(root, repo_id, revision, commit, name_or_path))
    else:
        commit = download(repo_id, revision, root=root)
        folder, source = _snapshot(root, repo_id, commit), "download"

    provenance = {"repo_id": repo_id, "revision": revision, "commit_sha": commit, "source": source, "cache": str(root)}
    provenance.update(_checkpoint_facts(root, repo_id, revision, commit, warn))
    return Resolved(folder, provenance)


def _local_provenance(path: Path, warn: bool) -> dict:
    """A folder given by path. When it is a snapshot inside a Hub cache, say which repo and commit
    it is (and check the known issues of the branches that point at it)."""
    provenance: dict = {"source": "local"}
    real = path.resolve() if path.is_dir() else None
    if (
        real is not None
        and real.parent.name == "snapshots"
        and _COMMIT_SHA.fullmatch(real.name)
        and real.parent.parent.name.startswith("models--")
    ):
        repo_dir = real.parent.parent  # models--ORG--NAME
        repo_id = "/".join(repo_dir.name.split("--")[1:])
        provenance.update(repo_id=repo_id, commit_sha=real.name)
        provenance.update(_checkpoint_facts(repo_dir.parent, repo_id, None, real.name, warn))
    return provenance


def _checkpoint_facts(root: Path, repo_id: str, revision: str | None, commit: str, warn: bool) -> dict:
    """step / tokens of the revision, the other cached branch names that point at the same commit,
    and the known issues of any of them (warned about once each)."""
    names = [revision] if revision and revision != commit else []
    names += [ref for ref, sha in _refs(root, repo_id).items() if sha == commit and ref not in names]
    steps = [s for s in (pythia.revision_step(n) for n in names) if s is not None]
    facts: dict = {"refs": names}
    if steps:
        facts["step"] = steps[0]
        facts["tokens"] = pythia.step_to_tokens(steps[0])
    issues = pythia.known_issues_for(repo_id, names)
    facts["known_issues"] = [i["id"] for i in issues]
    if warn:
        for issue in issues:
            hit = ", ".join(n for n in names if n in issue["revisions"])
            warnings.warn(
                f"{repo_id} at {hit} is on the known-issues list ({issue['id']}): {issue['summary']} "
                f"Sources: {', '.join(issue['sources'])}",
                KnownIssueWarning,
                stacklevel=4,
            )
    return facts


# ----------------------------------------------------------------------------- names


def hub_repo_id(name: str) -> str | None:
    """The Hub repo id a name stands for, or None when it is not a Hub name (then it is a path).

    Pythia names are read by pythia.parse_name, the parser NeoXConfig.from_pythia uses too:
    "pythia-160m", "160m", "EleutherAI/pythia-160m-deduped", "pythia-160m-v0", "pythia-70m-seed3"
    -> "EleutherAI/pythia-...". A short name that only looks like Pythia ("pythia-999m", the
    pre-2023 "pythia-1.3b") is an UnknownModelError. Any other "org/name" is itself: EleutherAI
    has other repos than the suite (fine-tunes, ablations), and the Hub says whether one exists."""
    name = name.strip()
    is_repo_id = _REPO_ID.fullmatch(name) is not None and "--" not in name and ".." not in name
    if pythia.looks_like_pythia(name):
        try:
            return pythia.parse_name(name).repo_id
        except UnknownModelError:
            if not is_repo_id:
                raise
    return name if is_repo_id else None


# ----------------------------------------------------------------------------- the cache


def cache_root() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    env = os.environ
    root = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not root:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        root = os.path.join(home, "hub")
    return Path(os.path.expandvars(root)).expanduser()


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/ON/YES/TRUE, read at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_cache_dir(repo_id: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / ("models--" + repo_id.replace("/", "--"))


def _refs(root: Path, repo_id: str) -> dict[str, str]:
    """Branch/tag name -> commit sha, from refs/ (names may contain "/", e.g. refs/pr/1)."""
    refs_dir = repo_cache_dir(repo_id, root) / "refs"
    if not refs_dir.is_dir():
        return {}
    out = {}
    for f in sorted(refs_dir.rglob("*")):
        if f.is_file() and not f.name.endswith(".tmp"):
            out[f.relative_to(refs_dir).as_posix()] = f.read_text(encoding="utf-8").strip()
    return out


def _cached_commit(root: Path, repo_id: str, revision: str) -> str | None:
    if _COMMIT_SHA.fullmatch(revision):
        return revision
    return _refs(root, repo_id).get(revision)


def _snapshot(root: Path, repo_id: str, commit: str) -> Path | None:
    folder = repo_cache_dir(repo_id, root) / "snapshots" / commit
    return folder if folder.is_dir() else None


def snapshot_problem(folder: Path) -> str | None:
    """Why a snapshot folder cannot be loaded as it is (None when it can): config.json and a
    complete set of weights are needed. A symlink whose blob is gone counts as missing."""
    if not (folder / "config.json").is_file():
        return "it has no config.json"
    try:
        find_weight_files(folder)
    except CheckpointError as e:
        return str(e)
    return None


@dataclass
class CachedRevision:
    ref: str | None  # branch name, None for a snapshot no ref points at
    commit: str
    problem: str | None  # None: loadable; else why not (e.g. weights missing)


def cached_revisions(repo_id: str, root: Path | None = None) -> list[CachedRevision]:
    """Every revision of repo_id in the cache: the refs, then snapshots no ref points at."""
    root = root or cache_root()
    refs = _refs(root, repo_id)
    snapshots_dir = repo_cache_dir(repo_id, root) / "snapshots"
    snapshots = sorted(p.name for p in snapshots_dir.iterdir() if p.is_dir()) if snapshots_dir.is_dir() else []
    out = []
    for ref, sha in sorted(refs.items(), key=lambda kv: _revision_order(kv[0])):
        folder = _snapshot(root, repo_id, sha)
        out.append(CachedRevision(ref, sha, snapshot_problem(folder) if folder else "its snapshot folder is missing"))
    named = set(refs.values())
    out += [CachedRevision(None, sha, snapshot_problem(snapshots_dir / sha)) for sha in snapshots if sha not in named]
    return out


def _revision_order(name: str) -> tuple:
    step = pythia.revision_step(name)
    return (0, step if name != "main" else pythia.FINAL_STEP + 0.5, name) if step is not None else (1, 0, name)


def _describe_cached(root: Path, repo_id: str) -> str:
    revs = cached_revisions(repo_id, root)
    if not revs:
        return f"nothing of {repo_id} is cached in {root}"
    parts = [f"{r.ref or '(no ref)'} = {r.commit[:12]}" + ("" if r.problem is None else " [incomplete]") for r in revs]
    return f"cached revisions of {repo_id} in {root}: " + ", ".join(parts)


def _not_cached_message(root: Path, repo_id: str, revision: str, commit: str | None, asked) -> str:
    folder = _snapshot(root, repo_id, commit) if commit else None
    if folder is not None:
        what = f"the cached snapshot of {repo_id} at {revision} ({folder}) cannot be loaded: {snapshot_problem(folder)}"
    else:
        what = f"{repo_id} at revision {revision!r} is not in the cache"
    local = f" (and there is no local folder {str(asked)!r})" if "/" in str(asked) else ""
    return (
        f"{what}{local}, and HF_HUB_OFFLINE=1 forbids downloading it. {_describe_cached(root, repo_id)}. "
        f"Unset HF_HUB_OFFLINE to download, or pick a cached revision."
    )


# ----------------------------------------------------------------------------- downloading


def download(repo_id: str, revision: str, *, root: Path | None = None, endpoint: str | None = None) -> str:
    """Fetch the files a GPTNeoX needs of repo_id at revision into the cache; return the commit sha.

    Requests: one file listing (GET /api/models/{repo}/revision/{rev}), then per needed file the
    usual HEAD + GET of huggingface_hub's hf_hub_download. Files already in the snapshot are not
    fetched again. On any failure the cache is restored to what it was and a ResolveError says why."""
    root = root or cache_root()
    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    import huggingface_hub as hf  # here only: `revisions`, `configs` and loading a folder never need it
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{endpoint}/{repo_id}"
    try:
        info = hf.HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except GatedRepoError:
        raise ResolveError(
            f"{repo_id} is gated on {endpoint}: accept its terms on the website and log in "
            f"(`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ResolveError(
            f"{repo_id} is not a model repo on {endpoint} (or it is private and no valid token "
            f"was given); {_describe_cached(root, repo_id)}"
        ) from None
    except RevisionNotFoundError:
        raise ResolveError(
            f"{repo_id} has no revision {revision!r} on {endpoint}; {_describe_cached(root, repo_id)}"
        ) from None
    except Exception as e:  # network down, DNS, proxy, 5xx, not a Hub at that address ...
        raise ResolveError(
            f"could not reach the Hub at {endpoint} to list {repo_id}@{revision}: "
            f"{_one_line(e)}. {_describe_cached(root, repo_id)}; set HF_HUB_OFFLINE=1 "
            f"to use only the cache"
        ) from None
    commit = info.sha
    files = {s.rfilename for s in (info.siblings or [])}
    if not commit or not _COMMIT_SHA.fullmatch(commit):
        raise ResolveError(f"{where}: the Hub answered without a commit sha for revision {revision!r}")
    weights = next((w for w in WEIGHT_FILES if w in files), None)
    if weights is None:
        raise ResolveError(
            f"{repo_id} at {revision} (commit {commit[:12]}) has no weights: expected one of "
            f"{', '.join(WEIGHT_FILES)}; the revision has {', '.join(sorted(files)) or 'no files'}"
        )
    if "config.json" not in files:
        raise ResolveError(f"{repo_id} at {revision} (commit {commit[:12]}) has no config.json")
    wanted = ["config.json"] + (["tokenizer.json"] if "tokenizer.json" in files else []) + [weights]

    before = _cache_state(root, repo_id)
    try:
        # revision=commit (not the branch name): huggingface_hub then writes no ref of its own, and
        # a file already in this snapshot is returned without any request.
        for name in wanted:
            path = hf.hf_hub_download(repo_id, name, revision=commit, cache_dir=str(root), endpoint=endpoint)
        if weights.endswith(".index.json"):
            shards = shard_names(Path(path))
            missing = [s for s in shards if s not in files]
            if missing:
                raise ResolveError(
                    f"{repo_id} at {revision}: {weights} lists shard(s) the revision does not "
                    f"have: {', '.join(missing)}"
                )
            for shard in shards:
                hf.hf_hub_download(repo_id, shard, revision=commit, cache_dir=str(root), endpoint=endpoint)
        if revision != commit:
            _write_ref(root, repo_id, revision, commit)
    except BaseException as e:  # KeyboardInterrupt included: never leave half a download behind
        _restore_cache_state(root, repo_id, before)
        if isinstance(e, NeoxMiniError):  # already says what is wrong (e.g. a bad shard index)
            raise
        if not isinstance(e, Exception):
            raise
        if isinstance(e, RemoteEntryNotFoundError):
            why = f"a file listed by the Hub was not found: {_one_line(e)}"
        else:
            why = _one_line(e)
        raise ResolveError(
            f"downloading {repo_id}@{revision} (commit {commit[:12]}) from {endpoint} failed: "
            f"{why}. The cache at {root} was left as it was; run again to retry"
        ) from None
    return commit


def _write_ref(root: Path, repo_id: str, revision: str, commit: str) -> None:
    ref = repo_cache_dir(repo_id, root) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit, encoding="utf-8")  # no newline, as huggingface_hub writes it
    os.replace(tmp, ref)  # atomic: a reader never sees half a sha


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# The paths a download may create: the repo folder, its lock folder, and the cache's own marker
# files. Recorded before a download so that a failed one can be undone path by path.
# Not covered: with hf_xet (files the real Hub stores with Xet), huggingface_hub may also publish
# complete, hash-verified blobs into its shared store <cache>/blobs/ and the Xet chunk cache
# (HF_HOME/xet). Those are huggingface_hub's own content-addressed stores with their own reference
# bookkeeping; they are left alone (the tests' fake Hub serves plain HTTP, so this path is untested).
def _cache_areas(root: Path, repo_id: str) -> list[Path]:
    return [repo_cache_dir(repo_id, root), root / ".locks" / repo_cache_dir(repo_id, root).name]


def _cache_state(root: Path, repo_id: str) -> set[str]:
    paths = {str(p) for p in [root, *root.parents] if os.path.lexists(p)}
    if root.is_dir():
        paths |= {str(root / n) for n in os.listdir(root)}
        if (root / ".locks").is_dir():
            paths |= {str(root / ".locks" / n) for n in os.listdir(root / ".locks")}
    for area in _cache_areas(root, repo_id):
        for dirpath, dirnames, filenames in os.walk(area):
            paths.add(dirpath)
            paths |= {os.path.join(dirpath, n) for n in dirnames + filenames}
    return paths


def _restore_cache_state(root: Path, repo_id: str, before: set[str]) -> None:
    """Remove every path created since `before` was taken, deepest first. Nothing that existed
    before is touched: blobs are only ever added, and refs are written only after success."""
    created = sorted(_cache_state(root, repo_id) - before, key=lambda p: p.count(os.sep), reverse=True)
    for p in created:
        try:
            if os.path.islink(p) or not os.path.isdir(p):
                os.unlink(p)
            else:
                os.rmdir(p)
        except OSError:
            pass  # best effort: e.g. another process wrote into a folder we created
