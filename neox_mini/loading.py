"""from_pretrained: a checkpoint folder or a Hub name -> a ready GPTNeoX.

    from_pretrained("/data/pythia-160m")                     a folder (config.json + weights)
    from_pretrained("pythia-160m", revision="step3000")      a Hub name, through the HF cache

The model is built on the meta device (no memory, no random init), the weights are memory-mapped
(safetensors pages are read from disk only when first touched), and `load_state_dict(assign=True)`
makes the mapped tensors the model's parameters: no second copy, unless a dtype cast is asked for.

This is application code around the textbook: model.py knows nothing of files or the Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import inside_folder, read_state_dict, to_torch_dtype
from .config import NeoXConfig
from .errors import CheckpointError, ConfigError
from .hub import resolve
from .model import GPTNeoX, RotaryEmbedding
from .plan import check_fits


def from_pretrained(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    gelu: str | None = None,
) -> GPTNeoX:
    """Load a checkpoint folder (config.json + safetensors or .bin weights), or a Hub name such as
    "EleutherAI/pythia-160m" / "pythia-160m" at a revision ("step3000", a commit sha; default
    "main") through the Hugging Face cache (see hub.py).

    dtype   fp32 / bf16 / fp16 (or a torch.dtype); default: the dtype the weights are stored in.
            "auto": bf16 on a CPU that computes it natively (AMX or AVX-512 BF16), else fp32; on a
            GPU, as stored (see auto_dtype).
    gelu    "erf" (transformers' exact GELU, the default for Pythia) or "tanh" (NeoX training's).
    The result's `provenance` says what was loaded from where (path, files, dtypes, Hub repo,
    revision, commit, step, tokens seen, known issues)."""
    resolved = resolve(name_or_path, revision)
    return load_folder(resolved.path, dtype=dtype, device=device, gelu=gelu, provenance=resolved.provenance)


def load_folder(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    gelu: str | None = None,
    provenance: dict | None = None,
) -> GPTNeoX:
    """Build a GPTNeoX from a checkpoint folder. dtype defaults to the dtype the weights are stored in."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"model folder {folder} does not exist"
            if not folder.exists()
            else f"{folder} is not a folder (expected config.json + weights)"
        )
    config = read_config(folder)
    if gelu is not None:
        config = config.replace(gelu=gelu)

    with torch.device("meta"):
        model = GPTNeoX(config)  # shapes only: no memory, no random initialisation
        quantization = read_quantization(folder)
        if quantization:
            model.quantize(quantization)  # int8 layers, still without values
    assign_weights(model, folder, dtype=dtype, device=device, provenance=provenance)
    # The rotary tables are derived from the config, not loaded: build them on the target device
    # (they were created on the CPU along with the meta-device model).
    model.rotary = RotaryEmbedding(config, device=device)
    return model.eval()


def read_config(folder: Path) -> NeoXConfig:
    """The folder's config.json (refused when it links outside the folder)."""
    inside_folder(folder / "config.json", folder)
    return NeoXConfig.from_hf(folder)


def target_dtype(dtype: torch.dtype | str | None, device: torch.device | str, stored: torch.dtype) -> torch.dtype:
    """The dtype a model is loaded in: `dtype` ("auto": auto_dtype), else the one stored."""
    return (auto_dtype(device) if dtype == "auto" else to_torch_dtype(dtype)) or stored


def weights_provenance(folder: Path, files: list[str], stored: torch.dtype, target: torch.dtype) -> dict:
    """What every loaded model's `provenance` starts with: the folder, its weight files, the dtypes."""
    return {
        "path": str(folder.resolve()),
        "files": {f: os.path.getsize(f) for f in files},
        "stored_dtype": str(stored).removeprefix("torch."),
        "dtype": str(target).removeprefix("torch."),
    }


def auto_dtype(device: torch.device | str = "cpu") -> torch.dtype | None:
    """The dtype that runs fastest here without a precision surprise on other machines: bf16 on a
    CPU with native bf16 arithmetic (AMX tiles or AVX-512 BF16: oneDNN's bf16 kernels; prefill
    measured 2-4x fp32 in docs/performance.md), fp32 on other CPUs (where bf16 is emulated and
    several times slower), None (= as stored) on a GPU."""
    if torch.device(device).type != "cpu":
        return None
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def read_quantization(folder: Path) -> str | None:
    """ "int8" for a checkpoint written by `neox-mini quantize`, None for a float one; any other
    `quantization_config` (GPTQ, bitsandbytes, ...) is refused, naming it."""
    import json

    from .quantize import QUANTIZATION_CONFIG

    with open(folder / "config.json", encoding="utf-8") as f:
        found = json.load(f).get("quantization_config")
    if found is None:
        return None
    if isinstance(found, dict) and found.get("quant_method") == QUANTIZATION_CONFIG["quant_method"]:
        if found.get("bits") == 8:
            return "int8"
    raise ConfigError(
        f"{folder / 'config.json'}: unsupported quantization_config {json.dumps(found)[:200]}: neox_mini reads "
        f"float checkpoints and the int8 ones `neox-mini quantize` writes"
    )


def assign_weights(
    model: GPTNeoX,
    folder: Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    provenance: dict | None = None,
) -> GPTNeoX:
    """Make a checkpoint folder's tensors the model's parameters: read and checked against the
    model's names and shapes, cast to dtype (default: as stored), assigned without a copy when
    nothing is cast (memory-mapped), and recorded in model.provenance. The sweeps call this once
    per revision on the same model."""
    tensors = model.state_dict()
    expected = {name: t.shape for name, t in tensors.items()}
    int8 = frozenset(name for name, t in tensors.items() if t.dtype == torch.int8)
    state, files = read_state_dict(folder, expected, int8)
    stored_dtype = state["gpt_neox.embed_in.weight"].dtype
    target = target_dtype(dtype, device, stored_dtype)
    if target != stored_dtype or torch.device(device).type != "cpu":
        # The weights will be copied (cast, or moved to a GPU): refuse now if they cannot fit, rather
        # than be killed halfway. Uncast on the CPU they stay memory-mapped file pages.
        check_fits(model.config, target, 1, str(torch.device(device)))
    # .to() is a no-op (same storage, still memory-mapped) when dtype and device already match.
    # int8 weights stay int8 (their scales take the model's dtype), copied out of the file mapping
    # when not 64-byte aligned, which PyTorch's int8 kernel needs (matvec.int8_pack).
    state = {name: t.to(device=device, dtype=target if name not in int8 else t.dtype) for name, t in state.items()}
    for name in int8:
        if state[name].data_ptr() % 64:
            state[name] = state[name].clone()
    model.load_state_dict(state, strict=True, assign=True)
    model.provenance = {
        **weights_provenance(folder, files, stored_dtype, target),
        **({"quantization": model.quantization} if model.quantization else {}),
        **(provenance or {}),
    }
    return model
