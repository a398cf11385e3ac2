"""Sweeps over training checkpoints: one model object, each revision's weights swapped in place.

    revisions = parse_revisions("step1000:143000:1000")      # or names, "all", "every=10000"
    logprobs = token_logprobs("pythia-160m", revisions, sequences)          # [R, N, T - 1]
    memo = memorization("pythia-160m", revisions, sequences)                # exact / matched, [R, N]
    diffs = weight_diffs("pythia-160m", revisions)                          # per pair and tensor

`model` is a Hub name (each revision resolved through the Hugging Face cache, downloaded when
missing and allowed) or a folder whose subfolders are revisions (`runs/step1000/`, ...).

How it stays cheap: the model is built once; for each revision the checkpoint's tensors are read
(memory-mapped: no copy) and assigned to the same module tree with `load_state_dict(assign=True)`;
while one revision computes, the kernel is asked to read the next one's files ahead
(posix_fadvise WILLNEED). Every revision must have the first one's architecture.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed, fast, pythia
from .checkpoint import find_weight_files, to_torch_dtype
from .errors import ResolveError
from .generation import default_vocab_limit
from .hub import is_offline, resolve
from .loading import assign_weights, load_folder, read_config
from .model import GPTNeoX

# ----------------------------------------------------------------------------- which revisions


def parse_revisions(spec: str | Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """Revision names from a spec: a list of names, or one string of comma-separated parts, each
    a name ("step3000", "main"), a range "stepA:stepB:stepC" (every published step from A to B,
    B included, by C), "all" (every revision: the 154 steps, or the folders of a local sweep), or
    "every=N" (the published steps that are multiples of N, step0 included). Order is kept,
    duplicates dropped."""
    parts = list(spec) if not isinstance(spec, str) else [p.strip() for p in spec.split(",") if p.strip()]
    everything = list(available) if available is not None else list(pythia.REVISIONS)
    names: list[str] = []
    for part in parts:
        if part == "all":
            names += everything
        elif m := re.fullmatch(r"every=([1-9][0-9]*)", part):
            every = int(m.group(1))
            names += [r for r in everything if (s := pythia.revision_step(r)) is not None and s % every == 0]
        elif m := re.fullmatch(r"step(\d+):step(\d+)(?::(\d+))?", part):
            start, stop, by = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1000)
            if by < 1 or stop < start:
                raise ResolveError(f"revision range {part!r}: needs stepA <= stepB and a step > 0")
            for step in range(start, stop + 1, by):
                names.append(pythia.check_revision(f"step{step}"))  # a RevisionError names the nearest ones
        else:
            names.append(part)
    if not names:
        raise ResolveError(f"no revisions in {spec!r}")
    return list(dict.fromkeys(names))


@dataclass
class Revision:
    name: str
    folder: Path
    provenance: dict = field(default_factory=dict)  # commit sha, step, tokens seen, known issues


def locate(
    model: str | Path, revisions: Sequence[str], *, download: bool | None = None, skipped: list[str] | None = None
) -> list[Revision]:
    """Each revision's folder: a subfolder of a local sweep folder, or the Hub cache (downloaded
    one at a time, in order, when missing and not offline; offline, missing revisions are left
    out and named in `skipped`)."""
    base = Path(model).expanduser()
    out = []
    if base.is_dir() and not (base / "config.json").is_file():
        for name in revisions:
            folder = base / name
            if not (folder / "config.json").is_file():
                raise ResolveError(f"{base} has no revision folder {name!r} (with a config.json)")
            step = pythia.revision_step(name)
            out.append(
                Revision(
                    name,
                    folder,
                    {
                        "revision": name,
                        "path": str(folder),
                        "step": step,
                        "tokens": None if step is None else pythia.step_to_tokens(step),
                    },
                )
            )
        return out
    offline = is_offline() if download is None else not download
    for name in revisions:
        try:
            resolved = resolve(str(model), name)
        except ResolveError as e:
            if offline and skipped is not None and "is not in the cache" in str(e):
                skipped.append(name)
                continue
            raise
        out.append(Revision(name, resolved.path, dict(resolved.provenance)))
    return out


def locate_all(model: str | Path, revisions, download: bool | None) -> tuple[list[Revision], list[str]]:
    """parse_revisions + locate: (the revisions found, the names skipped because not cached offline)."""
    skipped: list[str] = []
    located = locate(model, parse_revisions(revisions, revision_folders(model)), download=download, skipped=skipped)
    return located, skipped


# ----------------------------------------------------------------------------- one model, many weights


def read_ahead(folder: Path) -> None:
    """Ask the kernel to start reading a revision's weight files into the page cache."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        _, files, _ = find_weight_files(folder)
    except Exception:
        return  # the swap itself reports what is wrong with the folder
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


Progress = Callable[[int, int, str], None]


class Swapper:
    """One GPTNeoX whose weights are replaced in place by each revision's (memory-mapped)."""

    def __init__(self, first: Revision, dtype: torch.dtype | str | None = None, device: str = "cpu"):
        self.dtype = to_torch_dtype(dtype)
        self.device = device
        self.model = load_folder(first.folder, dtype=self.dtype, device=device, provenance=first.provenance)
        self.config = self.model.config

    def load(self, revision: Revision) -> GPTNeoX:
        config = read_config(revision.folder)
        if config.replace(gelu=self.config.gelu) != self.config:
            raise ResolveError(
                f"{revision.name} ({revision.folder}) has another architecture than the first "
                f"revision of the sweep: {config} vs {self.config}"
            )
        return assign_weights(
            self.model, revision.folder, dtype=self.dtype, device=self.device, provenance=revision.provenance
        )


def each_revision(
    revisions: Sequence[Revision], dtype=None, device: str = "cpu", progress: Progress | None = None, mesh=None
) -> Iterator[tuple[Revision, GPTNeoX]]:
    """(revision, the one model holding its weights), in order; the next revision's files are read
    ahead while the caller computes. progress(i, n, name) is called before each. With a `mesh`
    (distributed.init_mesh), each revision is loaded split over its ranks instead (tensor
    parallelism: a model too big for one device; every rank reads only its slice)."""
    if not revisions:
        return
    if mesh is not None:
        for i, revision in enumerate(revisions):
            if progress:
                progress(i, len(revisions), revision.name)
            yield (
                revision,
                distributed.load_folder(revision.folder, mesh=mesh, dtype=dtype, provenance=revision.provenance),
            )
        return
    swapper = Swapper(revisions[0], dtype, device)
    for i, revision in enumerate(revisions):
        if progress:
            progress(i, len(revisions), revision.name)
        model_i = swapper.model if i == 0 else swapper.load(revision)
        if i + 1 < len(revisions):
            read_ahead(revisions[i + 1].folder)
        yield revision, model_i


# ----------------------------------------------------------------------------- the sweeps


def as_batch(sequences) -> torch.Tensor:
    """Equal-length id sequences -> [N, T] int64 (ragged input is refused: pad or cut it first)."""
    if isinstance(sequences, torch.Tensor):
        ids = sequences.long()
    else:
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise ValueError(
                f"sequences must all have the same length (got lengths {sorted(lengths)[:5]}): "
                f"cut them to a common length first"
            )
        ids = torch.tensor([list(s) for s in sequences], dtype=torch.long)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"sequences must be [N, T] with T >= 2 tokens, got shape {list(ids.shape)}")
    return ids


@torch.inference_mode()
def batched_logits(model: GPTNeoX, ids: torch.Tensor, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    device = model.embed_out.weight.device
    for start in range(0, ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        yield rows, fast.forward(model, ids[rows].to(device)).float()


@dataclass
class SweepResult:
    revisions: list[Revision]
    skipped: list[str]
    values: dict[str, torch.Tensor]  # [R, ...] per quantity
    names: list[str] | None = None  # weight_diffs: the tensor of each column

    def provenance(self) -> list[dict]:
        return [{"revision": r.name, **{k: v for k, v in r.provenance.items() if k != "files"}} for r in self.revisions]


def token_logprobs(
    model: str | Path,
    revisions,
    sequences,
    *,
    dtype=None,
    batch_size: int = 8,
    device: str = "cpu",
    download: bool | None = None,
    progress: Progress | None = None,
    mesh=None,
) -> SweepResult:
    """log p(token t+1 | tokens <= t) of every sequence at every revision: values["logprobs"] is
    float32 [R, N, T - 1]. Sequences must have equal length (no padding is involved)."""
    ids = as_batch(sequences)
    located, skipped = locate_all(model, revisions, download)
    out = torch.empty(len(located), ids.shape[0], ids.shape[1] - 1)
    for r, (_, m) in enumerate(each_revision(located, dtype, device, progress, mesh)):
        for rows, logits in batched_logits(m, ids, batch_size):
            logp = F.log_softmax(logits[:, :-1], dim=-1)  # [b, T - 1, V]
            out[r, rows] = logp.gather(-1, ids[rows, 1:, None].to(logp.device))[..., 0].cpu()
    return SweepResult(located, skipped, {"logprobs": out})


def memorization(
    model: str | Path,
    revisions,
    sequences,
    *,
    prefix: int = 32,
    continuation: int = 32,
    dtype=None,
    batch_size: int = 8,
    device: str = "cpu",
    download: bool | None = None,
    progress: Progress | None = None,
    mesh=None,
) -> SweepResult:
    """Whether greedy decoding of `continuation` tokens after the first `prefix` reproduces the
    sequence (the Pythia memorization definition, 32 + 32 by default), from one teacher-forced
    forward: the argmax at each continuation position is compared with the next true token.
    values: "exact" bool [R, N], "matched" int [R, N] (leading continuation tokens reproduced,
    which is what greedy generation matches before its first miss), "correct" [R, N, continuation]."""
    ids = as_batch(sequences)
    if ids.shape[1] < prefix + continuation or prefix < 1 or continuation < 1:
        raise ValueError(
            f"sequences of {ids.shape[1]} tokens are shorter than prefix {prefix} + continuation {continuation}"
        )
    ids = ids[:, : prefix + continuation]
    located, skipped = locate_all(model, revisions, download)
    correct = torch.zeros(len(located), ids.shape[0], continuation, dtype=torch.bool)
    for r, (_, m) in enumerate(each_revision(located, dtype, device, progress, mesh)):
        for rows, logits in batched_logits(m, ids, batch_size):
            # Only the ids a tokenizer can produce are candidates, as in generate().
            limit = default_vocab_limit(m)
            guesses = logits[:, prefix - 1 : -1, :limit].argmax(-1).cpu()  # [b, continuation]
            correct[r, rows] = guesses == ids[rows, prefix:]
    matched = correct.long().cumprod(-1).sum(-1)  # [R, N]: leading matches
    return SweepResult(located, skipped, {"exact": correct.all(-1), "matched": matched, "correct": correct})


def weight_diffs(
    model: str | Path, revisions, *, download: bool | None = None, progress: Progress | None = None
) -> SweepResult:
    """For each consecutive pair of revisions and each tensor: relative L2 change
    |b - a| / |a|, cosine similarity, and whether the two are identical. Identical weight files
    are found by file hash (for a Hub cache, the blob's name, no read) and then need no tensor
    read at all; otherwise each tensor is hashed and compared. Tensors are read one at a time.
    values: "relative_change", "cosine" float64 [R - 1, tensors], "identical" bool [same]; the
    tensor names are in `names`."""
    located, skipped = locate_all(model, revisions, download)
    if len(located) < 2:
        raise ValueError("weight_diffs needs at least two revisions")
    names = None
    rows = []
    for i, (a, b) in enumerate(zip(located, located[1:], strict=False)):
        if progress:
            progress(i, len(located) - 1, f"{a.name} -> {b.name}")
        ta, tb = TensorReader(a.folder), TensorReader(b.folder)
        names = names or sorted(ta.names())
        same_files = ta.file_digests() == tb.file_digests()
        row = []
        for name in names:
            if same_files:
                row.append((0.0, 1.0, True))
                continue
            x, y = ta.get(name).double(), tb.get(name).double()
            identical = ta.digest(name) == tb.digest(name)
            change = 0.0 if identical else float((y - x).norm() / x.norm().clamp(min=1e-300))
            cosine = 1.0 if identical else float(F.cosine_similarity(x.flatten(), y.flatten(), dim=0))
            row.append((change, cosine, identical))
        rows.append(row)
    table = torch.tensor([[r[0] for r in row] for row in rows], dtype=torch.float64)
    cosines = torch.tensor([[r[1] for r in row] for row in rows], dtype=torch.float64)
    identical = torch.tensor([[r[2] for r in row] for row in rows], dtype=torch.bool)
    values = {"relative_change": table, "cosine": cosines, "identical": identical}
    return SweepResult(located, skipped, values, names)


class TensorReader:
    """Single tensors of a checkpoint folder by name, without loading the others (safetensors'
    safe_open reads one tensor's bytes; a .bin is memory-mapped)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.kind, self.files, weight_map = find_weight_files(folder)
        self._where: dict[str, Path] = {}
        self._bin: dict[str, torch.Tensor] | None = None
        if self.kind == "safetensors":
            from safetensors import safe_open

            for f in self.files:
                with safe_open(str(f), framework="pt") as st:
                    self._where.update({k: f for k in st.keys()})

    def names(self) -> list[str]:
        if self.kind == "safetensors":
            return list(self._where)
        return list(self._load_bin())

    def _load_bin(self) -> dict[str, torch.Tensor]:
        if self._bin is None:
            from .checkpoint import iter_bin

            self._bin = {k: v for f in self.files for k, v in iter_bin(f)}
        return self._bin

    def get(self, name: str) -> torch.Tensor:
        if self.kind != "safetensors":
            return self._load_bin()[name]
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as st:
            return st.get_tensor(name)

    def digest(self, name: str) -> str:
        t = self.get(name).contiguous()
        return hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest() + str(t.dtype) + str(list(t.shape))

    def file_digests(self) -> list[str]:
        """sha256 of each weight file; a Hub cache blob is named by it (no read)."""
        out = []
        for f in self.files:
            real = f.resolve()
            if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
                out.append(real.name)
            else:
                h = hashlib.sha256()
                with open(real, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 24), b""):
                        h.update(chunk)
                out.append(h.hexdigest())
        return out


def revision_folders(model: str | Path) -> list[str] | None:
    """For a local sweep folder: its revision subfolders, by step; None for a Hub name."""
    base = Path(model).expanduser()
    if base.is_dir() and not (base / "config.json").is_file():
        subs = [p.name for p in base.iterdir() if (p / "config.json").is_file()]
        return sorted(subs, key=lambda n: (pythia.revision_step(n) is None, pythia.revision_step(n) or 0, n))
    return None
