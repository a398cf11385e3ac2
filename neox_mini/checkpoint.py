"""Reading checkpoint folders: config.json plus safetensors (single or sharded) or .bin weights.

The model is built on the meta device (no memory, no random init), the weights are memory-mapped
(safetensors pages are read from disk only when first touched), and `load_state_dict(assign=True)`
makes the mapped tensors the model's parameters: no second copy, unless a dtype cast is asked for.

Every problem is reported with the file and tensor it concerns; nothing here writes to disk.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import DTYPE_NAMES, NeoXConfig

# Buffers that old GPT-NeoX checkpoints carry but that are not weights: the causal-mask triangle
# (`attention.bias`), its fill value (`attention.masked_bias`), and an fp16 copy of the rotary
# frequencies (`attention.rotary_emb.inv_freq`). All are recomputed by the model; the stored
# inv_freq in particular must NOT be used (fp16 rounding shifts every rotary angle).
LEGACY_BUFFER_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq")

# Weight files in order of preference: safetensors before pickles, sharded index before single file.
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file and tensor(s) concerned."""


def to_torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16")
    return getattr(torch, name)


def find_weight_files(folder: Path) -> tuple[str, list[Path]]:
    """('safetensors' | 'bin', the files to read) for a checkpoint folder."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        kind = "safetensors" if ".safetensors" in name else "bin"
        if not name.endswith(".index.json"):
            return kind, [path]
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid shard index (needs a 'weight_map'): {e}") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{path} lists shard(s) that are not in {folder}: {', '.join(missing)}")
        return kind, [folder / s for s in shards]
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}; "
                          f"found {present or 'nothing'}")


def iter_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    try:
        # safe_open memory-maps the file; get_tensor returns a tensor backed by that mapping.
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path} ({size:,} bytes) is not a valid safetensors file: {e} "
                              f"(truncated or corrupt download?)") from None


def iter_bin(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    # weights_only=True: the unpickler accepts tensors and plain containers only, so a pickle that
    # would run code (or holds anything but weights) is refused instead of executed.
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files written before torch 1.6's zip format cannot be memory-mapped: read them whole.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} is not a plain-weights pickle (refused by torch.load("
                              f"weights_only=True)): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {e} "
                              f"(truncated or corrupt download?)") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of named tensors (got {type(state).__name__})")
    yield from state.items()


def read_state_dict(folder: Path, expected: dict[str, torch.Size]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read every tensor of the checkpoint, check names and shapes against `expected`, and return
    (state dict, files read). All problems are collected and raised together in one error."""
    kind, files = find_weight_files(folder)
    reader = iter_safetensors if kind == "safetensors" else iter_bin
    state: dict[str, torch.Tensor] = {}
    unexpected, misshaped = [], []
    for path in files:
        for name, tensor in reader(path):
            if name.endswith(LEGACY_BUFFER_SUFFIXES):
                continue
            if name not in expected:
                unexpected.append(f"{name} (in {path.name})")
            elif tensor.shape != expected[name]:
                misshaped.append(f"{name}: checkpoint has {list(tensor.shape)}, "
                                 f"the config needs {list(expected[name])} (in {path.name})")
            else:
                state[name] = tensor
    missing = sorted(set(expected) - set(state) - {m.split(":")[0] for m in misshaped})
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {', '.join(unexpected)}")
    if misshaped:
        problems.append("wrong shape: " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(f"checkpoint {folder} does not match its config.json: " + " | ".join(problems))
    return state, [str(p) for p in files]


def load_model(path: str | Path, *, dtype: torch.dtype | str | None = None,
               device: torch.device | str = "cpu", gelu: str | None = None,
               config: NeoXConfig | None = None, provenance: dict | None = None):
    """Build a GPTNeoX from a checkpoint folder. dtype defaults to the dtype the weights are stored in."""
    from .model import GPTNeoX, RotaryEmbedding

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist" if not folder.exists()
                              else f"{folder} is not a folder (expected config.json + weights)")
    config = config or NeoXConfig.from_hf(folder)
    if gelu is not None:
        config = config.replace(gelu=gelu)
    dtype = to_torch_dtype(dtype)

    with torch.device("meta"):
        model = GPTNeoX(config)  # shapes only: no memory, no random initialisation
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state, files = read_state_dict(folder, expected)

    stored_dtype = state["gpt_neox.embed_in.weight"].dtype
    target = dtype or stored_dtype
    # .to() is a no-op (same storage, still memory-mapped) when dtype and device already match.
    state = {name: t.to(device=device, dtype=target) for name, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary tables are derived from the config, not loaded: build them for real now (they
    # were created on the meta device along with everything else).
    model.rotary = RotaryEmbedding(config, device=device)
    model.eval()
    model.provenance = {
        "path": str(folder.resolve()),
        "files": {f: os.path.getsize(f) for f in files},
        "stored_dtype": str(stored_dtype).removeprefix("torch."),
        "dtype": str(target).removeprefix("torch."),
        **(provenance or {}),
    }
    return model


# ----------------------------------------------------------------------------- writing checkpoints


def init_random_weights(model, seed: int = 0, std: float = 0.02) -> None:
    """Fill a model with random weights in place: normal(0, std) matrices and, so that every
    parameter matters in a parity test, layer norms and biases perturbed away from 1 and 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith(".bias"):
                value = 0.02 * noise
            else:
                value = std * noise
            p.copy_(value.to(p.dtype))


def random_model(config: NeoXConfig, seed: int = 0, dtype: torch.dtype | str | None = None):
    """A GPTNeoX with seeded random weights (init_random_weights), in fp32 or the given dtype.

    Built on the meta device and materialised with to_empty, which skips nn's default random init
    (seconds for the larger sizes) but also empties the derived rotary tables: those are rebuilt."""
    from .model import GPTNeoX, RotaryEmbedding

    with torch.device("meta"):
        model = GPTNeoX(config)
    model = model.to_empty(device="cpu")  # real, uninitialised memory for every parameter and buffer
    model.rotary = RotaryEmbedding(config, device="cpu")
    init_random_weights(model, seed=seed)
    return model.to(to_torch_dtype(dtype) or torch.float32).eval()


def save_checkpoint(model, folder: str | Path, *, weights: str = "safetensors",
                    max_shard_bytes: int | None = None) -> list[Path]:
    """Write model in the Hugging Face folder layout: config.json (original Pythia style) plus
    model.safetensors / pytorch_model.bin, or shards + index when max_shard_bytes is given.
    Returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights must be 'safetensors' or 'bin', not {weights!r}")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = model.config.replace(dtype=str(state["embed_out.weight"].dtype).removeprefix("torch."))
    (folder / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n", encoding="utf-8")

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
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (folder / f"{base}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return written + [folder / f"{base}.index.json"]
