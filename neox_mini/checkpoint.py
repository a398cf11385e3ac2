"""The Hugging Face checkpoint folder format: which weight files a folder has, reading and checking
their tensors, and writing a folder in the same layout.

    find_weight_files(folder)            -> ("safetensors" | "bin", files, shard index), the preferred set
    read_state_dict(folder, expected)    -> tensors checked against the names/shapes a model needs
    save_checkpoint(model, folder)       -> config.json + model.safetensors (or .bin, or shards)

safetensors files are memory-mapped: a tensor's pages are read from disk only when first touched.
.bin files go through torch.load(weights_only=True), which refuses a pickle that would run code.
Every problem is reported with the file and tensor it concerns; reading never writes to disk.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import DTYPE_NAMES, DuplicateKeyError, unique_keys
from .errors import CheckpointError

# Buffers that old GPT-NeoX checkpoints carry but that are not weights: the causal-mask triangle
# (`attention.bias`), its fill value (`attention.masked_bias`), and an fp16 copy of the rotary
# frequencies (`attention.rotary_emb.inv_freq`). All are recomputed by the model; the stored
# inv_freq in particular must NOT be used (fp16 rounding shifts every rotary angle).
LEGACY_BUFFER_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq")

# Weight files in order of preference: safetensors before pickles, sharded index before single file.
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def to_torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16")
    return getattr(torch, name)


def inside_folder(path: Path, folder: Path) -> Path:
    """path, if it (after following links) lies inside the model folder; else a CheckpointError.

    The one exception is the Hugging Face cache's own layout: a snapshot folder's files are links
    to ../../blobs/, inside the repo's cache folder (models--ORG--NAME), which is allowed."""
    root = folder.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        root = root.parent.parent
    real = path.resolve()
    if not real.is_relative_to(root):
        raise CheckpointError(f"{path} links to {real}, outside the model folder {folder}: it is not read")
    return path


def find_weight_files(folder: Path) -> tuple[str, list[Path], dict[str, str] | None]:
    """('safetensors' | 'bin', the files to read, the shard index's weight_map or None) for a
    checkpoint folder. Files are read only from the folder itself (read_weight_map, inside_folder)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        kind = "safetensors" if ".safetensors" in name else "bin"
        if not name.endswith(".index.json"):
            return kind, [inside_folder(path, folder)], None
        weight_map = read_weight_map(inside_folder(path, folder))
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{path} lists shard(s) that are not in {folder}: {', '.join(missing)}")
        return kind, [inside_folder(folder / s, folder) for s in shards], weight_map
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise CheckpointError(
        f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}; found {present or 'nothing'}"
    )


def read_weight_map(index: Path) -> dict[str, str]:
    """The weight_map of a `*.index.json`: tensor name -> shard file name.

    A shard must be a plain file name beside the index: a path ("../other/x.safetensors",
    "/etc/x", "sub/x") would make the loader read, or probe for, files outside the model folder,
    so it is refused, naming the tensor."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)["weight_map"]
    except DuplicateKeyError as e:  # a tensor listed twice: which shard would hold it?
        raise CheckpointError(f"{index}: {e}") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index (needs a 'weight_map'): {one_line(e)}") from None
    if not isinstance(weight_map, dict):
        kind = type(weight_map).__name__
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names, got a {kind}")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index}: weight_map[{tensor!r}] must be a file name, got {shard!r}")
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or Path(shard).is_absolute():
            raise CheckpointError(
                f"{index}: weight_map[{tensor!r}] = {shard!r} is not a file name beside the index "
                f"(shards are read from the model folder only)"
            )
    return weight_map


def shard_names(index: Path) -> list[str]:
    """The shard file names a `*.index.json` lists, sorted, each once (see read_weight_map)."""
    return sorted(set(read_weight_map(index).values()))


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# What a Git LFS pointer file starts with: a failed or LFS-less download saves this ~130-byte text
# under the weight file's name instead of the weights.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def refuse_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise CheckpointError(
            f"{path} is a Git LFS pointer ({path.stat().st_size:,} bytes), not the weights: the download saved "
            f"the pointer instead of the file's content (download it again, e.g. `git lfs pull` in a git clone)"
        )


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    refuse_lfs_pointer(path)
    size = path.stat().st_size
    try:
        # safe_open memory-maps the file; get_tensor returns a tensor backed by that mapping.
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not a valid safetensors file: {one_line(e)} (truncated or corrupt download?)"
        ) from None


def iter_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    # weights_only=True: the unpickler accepts tensors and plain containers only, so a pickle that
    # would run code (or holds anything but weights) is refused instead of executed.
    refuse_lfs_pointer(path)
    size = path.stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's note on pickle protocols: an error is one line
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # Files written before torch 1.6's zip format cannot be memory-mapped: read them whole.
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's own text goes on to suggest weights_only=False, which would run the code in the
            # file: pass on only what it found.
            found = re.search(r"WeightsUnpickler error:(.*?)(\n\n|$)", str(e), re.S)
            what = " ".join(found.group(1).split()) if found else "not a plain pickle of tensors"
            raise CheckpointError(
                f"{path} ({size:,} bytes) is not a plain-weights checkpoint: the safe loader "
                f"(torch.load(weights_only=True)) refused it ({what}); nothing in it was run"
            ) from None
        except Exception as e:  # zip, pickle and storage errors of every kind: a file that is not a checkpoint
            raise CheckpointError(
                f"{path} ({size:,} bytes) could not be read as a PyTorch checkpoint ({type(e).__name__}: "
                f"{one_line(e)}): truncated, corrupt, or not a checkpoint at all"
            ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} is not a state dict of named tensors (got {type(state).__name__})")
    yield from state.items()


# Weights must be floating point; an integer tensor under a weight's name is not a checkpoint of
# this model (and torch's own error for it is a 25-line note about gradients).
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def read_state_dict(
    folder: Path, expected: dict[str, torch.Size], int8: frozenset[str] = frozenset()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read every tensor of the checkpoint, check names, shapes and dtypes against `expected` (and
    the shard index, when there is one), and return (state dict, files read). The tensors named in
    `int8` must be int8 (a quantized checkpoint's weights, quantize.py), all others floating point.
    All problems are collected and raised together in one error; a tensor stored twice is one of
    them, never a silent "the last file wins"."""
    kind, files, weight_map = find_weight_files(folder)
    reader = iter_safetensors if kind == "safetensors" else iter_bin
    state: dict[str, torch.Tensor] = {}
    found_in: dict[str, str] = {}
    unexpected, misshaped, wrong_dtype, duplicated, misplaced = [], [], [], [], []
    for path in files:
        for name, tensor in reader(path):
            if name in found_in:
                duplicated.append(f"{name} (in {found_in[name]} and {path.name})")
                continue
            found_in[name] = path.name
            listed = weight_map.get(name) if weight_map is not None else path.name
            if listed != path.name:
                where = f"maps it to {listed}" if listed else "does not list it"
                misplaced.append(f"{name} is in {path.name} but the index {where}")
            if name.endswith(LEGACY_BUFFER_SUFFIXES):
                continue
            if name not in expected:
                unexpected.append(f"{name} (in {path.name})")
            elif tensor.shape != expected[name]:
                misshaped.append(
                    f"{name}: checkpoint has {list(tensor.shape)}, "
                    f"the config needs {list(expected[name])} (in {path.name})"
                )
            elif (tensor.dtype != torch.int8) if name in int8 else (tensor.dtype not in WEIGHT_DTYPES):
                want = "int8" if name in int8 else "floating point"
                got = str(tensor.dtype).removeprefix("torch.")
                wrong_dtype.append(f"{name} is {got}, not {want} (in {path.name})")
            else:
                state[name] = tensor
    missing = sorted(set(expected) - set(found_in))
    problems = []
    if duplicated:
        problems.append(f"tensor(s) stored twice: {', '.join(duplicated)}")
    if misplaced:
        problems.append("shard index disagrees with the files: " + "; ".join(misplaced))
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    if misshaped:
        problems.append("wrong shape: " + "; ".join(misshaped))
    if wrong_dtype:
        problems.append(
            "wrong dtype (weights are float32, float16 or bfloat16; int8 quantized): " + "; ".join(wrong_dtype)
        )
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not match its config.json: " + " | ".join(problems))
    return state, [str(p) for p in files]


def stored_dtypes(files: list[str | Path]) -> dict[str, int]:
    """Tensors per stored dtype ({"float16": 76, ...}), from the safetensors headers (no weight is
    read) or, for .bin files, from the pickles (memory-mapped)."""
    from collections import Counter

    from safetensors import safe_open

    counts: Counter = Counter()
    for f in map(Path, files):
        if f.suffix == ".safetensors":
            with safe_open(str(f), framework="pt", device="cpu") as st:
                counts.update(SAFETENSORS_DTYPES.get(d, d) for d in (st.get_slice(n).get_dtype() for n in st.keys()))
        else:
            counts.update(str(t.dtype).removeprefix("torch.") for _, t in iter_bin(f))
    return dict(counts)


SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I8": "int8",
}


# ----------------------------------------------------------------------------- writing checkpoints


def save_checkpoint(
    model, folder: str | Path, *, weights: str = "safetensors", max_shard_bytes: int | None = None
) -> list[Path]:
    """Write model in the Hugging Face folder layout: config.json (original Pythia style) plus
    model.safetensors / pytorch_model.bin, or shards + index when max_shard_bytes is given.
    Returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights must be 'safetensors' or 'bin', not {weights!r}")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    hf_config = model.config.to_hf(dtype=str(state["gpt_neox.embed_in.weight"].dtype).removeprefix("torch."))
    if getattr(model, "quantization", None):
        from .quantize import QUANTIZATION_CONFIG

        hf_config["quantization_config"] = QUANTIZATION_CONFIG
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")

    base = "model.safetensors" if weights == "safetensors" else "pytorch_model.bin"
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes

    def write(tensors: dict[str, torch.Tensor], path: Path) -> None:
        if weights == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(path), metadata={"format": "pt"})
        else:
            torch.save(tensors, path)

    written = [folder / "config.json"]
    if len(shards) == 1:
        write(shards[0], folder / base)
        return written + [folder / base]
    stem, ext = base.rsplit(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards):
        shard_name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        write(shard, folder / shard_name)
        written.append(folder / shard_name)
        weight_map.update({name: shard_name for name in shard})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
        "weight_map": weight_map,
    }
    (folder / f"{base}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written + [folder / f"{base}.index.json"]
