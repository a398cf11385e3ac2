"""Weight-only int8 quantization, in the manner of gpt-fast: each weight matrix stored as int8 with
one scale per output row (per channel), the activations left in floating point.

    model.quantize("int8")                       in place: every nn.Linear becomes an Int8Linear
    neox-mini quantize --model M --out DIR       once, saved as safetensors; loads like any folder

For a weight row w (one output channel): scale = max|w| / 127 and q = round(w / scale), an int8 in
[-127, 127], so w ~= q * scale with an error of at most scale / 2 per weight. A product is then

    y = x @ (q * scale).T + bias = (x @ q.T) * scale + bias

The weights are a quarter of fp32's bytes, and decoding streams weights: a matrix-vector product
is up to 4x less memory traffic. The kernels are PyTorch's own, and matvec.py measures which one
this CPU runs fastest (int8_linear): `aten._weight_int8pack_mm` (int8 weights, bf16 activations),
the activations quantized per row the same way for an int8 x int8 product (`torch._int_mm`, or
oneDNN's quantized linear on CPUs with VNNI), fbgemm's dynamically quantized product for one row,
or the weight converted on the fly for a float product. A decode step's kernels are chosen by
timing whole steps (fast.choose_int8_decode_kernels). embed_in stays in floating point: a lookup
reads only the rows of the ids given, never the whole matrix.

Accuracy is stated in parity.TOLERANCES["int8"] and docs/performance.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .matvec import int8_linear, quantize_rows

METHODS = ("int8",)

# What config.json says of a quantized checkpoint. transformers does not know this quant_method,
# so it refuses the folder instead of loading int8 numbers as if they were weights.
QUANTIZATION_CONFIG = {"quant_method": "neox_mini", "bits": 8, "weights": "int8, symmetric, one scale per output row"}


class Int8Linear(nn.Module):
    """nn.Linear(in_features, out_features) with weight [O, I] int8 and scale [O]: w = weight * scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Plain tensors even when quantizing under inference_mode: their version counters tell
        # matvec.py's packed copies when a weight has been edited since it was packed.
        with torch.inference_mode(False):
            self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.ones(out_features, dtype=dtype, device=device))
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach()
        q = cls(w.shape[1], w.shape[0], linear.bias is not None, w.dtype, w.device)
        if w.is_meta:  # structure only (a checkpoint's values come next)
            return q
        weight, scale = quantize_rows(w)
        q.weight.copy_(weight)
        q.scale.copy_(scale)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scale, self.bias)  # [..., I] -> [..., O]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_model(model: nn.Module, method: str = "int8") -> nn.Module:
    """Replace every nn.Linear of model (attention, MLP, LM head) with an Int8Linear, in place."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}: use one of {', '.join(METHODS)}")
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear.from_linear(child))
    model.quantization = method
    return model
