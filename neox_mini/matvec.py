"""Products of a weight with a few rows (decoding), computed the way that is fastest on this CPU.

Decoding multiplies every weight matrix by one vector per sequence: the step is bound by how fast
the weights stream from memory, and which formulation streams fastest depends on the machine and
the dtype. Measured on three CPUs (docs/performance.md): on an AMD EPYC (Zen 3, AVX2) a batched
product over row blocks of the weight was 1.5-1.8x F.linear for the LM head, on a Zen 4 (AVX-512)
2-5x; on an Intel Xeon (AVX-512, AMX) the same trick is 2.5x slower than F.linear in fp32, while in
bf16 F.linear is the slow one (13 GB/s against 33 for torch.mv). No constant is right everywhere,
so none is kept:

    linear(x, weight, bias)    F.linear(x, weight, bias), by the method measured fastest for this
                               (weight shape, dtype, rows, threads) on this CPU
    bound(weight, bias, rows)  the same product as a function of x alone, its method looked up and
                               its views of the weight made once (a decode step's products)

The candidates compute the same dot products (each output is one weight row times x):

    "linear"     F.linear
    "mv"         torch.mv / addmv (one row only)
    "split-k"    the weight [O, I] viewed as k blocks [k, O/k, I], one batched product (bmm): each
                 block is an independent matrix-vector product a core can stream on its own
    "onednn"     oneDNN's inner product on the weight as it is (where PyTorch is built with oneDNN)

The first product of each kind times every candidate (a warm-up and 5 timed runs each, the best
of them counted; well under a second for a whole model) and keeps the winner, in memory and in a
JSON file keyed by the CPU, torch version, the candidates' code and thread count (machine()), so
later processes skip it: $NEOX_MINI_CACHE/matvec.json, default ~/.cache/neox_mini. Products of
more than MAX_ROWS rows are matrix products (compute-bound), and always F.linear; so are all
products off the CPU.

A product timed alone is not a product inside a decode step, where each weight arrives after all
the others have streamed through the caches: the first generation of a model on a machine also
times whole decode steps (fast.choose_float_decode_kernels, choose_int8_decode_kernels) with these
choices against F.linear and each split (or each int8 kernel) for every product, and keeps the
fastest assignment.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

MAX_ROWS = 8  # decoding a batch of up to 8 sequences: a matrix-vector product in all but name
SPLITS = (2, 4, 8, 16)

_choices: dict[str, str] | None = None  # key -> method, loaded from the file on first use
KERNELS = 4  # bumped when a candidate's code or the whole-step assignments change: the choices are measured again


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): [..., I] -> [..., O], by this machine's fastest method."""
    rows = x.numel() // x.shape[-1]
    if torch.compiler.is_compiling():
        if weight.device.type != "cpu":  # the choices are the CPU's, whatever the device
            return F.linear(x, weight, bias)
        return METHODS[method_when_compiled(weight.dtype, tuple(weight.shape), rows)](x, weight, bias)
    if rows > MAX_ROWS or weight.device.type != "cpu":
        return F.linear(x, weight, bias)
    method = chosen(choice_key(weight.dtype, weight.shape, rows), lambda: fastest(x, weight, bias))
    return METHODS[method](x, weight, bias)


def method_when_compiled(dtype: torch.dtype, shape: tuple[int, int], rows: int) -> str:
    """The method a compiled decode step (fast.compile_decode) traces for a product: this machine's
    choice, never measured here (the choices are made before compiling, uncompiled; one not made is
    F.linear). The compiler calls this once, while it traces, and keeps the answer (fast marks it
    with torch.compiler.assume_constant_result): no guard, no Python at each step.

    The batched product over row blocks stays a library call (bmm) in the compiled step, as fast as
    uncompiled: on an AMD EPYC (Zen 4), where it streams the weights 2-3x faster than F.linear,
    tracing F.linear for every product made the compiled step half as fast as the uncompiled one
    (docs/performance.md). torch.mv does not stay one: inductor turns it into a loop of its own,
    fused with the operations around it, which made a compiled 160m step slower than the uncompiled
    one; F.linear, the same BLAS product (as fast as torch.mv there), takes its place. oneDNN's
    product on a plain weight is one inductor cannot lower (torch 2.13): F.linear too. With frozen
    weights (mode "max-autotune", int8) inductor times its own kernels against F.linear's: F.linear."""
    import torch._inductor.config as inductor_config  # loaded already: this runs while compiling

    if inductor_config.freezing or rows > MAX_ROWS:
        return "linear"
    method = load_choices().get(choice_key(dtype, shape, rows), "linear")
    return "linear" if method in ("mv", "onednn") else method


def int8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight * scale[:, None], bias) for int8 weights [O, I] with per-row scales [O]
    (quantize.py): [..., I] -> [..., O] in x's dtype, by this machine's fastest method for few rows."""
    if weight.device.type != "cpu":
        return int8_dequant(x, weight, scale, bias)  # under torch.compile, fused into one kernel
    if torch.compiler.is_compiling():
        # fast.compile_decode: PyTorch's int8 weight-only product (bf16 activations, as int8_pack),
        # which inductor lowers to its C++ GEMM template when the weights are frozen and max_autotune
        # is on: a kernel built for this shape that widens the int8 weights in registers, timed
        # against ATen's at compile time. Left as the dequantizing product, inductor writes a plain
        # loop for it, which made a compiled 160m int8 decode step twice as slow as the uncompiled
        # one (docs/performance.md). Loading keeps int8 weights 64-byte aligned, as ATen's needs.
        return int8_pack_unchecked(x, weight, scale, bias)
    # int8 weights, x.dtype activations; products of more than MAX_ROWS rows (prefill) share one
    # choice, measured on the first of them.
    rows = x.numel() // x.shape[-1]
    key = int8_choice_key(x.dtype, weight.shape, rows)
    method = chosen(key, lambda: fastest(x, weight, bias, scale))
    return INT8_METHODS[method](x, weight, scale, bias)


def chosen(key: str, measure) -> str:
    """The method kept for `key`; on its first use, measure() picks it and the file is updated."""
    choices = load_choices()
    if key not in choices:
        choices[key] = measure()
        save_choices()
    return choices[key]


def int8_dequant(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The weight converted to x's dtype for this product only, then x @ q.T * scale (+ bias)."""
    y = F.linear(x, weight.to(x.dtype)).mul_(scale.to(x.dtype))  # [..., O]
    return y if bias is None else y.add_(bias)


def int8_pack(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's int8 weight-only kernel; it takes bf16 activations (fp32 ones are rounded to bf16).
    The kernel crashes the process (torch 2.13, AVX-512) on a weight that is not 64-byte aligned,
    as a tensor memory-mapped from a safetensors file can be: loading copies int8 weights into
    aligned memory, and an unaligned one is computed the converting way instead."""
    if weight.data_ptr() % 64:
        return int8_dequant(x, weight, scale, bias)
    return int8_pack_unchecked(x, weight, scale, bias)


def int8_pack_unchecked(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """int8_pack without its alignment check (which a traced weight has no address for)."""
    rows, I = x.numel() // x.shape[-1], x.shape[-1]
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, I).to(torch.bfloat16), weight, scale.to(torch.bfloat16))
    y = y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])  # [..., O]
    return y if bias is None else y.add_(bias)


def int8_dynamic(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The activations quantized too, per row (scale max|x| / 127, as for the weights), and an
    int8 x int8 -> int32 product (torch._int_mm, VNNI / AMX where the CPU has them); the result
    is rescaled by both scales. Adds the activations' rounding to the weights'.
    Only with VNNI: without it, the oneDNN product behind torch._int_mm sums pairs of (shifted,
    unsigned) activations times weights in 16 bits, which saturate, as oneDNN's documentation of
    its int8 GEMM warns. With oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA) the product was 23-25 % off
    on random weights; there this is int8_dequant's product (and no candidate)."""
    if not vnni():
        return int8_dequant(x, weight, scale, bias)
    rows, I = x.numel() // x.shape[-1], x.shape[-1]
    xq, x_scale = quantize_rows(x.reshape(rows, I).float())  # [rows, I] int8, [rows] fp32
    y = torch._int_mm(xq, weight.t()).float().mul_(x_scale[:, None]).mul_(scale.float())  # [rows, O]
    y = y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])  # [..., O]
    return y if bias is None else y.add_(bias)


def int8_fbgemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fbgemm's dynamically quantized product (torch.ops.quantized.linear_dynamic, the kernel behind
    torch.ao's dynamic quantization): the kernel quantizes the activations itself, to uint8 with one
    scale and zero point for the whole input, and multiplies with the weight (and bias) packed once
    into fbgemm's layout (packed_weight). One scale for the whole input is one scale per row only
    when there is one row, so this is a candidate for single-row products only (int8_candidates). On
    a CPU without VNNI the kernel's u8 x s8 pair sums can saturate 16 bits unless the activations
    keep 7 bits (reduce_range): correct, but up to 4.6e-2 from fp32 on random weights where 8 bits
    stay under 3e-2, so it is a candidate only with VNNI, where they keep all 8.
    A decode step makes dozens of these products at 30-200 us each, so this path stays lean: the
    bias is added by the kernel, and an fp32 input goes in as it is ([..., I] -> [..., O])."""
    packed = packed_weight("fbgemm", weight, scale, bias)
    if packed is None:
        return int8_dynamic(x, weight, scale, bias)
    y = torch.ops.quantized.linear_dynamic(x.float(), packed, not vnni())  # [..., O]
    return y if y.dtype == x.dtype else y.to(x.dtype)


def int8_onednn(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """int8-dynamic's arithmetic (activations rounded per row to 255 levels, int8 x int8 products
    summed in int32) through oneDNN's quantized linear (torch.ops.onednn.qlinear_pointwise, what
    inductor's x86 int8 path calls), with the weight packed once into oneDNN's layout: its AMX / VNNI
    kernels ran a 512-token product 2-3x faster than torch._int_mm on an AMX machine. oneDNN takes
    uint8 activations with one scale: each row goes in as q + 128 (zero point 128) with scale 1, and
    the row's own scale is applied to the fp32 result, which keeps the scale per row exact. Without
    VNNI the u8 x s8 pair sums can saturate 16 bits: there it is int8_dynamic (and no candidate)."""
    packed = packed_weight("onednn", weight, scale) if vnni() else None
    if packed is None:
        return int8_dynamic(x, weight, scale, bias)
    rows, I = x.numel() // x.shape[-1], x.shape[-1]
    x2 = x.reshape(rows, I).float()  # [rows, I]
    x_scale = x2.abs().amax(1, keepdim=True).clamp_(min=1e-12).div_(127)  # [rows, 1], max|x| / 127
    # round(x / x_scale) is in [-127, 127]; + 128 moves it into uint8, and adding 128.5 before the
    # conversion (which truncates) rounds half up in the same pass. Not int8 activations (zero
    # point 0, one pass fewer): on AMX they ran as fast, but with oneDNN held to AVX-512 VNNI or
    # AVX2 VNNI (ONEDNN_MAX_CPU_ISA) the weight packed for uint8 went to its reference kernel,
    # 457 ms for a 64 x 512 x 512 product against 0.19 ms.
    xu = (x2 / x_scale).add_(128.5).to(torch.uint8)  # [rows, I]
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    y = torch.ops.onednn.qlinear_pointwise(
        xu, 1.0, 128, packed, scale.float(), zero_points, None, 1.0, 0, torch.float32, "none", [], ""
    )  # [rows, O] fp32: (sum of (xu - 128) * q) * scale
    y = y.mul_(x_scale).to(x.dtype).view(*x.shape[:-1], weight.shape[0])  # [..., O]
    return y if bias is None else y.add_(bias)


def vnni() -> bool:
    """Whether int8 x int8 products keep 8-bit activations exact here: the CPU has AVX-512 VNNI (as
    torch reports it), and oneDNN, which computes torch._int_mm and onednn's linear, is not held
    below VNNI by ONEDNN_MAX_CPU_ISA (say AVX2, where its int8 products saturate)."""
    return torch.cpu._is_vnni_supported() and onednn_may_use_vnni()


@functools.cache  # read once, as oneDNN reads it
def onednn_may_use_vnni() -> bool:
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return isa not in ("SSE41", "AVX", "AVX2", "AVX512_CORE")  # the ISAs without VNNI


INT8_METHODS = {
    "int8-dequant": int8_dequant,
    "int8-pack": int8_pack,
    "int8-dynamic": int8_dynamic,
    "int8-fbgemm": int8_fbgemm,
    "int8-onednn": int8_onednn,
}


def int8_candidates(rows: int) -> list[str]:
    has_vnni = vnni()  # int8 activations keep all 8 bits only with it
    fbgemm = has_vnni and rows == 1 and "fbgemm" in torch.backends.quantized.supported_engines
    # Its packing takes a quantized tensor, which torch 2.13 marks as deprecated: once a torch
    # drops them, fbgemm is no candidate rather than an error.
    fbgemm = fbgemm and hasattr(torch, "_make_per_channel_quantized_tensor")
    onednn = has_vnni and torch.backends.mkldnn.is_available()
    return [
        "int8-dequant",
        "int8-pack",
        *(["int8-dynamic"] if has_vnni else []),
        *(["int8-fbgemm"] if fbgemm else []),
        *(["int8-onednn"] if onednn else []),
    ]


# Packed copies of int8 weights (fbgemm's and oneDNN's layouts), by kernel and the address of the
# weight's data. An entry keeps weak references to the weight, scale (and bias) it was packed from,
# with their addresses and version counters (which every in-place write bumps): an entry is used
# only while they are alive, at the same addresses and unchanged since packing, so an edited weight
# is packed again and a freed one never matches. A packed copy costs as much memory as the int8
# weight itself, and is kept only for a kernel that was chosen (fastest).
_packs: dict[tuple[str, int], tuple] = {}


def packed_weight(kernel: str, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
    """The weight [O, I] int8 with scales [O], packed for kernel "fbgemm" (with the bias [O], which
    that kernel adds) or "onednn"; None for inference tensors, which have no version counter to
    tell an edit by (the kernels then compute int8_dynamic's product)."""
    if any(t is not None and t.is_inference() for t in (weight, scale, bias)):
        return None
    key = (kernel, weight.data_ptr())
    entry = _packs.get(key)
    if entry is not None and entry[0] == contents_stamp(weight, scale, bias):
        refs, packed = entry[1], entry[2]
        if refs[0]() is not None and refs[1]() is not None and (bias is None or refs[2]() is not None):
            return packed
    if kernel == "onednn":
        packed = torch.ops.onednn.qlinear_prepack(weight.contiguous(), None)  # [I, O] in oneDNN's layout
    else:
        with warnings.catch_warnings():
            # torch 2.13 marks quantized tensors as deprecated; fbgemm's packing still takes one.
            warnings.simplefilter("ignore", UserWarning)
            zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
            q = torch._make_per_channel_quantized_tensor(weight.contiguous(), scale.double(), zero_points, 0)
            engine = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = "fbgemm"  # the packing's layout; the product follows it
                packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.float())
            finally:
                torch.backends.quantized.engine = engine

    def forget(ref, key=key):  # the weight is freed: drop its copy, unless another weight took the key
        entry = _packs.get(key)
        if entry is not None and entry[1][0] is ref:
            del _packs[key]

    refs = (weakref.ref(weight, forget), weakref.ref(scale), None if bias is None else weakref.ref(bias))
    _packs[key] = (contents_stamp(weight, scale, bias), refs, packed)
    return packed


def contents_stamp(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What tells the tensors' contents apart from when they were packed: their addresses and
    version counters (bumped by every in-place write). Checked at every product, so kept flat."""
    if bias is None:
        return (weight._version, scale.data_ptr(), scale._version)
    return (weight._version, scale.data_ptr(), scale._version, bias.data_ptr(), bias._version)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[O, I] float -> (int8 [O, I], scale [O] in w's dtype): symmetric, one scale per row, so that
    w ~= q * scale[:, None]. The weights' quantization (quantize.py) and the activations' here."""
    w32 = w.float()
    scale = w32.abs().amax(dim=1).clamp_(min=1e-12).div_(127)  # [O]; an all-zero row keeps a finite scale
    # |w / scale| <= 127 by construction, so no clamp before the conversion: one pass fewer over
    # the activations of every int8-dynamic product.
    q = torch.div(w32, scale[:, None]).round_().to(torch.int8)  # [O, I]
    return q, scale.to(w.dtype)


def by_split(k: int):
    def bind(weight: torch.Tensor, bias: torch.Tensor | None):  # the views made once (bound keeps them)
        O, I = weight.shape
        blocks = weight.view(k, O // k, I)  # [k, O/k, I]
        return functools.partial(split, w=blocks, b=None if bias is None else bias.view(k, O // k, 1))

    def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return bind(weight, bias)(x)

    product.bind = bind
    return product


def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x [..., I] times a weight viewed as k row blocks, w [k, O/k, I] (bias b [k, O/k, 1]) -> [..., O]."""
    k, _, I = w.shape
    rows = x.numel() // I
    # x as k columns [I, rows] of one matrix, every block reading the same memory. The strides are
    # set, not left to views: for one row, views may give the size-1 dimension any stride, and a
    # compiled step's gave it 0. ATen's bmm ran fast with the column stride I (what views of a
    # contiguous x give uncompiled) and 7x slower with 0 or 1 (68 against 471 us, 1536 x 512 in
    # 4 blocks).
    x = x if x.is_contiguous() else x.contiguous()
    xt = torch.as_strided(x, (k, I, rows), (0, 1, I))  # [k, I, rows]
    y = torch.bmm(w, xt) if b is None else torch.baddbmm(b, w, xt)  # [k, O/k, rows]
    if rows == 1:
        return y.view(*x.shape[:-1], -1)  # [..., O]: the blocks lie side by side already
    return y.permute(2, 0, 1).reshape(*x.shape[:-1], -1)  # [..., O]: blocks side by side again


def bound(weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
    """linear(x, weight, bias) for x of `rows` rows as a function of x alone, by the method chosen
    for it on this machine, with what the method derives from the weight (a split's block views)
    made once: a decode step's product without linear's lookup and views at every call
    (fast.decode_products). None when no method is chosen yet."""
    method = load_choices().get(choice_key(weight.dtype, tuple(weight.shape), rows))
    if method is None:
        return None
    product = METHODS[method]
    if hasattr(product, "bind"):  # a split: its views of the weight made here
        return product.bind(weight, bias)
    return lambda x: product(x, weight, bias)


def int8_bound(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, rows: int):
    """bound for an int8 weight (int8_linear) and activations of `dtype`."""
    method = load_choices().get(int8_choice_key(dtype, tuple(weight.shape), rows))
    if method is None:
        return None
    product = INT8_METHODS[method]
    return lambda x: product(x, weight, scale, bias)


def by_mv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    v = x.reshape(-1)  # [I]: one row
    y = torch.mv(weight, v) if bias is None else torch.addmv(bias, weight, v)  # [O]
    return y.view(*x.shape[:-1], weight.shape[0])


def by_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's inner product (torch.ops.mkldnn._linear_pointwise, the op inductor emits for a CPU
    linear) on the weight as it is, not packed into oneDNN's layout: no copy of the weight is kept.
    On an AMD Zen 4 it ran products of 2-8 rows at 16-22 GB/s where F.linear (MKL) ran 6-10
    (docs/performance.md). It follows torch.set_float32_matmul_precision, as F.linear does."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")  # [rows, O]
    return y.view(*x.shape[:-1], weight.shape[0])  # [..., O]


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


METHODS = {
    "linear": F.linear,
    "mv": by_mv,
    **{f"split-{k}": by_split(k) for k in SPLITS},
    **({"onednn": by_onednn} if onednn_linear_available() else {}),
}


def candidates(rows: int, out_features: int) -> list[str]:
    return [
        "linear",
        *(["mv"] if rows == 1 else []),
        *(f"split-{k}" for k in SPLITS if out_features % k == 0),
        *(["onednn"] if "onednn" in METHODS else []),
    ]


def fastest(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None = None) -> str:
    """The candidate with the lowest best-of-5 time, each timed in turn (so a change of machine load
    hits them all). With a scale, the int8 methods (int8_linear)."""
    rows = x.numel() // x.shape[-1]
    if scale is None:
        methods = {name: METHODS[name] for name in candidates(rows, weight.shape[0])}
        args = (x, weight, bias)
    else:
        methods = {name: INT8_METHODS[name] for name in int8_candidates(rows)}
        args = (x, weight, scale, bias)
    for method in methods.values():  # warm-up: first-call allocations, library dispatch, packing
        method(*args)
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(5):
        for name, method in methods.items():
            start = time.perf_counter()
            method(*args)
            best[name] = min(best[name], time.perf_counter() - start)
    choice = min(best, key=best.get)
    if scale is not None:
        drop_unused_packs(weight, x.dtype, choice)
    return choice


def drop_unused_packs(weight: torch.Tensor, dtype: torch.dtype, choice: str) -> None:
    """Drop the packed copies of weight that no product of its shape uses (made to time a kernel)."""
    shape = f"int8 {shape_key(dtype, weight.shape)} "
    in_use = {method for key, method in load_choices().items() if key.startswith(shape)} | {choice}
    for kernel in ("fbgemm", "onednn"):
        if f"int8-{kernel}" not in in_use:
            _packs.pop((kernel, weight.data_ptr()), None)


def shape_key(dtype: torch.dtype, shape: tuple[int, int]) -> str:
    O, I = shape
    return f"{str(dtype).removeprefix('torch.')} {O}x{I}"


def choice_key(dtype: torch.dtype, shape: tuple[int, int], rows: int | str) -> str:
    return _choice_key(dtype, *shape, rows, torch.get_num_threads())


@functools.cache  # asked for at every product: formatted once per shape
def _choice_key(dtype: torch.dtype, O: int, I: int, rows: int | str, threads: int) -> str:
    return f"{shape_key(dtype, (O, I))} rows={rows} threads={threads}"


def decode_step_key(dtype: torch.dtype, shapes: list[tuple[int, int]], rows: int) -> str:
    """The key of a whole int8 decode step's choice (fast.choose_int8_decode_kernels); dtype is the
    activations'."""
    weights = "+".join(f"{O}x{I}" for O, I in shapes)
    return f"decode {str(dtype).removeprefix('torch.')} {weights} rows={rows} threads={torch.get_num_threads()}"


def float_step_key(dtype: torch.dtype, shapes: list[tuple[int, int]], rows: int) -> str:
    """The key of a whole float decode step's choice (fast.choose_float_decode_kernels)."""
    return "float " + decode_step_key(dtype, shapes, rows)


def int8_choice_key(dtype: torch.dtype, shape: tuple[int, int], rows: int) -> str:
    """The key of an int8 product with activations of `dtype`; all prefills share one per shape."""
    return "int8 " + choice_key(dtype, shape, rows if rows <= MAX_ROWS else f">{MAX_ROWS}")


def cache_root() -> Path:
    """Where what is measured or built once per machine is kept: $NEOX_MINI_CACHE, default ~/.cache/neox_mini."""
    return Path(os.environ.get("NEOX_MINI_CACHE") or Path.home() / ".cache" / "neox_mini")


def cache_file() -> Path:
    return cache_root() / "matvec.json"


def machine() -> str:
    """What the choices depend on besides the product itself: the CPU (its name, and its family and
    model numbers, since a virtual machine may name every CPU "Intel Xeon Processor"), what ATen and
    oneDNN may use of it (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), and the code of the candidates:
    torch's kernels and the ones here (KERNELS)."""
    cpu = cpu_name()
    methods = ",".join([*METHODS, *INT8_METHODS])  # new candidates: measure again
    capability = f"{torch.backends.cpu.get_cpu_capability()}{' VNNI' if vnni() else ''}"  # ATen's and oneDNN's limits
    return f"{cpu} | {capability} | torch {torch.__version__} | {methods} | kernels {KERNELS}"


def cpu_name() -> str:
    """The CPU's name with its family and model numbers ("AMD EPYC (family 25, model 17)"): a virtual
    machine may give every CPU the same name."""
    cpu, fields = platform.processor() or "?", {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if not name.strip():
                    break  # the first CPU's block ends: every core of a machine is the same here
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return cpu


def valid_values(key: str):
    """What a stored choice may be: a float method, an int8 one, or for a whole decode step
    (fast.choose_int8_decode_kernels, choose_float_decode_kernels) the assignment that won."""
    if key.startswith("int8 "):
        return INT8_METHODS
    if key.startswith("decode "):
        return ("per-product", *INT8_METHODS)
    if key.startswith("float decode "):
        return ("per-product", *METHODS)
    return METHODS


def load_choices() -> dict[str, str]:
    global _choices
    if _choices is None:
        _choices = {}
        try:
            stored = json.loads(cache_file().read_text(encoding="utf-8")).get(machine(), {})
            _choices = {k: v for k, v in stored.items() if v in valid_values(k)}
        except (OSError, ValueError, AttributeError):
            pass  # no file yet, or an unreadable one: measure again (and rewrite it)
    return _choices


def save_choices() -> None:
    """Merge this machine's choices into the file (other machines' entries are kept); best effort:
    a read-only home only means measuring again next time."""
    path = cache_file()
    try:
        try:
            everything = json.loads(path.read_text(encoding="utf-8"))
            everything = everything if isinstance(everything, dict) else {}
        except (OSError, ValueError):
            everything = {}
        everything[machine()] = dict(sorted(load_choices().items()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(everything, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
