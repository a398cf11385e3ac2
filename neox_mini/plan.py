"""How much memory a model needs per device, from its config alone (no download): `neox-mini plan`.

    plan(NeoXConfig.from_pythia("12b"), "bf16", devices=2, context=2048, batch=8)

Weights are exact: the sum of every tensor's bytes, split the way tensor parallelism over N
devices splits them (NeoX lays the fused query_key_value out per head, so a block of its rows is
a set of whole heads):

    query_key_value  [3C, C] + bias [3C]   column-parallel: rows / N      (heads / N)
    attention.dense  [C, C]                row-parallel: columns / N;     bias replicated
    dense_h_to_4h    [F, C] + bias [F]     column-parallel: rows / N
    dense_4h_to_h    [C, F]                row-parallel: columns / N;     bias replicated
    embed_out        [V, C]                column-parallel over the vocabulary: rows / N
    embed_in         [V, C]                row-parallel over the vocabulary: rows / N
    layer norms                            replicated

The rest are stated estimates:

    KV cache     2 (k and v) x layers x batch x context x C / N x bytes per value
    activations  batch x context x (3C/N + F/N + 2C) x bytes   (one layer's qkv, MLP hidden,
                 residual and norm output, live at once in a prefill)
    workspace    batch x heads/N x context^2 x 4 bytes (one fp32 attention-score matrix, the
                 largest temporary of a prefill without a fused kernel) + the logits of the
                 last position, batch x V x 4 bytes
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .checkpoint import to_torch_dtype
from .config import NeoXConfig
from .errors import DoesNotFitError
from .model import GPTNeoX

# How tensor parallelism splits each parameter: the dim divided by N (None: replicated).
SPLIT_DIM = {
    "attention.query_key_value.weight": 0,
    "attention.query_key_value.bias": 0,
    "attention.dense.weight": 1,
    "mlp.dense_h_to_4h.weight": 0,
    "mlp.dense_h_to_4h.bias": 0,
    "mlp.dense_4h_to_h.weight": 1,
    "embed_out.weight": 0,
    "embed_in.weight": 0,
}


@dataclass
class Plan:
    config: NeoXConfig
    dtype: torch.dtype
    devices: int
    context: int
    batch: int
    weights: int  # bytes per device
    kv_cache: int
    activations: int
    workspace: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.workspace


def split_dim(name: str) -> int | None:
    for suffix, dim in SPLIT_DIM.items():
        if name.endswith(suffix):
            return dim
    return None


def plan(
    config: NeoXConfig,
    dtype: str | torch.dtype = "bf16",
    *,
    devices: int = 1,
    context: int | None = None,
    batch: int = 1,
) -> Plan:
    """Bytes per device for the weights (exact), the KV cache, activations and workspace (estimates)."""
    dtype = to_torch_dtype(dtype)
    if config.num_heads % devices:
        valid = [n for n in range(1, config.num_heads + 1) if config.num_heads % n == 0]
        raise ValueError(f"{devices} devices do not divide the {config.num_heads} attention heads: use one of {valid}")
    context = context or config.max_position_embeddings
    size = torch.empty(0, dtype=dtype).element_size()
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GPTNeoX(config).state_dict().items()}
    weights = 0
    for name, shape in shapes.items():
        numel = shape.numel()
        dim = split_dim(name)
        if dim is not None:
            if shape[dim] % devices:
                raise ValueError(f"{name} {list(shape)} cannot be split over {devices} devices")
            numel //= devices
        weights += numel * size
    C, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_layers
    kv_cache = 2 * L * batch * context * (C // devices) * size
    activations = batch * context * (3 * C // devices + F // devices + 2 * C) * size
    workspace = batch * (config.num_heads // devices) * context * context * 4 + batch * V * 4
    return Plan(config, dtype, devices, context, batch, weights, kv_cache, activations, workspace)


def available_memory(device: str = "cpu") -> int:
    """Bytes a device has: physical memory for the CPU, free memory for a CUDA device."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(config: NeoXConfig, dtype: torch.dtype, devices: int, device: str, ranks_here: int = 1) -> None:
    """Refuse, with plan's numbers, weights that would not fit, before anything is read: each
    device's share of the weights x the ranks sharing this device's memory (on the CPU, every rank
    on this machine; on a GPU, one) against the memory it has. Also refuses a `devices` that does
    not divide the heads (plan's ValueError names the valid ones)."""
    p = plan(config, dtype, devices=devices, context=1, batch=1)
    need, have = p.weights * ranks_here, available_memory(device)
    if need > have:
        gib = 2**30
        raise DoesNotFitError(
            f"the weights need {p.weights / gib:.2f} GiB per rank x {ranks_here} rank(s) on this {device} = "
            f"{need / gib:.2f} GiB, but it has {have / gib:.2f} GiB: use more devices (neox-mini plan "
            f"--devices N) or a smaller dtype"
        )
