"""Comparing neox_mini's activations with a reference, and the tolerances that apply.

The error measure everywhere is the *relative max error*: max |ours - ref| / max |ref| over a whole
tensor (one number per layer), which is insensitive to the scale of each layer's activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# One tolerance per dtype of *our* model, always measured against an fp32 reference, with the reason.
TOLERANCES = {
    # Same arithmetic as transformers' eager fp32 path, only summed in a different order (e.g. the
    # parallel residual adds attn + mlp + x in another order): differences are a few float32 ulps
    # (~1e-7 per op) and stay below 1e-5 after accumulating over layers.
    "float32": 1e-5,
    # fp16 keeps 11 significant bits (unit roundoff 4.9e-4); every matmul, layer norm and residual add
    # rounds to that, so a 6-layer model drifts to ~1e-3 relative. Measured worst case on the test
    # models: see tests/test_parity.py (2x margin kept).
    "float16": 5e-3,
    # bf16 keeps 8 significant bits (unit roundoff 3.9e-3): ~8x fp16's error per operation.
    "bfloat16": 4e-2,
}


def relative_max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double(), ref.detach().double()
    scale = ref.abs().max().item()
    return (ours - ref).abs().max().item() / (scale if scale > 0 else 1.0)


@dataclass
class Difference:
    name: str  # the activation ("gpt_neox.layers.3", "logits", ...)
    rel_error: float  # max |ours - ref| / max |ref|
    abs_error: float  # max |ours - ref|
    where: tuple[int, ...]  # index of the largest absolute difference

    def __str__(self) -> str:
        return (f"{self.name}: relative max error {self.rel_error:.3e} "
                f"(max abs diff {self.abs_error:.3e} at index {list(self.where)})")


def difference(name: str, ours: torch.Tensor, ref: torch.Tensor) -> Difference:
    if ours.shape != ref.shape:
        raise ValueError(f"{name}: shape {list(ours.shape)} vs reference {list(ref.shape)}")
    diff = (ours.detach().double() - ref.detach().double()).abs()
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    return Difference(name, relative_max_error(ours, ref), diff.max().item(), where)


def first_divergence(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                     tolerance: float) -> tuple[Difference | None, list[Difference]]:
    """Compare activations in order; return (the first one over tolerance or None, all differences)."""
    diffs = [difference(name, ours[name], ref[name]) for name in ref]
    first = next((d for d in diffs if d.rel_error > tolerance), None)
    return first, diffs
