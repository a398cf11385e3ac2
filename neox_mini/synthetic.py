"""Random-weight models and checkpoints with real shapes, for tests, scripts and benchmarks on
machines without the real Pythia weights. Seeded, so the same call gives the same bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .checkpoint import save_checkpoint, to_torch_dtype
from .config import NeoXConfig
from .model import GPTNeoX, RotaryEmbedding


def init_random_weights(model: GPTNeoX, seed: int = 0, std: float = 0.02) -> None:
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


def random_model(
    config: NeoXConfig, seed: int = 0, dtype: torch.dtype | str | None = None, std: float = 0.02
) -> GPTNeoX:
    """A GPTNeoX with seeded random weights (init_random_weights), in fp32 or the given dtype.

    Built on the meta device and materialised with to_empty, which skips nn's default random init
    (seconds for the larger sizes) but also empties the derived rotary tables: those are rebuilt."""
    with torch.device("meta"):
        model = GPTNeoX(config)
    model = model.to_empty(device="cpu")  # real, uninitialised memory for every parameter and buffer
    model.rotary = RotaryEmbedding(config, device="cpu")
    init_random_weights(model, seed=seed, std=std)
    return model.to(to_torch_dtype(dtype) or torch.float32).eval()


def write_random_checkpoint(
    out: str | Path,
    config: NeoXConfig,
    *,
    dtype: str = "fp32",
    seed: int = 0,
    weights: str = "safetensors",
    max_shard_bytes: int | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """random_model(config, seed, dtype) saved in the Hugging Face folder layout, plus a copy of
    `tokenizer` (a tokenizer.json) when given. Returns the folder."""
    if tokenizer is not None and not Path(tokenizer).is_file():  # checked first: a bad input writes nothing
        raise FileNotFoundError(f"tokenizer file {tokenizer} does not exist")
    out = Path(out)
    save_checkpoint(random_model(config, seed=seed, dtype=dtype), out, weights=weights, max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    return out
