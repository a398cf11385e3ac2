"""The fast inference path: the same GPT-NeoX as model.py, computed with fewer and bigger operations.

model.py is the textbook and the reference; this file is what `generate` runs. The two relate like
this:
  * Same weights: `forward(model, ...)` reads the very parameter tensors of a `GPTNeoX` (no copy, no
    conversion), so memory-mapped weights stay memory-mapped and there is one copy of them in RAM.
  * Same KV cache: it writes the same `KVCache` buffers (set up by `model.setup_kv_cache`), in the
    same layout, so the two paths can even take turns within one sequence.
  * Same function: `forward(model, ids, ...)` returns what `model(ids, ...)` returns (logits, same
    arguments, same errors), up to float rounding. tests/test_fast_path.py checks it against the
    readable model and against transformers at the tolerances of `parity.TOLERANCES` (1e-5 relative
    in fp32) and checks that greedy generation gives identical tokens.

Where the time goes on a CPU, and what this file changes (measurements: docs/performance.md):
  * Decoding multiplies every weight matrix by a single vector, so a decode step is bound by memory
    bandwidth, and which formulation of that product streams fastest depends on the CPU and dtype:
    `linear` (matvec.py) measures the candidates once per shape on this machine and keeps the best.
    This matters most for the 50304 x C LM head.
  * A small model spends a decode step dispatching tiny ops rather than computing. The readable
    attention is ~40 ops per layer; here it is ~15: rotary is one small matmul with a rotation
    matrix built once per forward call (not per layer), attention is one
    F.scaled_dot_product_attention call, and no mask is built when causality alone decides
    (decoding one token, or a prefill from position 0).
  * Prefill for generation asks only for the last position's logits (last_token_only).
  * generate's decode steps call each product bound to its weights (decode_products), made once
    per generation: no method lookup and no views of the weight at every product.
  * The decode kernels are chosen by timing whole decode steps, once per machine
    (choose_int8_decode_kernels, choose_float_decode_kernels): timed one product at a time, the
    kernels rank differently. For a float model, F.linear everywhere (transformers' choice) is
    the floor the per-product choices must beat, and each batched split everywhere competes too.
  * Opt-in, `compile_decode` (end of this file) has torch.compile fuse a decode step's ~15 small
    ops per layer into a few loops: 1.06-1.88x per token in fp32 here, for tens of seconds of
    compiling. In mode "max-autotune", and always for an int8 model, the weights are frozen into
    the compiled step, so inductor builds and times its own matrix-vector kernels for them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import time
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import matvec
from .matvec import cache_root, int8_linear, linear
from .model import GPTNeoX, attention_allowed, rotate_half, write_kv
from .quantize import Int8Linear


def rotation_matrices(model: GPTNeoX, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rotary embedding as one matrix per position: apply_rotary(x)[:R] == x[:R] @ M, [B, T] -> [B, T, R, R].

    model.py rotates with x * cos + rotate_half(x) * sin. rotate_half is linear, so it is a matrix
    Q (row i = rotate_half of the i-th unit vector), and the whole rotation is
    M = diag(cos) + Q diag(sin): one small matmul per layer instead of seven elementwise ops.
    Built once per forward call and shared by every layer.
    """
    cos = model.rotary.cos[position_ids]  # [B, T, R], fp32
    sin = model.rotary.sin[position_ids]  # [B, T, R], fp32
    R = cos.shape[-1]
    Q = half_turn(R, cos.device)  # [R, R]: x @ Q == rotate_half(x)
    M = torch.diag_embed(cos) + Q * sin[..., None, :]  # [B, T, R, R]: column j scaled by sin_j
    return M.to(dtype)


_half_turns: dict[tuple[int, torch.device], torch.Tensor] = {}  # half_turn's matrices, by size and device


def half_turn(R: int, device: torch.device) -> torch.Tensor:
    """rotate_half as a matrix Q [R, R] (x @ Q == rotate_half(x)), made once per size and device: its
    five operations cost 2.5 % of a 14m decode step (alternating in one process). A compiled step
    builds it into its graph."""
    if torch.compiler.is_compiling():
        return rotate_half(torch.eye(R, device=device))
    Q = _half_turns.get((R, device))
    if Q is None:
        Q = _half_turns[(R, device)] = rotate_half(torch.eye(R, device=device))
    return Q


def attention(
    block_attn,
    x: torch.Tensor,
    M: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    start_pos: int,
    kv: tuple[torch.Tensor, torch.Tensor] | None,
    sharded: bool = False,
    products: dict | None = None,
) -> torch.Tensor:
    """model.Attention.forward with the same weights and cache: [B, T, C] -> [B, T, C].

    kv: the layer's KV cache buffers (KVCache.k, .v), or None without a cache.
    sharded: the weights are this rank's share (tensor parallelism): nh is this rank's heads, and
    the result is this rank's partial sum of the output, without `dense`'s bias.
    products: a decode step's bound products (decode_products), or None."""
    B, T, _ = x.shape
    nh, hs = block_attn.num_heads, block_attn.head_size
    R = M.shape[-1]
    proj = block_attn.query_key_value
    if sharded:
        qkv = linear(x, local(proj.weight), local(proj.bias))  # [B, T, 3C/N]: this rank's heads
    else:
        qkv = project(proj, x, products)  # [B, T, 3C]
    qkv = qkv.view(B, T, nh, 3, hs)  # [B, T, nh, 3, hs]: per-head layout
    # Rotate the first R dims of q and k (both at once) in place: [B, T, 2nh, R] @ [B, T, R, R], as
    # one bmm over the B * T positions (a broadcasting matmul adds its own expand and reshapes).
    qk = qkv[:, :, :, :2, :R]  # [B, T, nh, 2, R]
    qk = torch.bmm(qk.reshape(B * T, 2 * nh, R), M.view(B * T, R, R))  # [B * T, 2nh, R]
    qkv[:, :, :, :2, :R] = qk.view(B, T, nh, 2, R)
    q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each [B, nh, T, hs] (strided views)

    if kv is not None:
        k, v = write_kv(*kv, start_pos, k, v)  # each [B, nh, S, hs]
    # One fused kernel: scores, mask, fp32-accumulated softmax, weighted sum of values.
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # [B, nh, T, hs]
    y = y.transpose(1, 2).reshape(B, T, nh * hs)  # [B, T, C] (this rank's C / N when sharded)
    if sharded:
        return linear(y, local(block_attn.dense.weight))  # [B, T, C], a partial sum
    return project(block_attn.dense, y, products)  # [B, T, C]


def mlp(block_mlp, x: torch.Tensor, sharded: bool = False, products: dict | None = None) -> torch.Tensor:
    """model.MLP.forward; sharded as for attention: this rank's partial sum, without the last bias."""
    up, down = block_mlp.dense_h_to_4h, block_mlp.dense_4h_to_h
    if sharded:
        h = F.gelu(linear(x, local(up.weight), local(up.bias)), approximate=block_mlp.approximate)  # [B, T, F/N]
        return linear(h, local(down.weight))  # [B, T, C], a partial sum
    h = project(up, x, products)  # [B, T, F]
    h = F.gelu(h, approximate=block_mlp.approximate)  # [B, T, F]
    return project(down, h, products)  # [B, T, C]


def project(layer, x: torch.Tensor, products: dict | None = None) -> torch.Tensor:
    """A layer's product, [..., I] -> [..., O]: an nn.Linear through matvec.linear, an int8 layer
    (quantize.py) through matvec.int8_linear, as its forward does (without nn.Module's call); in a
    decode step with bound products (decode_products), the layer's own."""
    if products is not None:
        return products[layer](x)
    if isinstance(layer, Int8Linear):
        return int8_linear(x, layer.weight, layer.scale, layer.bias)
    return linear(x, layer.weight, layer.bias)


def local(weight: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a tensor-parallel weight (a DTensor, see distributed.py), as a plain
    tensor: DTensor dispatches each op in Python, ~1.5 ms per linear on a CPU, more than a small
    model's whole product; the fast path does its few collectives itself."""
    return weight.to_local() if hasattr(weight, "to_local") else weight


def block_forward(
    block,
    x: torch.Tensor,
    M: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    start_pos: int,
    kv,
    products: dict | None = None,
) -> torch.Tensor:
    ln1, ln2 = block.input_layernorm, block.post_attention_layernorm
    attn_out = attention(
        block.attention,
        F.layer_norm(x, ln1.weight.shape, ln1.weight, ln1.bias, ln1.eps),
        M,
        mask,
        is_causal,
        start_pos,
        kv,
        products=products,
    )  # [B, T, C]
    if block.use_parallel_residual:
        h = F.layer_norm(x, ln2.weight.shape, ln2.weight, ln2.bias, ln2.eps)  # [B, T, C]
        return x + attn_out + mlp(block.mlp, h, products=products)  # [B, T, C], summed in model.py's order
    x = x + attn_out  # [B, T, C]
    h = F.layer_norm(x, ln2.weight.shape, ln2.weight, ln2.bias, ln2.eps)  # [B, T, C]
    return x + mlp(block.mlp, h, products=products)  # [B, T, C]


def block_forward_sharded(
    block, x: torch.Tensor, M: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, start_pos: int, kv, group
) -> torch.Tensor:
    """block_forward with this rank's share of the weights: attention and MLP each give a partial sum
    of their output; all-reduced over the ranks, then the (replicated) biases are added once. With
    the parallel residual both partial sums go into one all-reduce: the block's only collective."""
    ln1, ln2 = block.input_layernorm, block.post_attention_layernorm
    attn_bias, mlp_bias = local(block.attention.dense.bias), local(block.mlp.dense_4h_to_h.bias)
    h = F.layer_norm(x, ln1.weight.shape, ln1.weight, ln1.bias, ln1.eps)  # [B, T, C]
    attn_out = attention(block.attention, h, M, mask, is_causal, start_pos, kv, sharded=True)  # [B, T, C], partial
    if block.use_parallel_residual:
        h = F.layer_norm(x, ln2.weight.shape, ln2.weight, ln2.bias, ln2.eps)  # [B, T, C]
        partial = attn_out + mlp(block.mlp, h, sharded=True)  # [B, T, C]
        dist.all_reduce(partial, group=group)
        return x + partial + (attn_bias + mlp_bias)  # [B, T, C]
    dist.all_reduce(attn_out, group=group)
    x = x + attn_out + attn_bias  # [B, T, C]
    h = F.layer_norm(x, ln2.weight.shape, ln2.weight, ln2.bias, ln2.eps)  # [B, T, C]
    mlp_out = mlp(block.mlp, h, sharded=True)
    dist.all_reduce(mlp_out, group=group)
    return x + mlp_out + mlp_bias  # [B, T, C]


def embed_sharded(weight: torch.Tensor, input_ids: torch.Tensor, group) -> torch.Tensor:
    """Embedding rows split over the ranks by vocabulary: each rank looks up the ids it holds (zeros
    for the others) and an all-reduce assembles the embeddings. [B, T] -> [B, T, C]."""
    rows = weight.shape[0]  # V / N
    ids = input_ids - dist.get_rank(group) * rows  # [B, T]
    outside = (ids < 0) | (ids >= rows)  # [B, T]
    x = F.embedding(ids.masked_fill(outside, 0), weight).masked_fill_(outside[..., None], 0)  # [B, T, C]
    dist.all_reduce(x, group=group)
    return x


def logits_sharded(x: torch.Tensor, weight: torch.Tensor, group) -> torch.Tensor:
    """The LM head split over the vocabulary: each rank's V/N logits, all-gathered so that every rank
    has (and samples from) the same [B, T, V]."""
    mine = linear(x, weight)  # [B, T, V/N]
    pieces = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, mine, group=group)
    return torch.cat(pieces, dim=-1)  # [B, T, V]


def attention_mask_for_sdpa(
    start_pos: int, T: int, attention_mask: torch.Tensor | None, dtype: torch.dtype, device, has_padding: bool = True
) -> tuple[torch.Tensor | None, bool]:
    """(additive mask [B|1, 1, T, S] or None, is_causal) for F.scaled_dot_product_attention.

    No mask at all in the two common cases: one new token sees every cached key, and a prefill from
    position 0 is plain causal attention (is_causal lets the kernel skip the masked half).
    Otherwise the mask of model.py, as an additive mask: masked keys get the dtype's most negative
    value rather than -inf, so a row with every key masked (a left-padding position) gives finite
    garbage that nobody reads instead of NaN that would leak into other rows.
    """
    if attention_mask is not None and not has_padding:
        attention_mask = None  # the caller passed one, but without padding it changes nothing
    if attention_mask is None and T == 1:
        return None, False
    if attention_mask is None and start_pos == 0:
        return None, True
    allowed = attention_allowed(start_pos, T, attention_mask, device)  # [B or 1, 1, T, S]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min), False


@torch.inference_mode()
def forward(
    model: GPTNeoX,
    input_ids: torch.Tensor,
    *,
    start_pos: int = 0,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    last_token_only: bool = False,
    checked: bool = False,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    products: dict | None = None,
) -> torch.Tensor:
    """What `model(input_ids, ...)` returns (logits [B, T, V], or [B, 1, V] with last_token_only),
    computed the fast way. Same arguments and checks as GPTNeoX.forward (without hidden states).

    checked=True skips the input checks, for a caller that has already made them: checking the
    token ids reads them back from the device (a host synchronisation, which on a GPU stalls every
    decoded token), and generate feeds back only ids it sampled itself.
    kv_caches: every layer's KV cache buffers, as `layer_kv_caches(model)` lists them (the default).
    The compiled decode step takes them as an argument: dynamo fixes the shape of a module's
    buffers, so read from the modules, every new cache length would compile the step again.
    products: every product of a decode step of this batch size, bound (decode_products): what
    generate passes to its uncompiled decode steps."""
    if model.hooked:  # hooks attached: they live in the readable forward, so run that one
        return model(
            input_ids,
            start_pos=start_pos,
            position_ids=position_ids,
            attention_mask=attention_mask,
            last_token_only=last_token_only,
        )
    if not checked:
        model.check_inputs(input_ids, start_pos)
    B, T = input_ids.shape
    S = start_pos + T
    if position_ids is None:
        position_ids = torch.arange(start_pos, S, device=input_ids.device).expand(B, T)  # [B, T]

    group = model.shard_group  # tensor parallelism (distributed.py); None: all weights are here
    if group is None:
        x = F.embedding(input_ids, model.gpt_neox.embed_in.weight)  # [B, T, C]
    else:
        x = embed_sharded(local(model.gpt_neox.embed_in.weight), input_ids, group)  # [B, T, C]
    M = rotation_matrices(model, position_ids, x.dtype)  # [B, T, R, R]
    # Whether the mask hides anything: read back from the device (a sync) unless the caller knows.
    has_padding = checked or attention_mask is None or not bool(attention_mask[:, :S].all())
    mask, is_causal = attention_mask_for_sdpa(start_pos, T, attention_mask, x.dtype, x.device, has_padding)
    if kv_caches is None:
        kv_caches = layer_kv_caches(model)
    for block, kv in zip(model.gpt_neox.layers, kv_caches, strict=True):
        if group is None:
            x = block_forward(block, x, M, mask, is_causal, start_pos, kv, products)  # [B, T, C]
        else:
            x = block_forward_sharded(block, x, M, mask, is_causal, start_pos, kv, group)  # [B, T, C]
    if last_token_only:
        x = x[:, -1:, :]  # [B, 1, C]
    ln = model.gpt_neox.final_layer_norm
    x = F.layer_norm(x, ln.weight.shape, ln.weight, ln.bias, ln.eps)  # [B, T, C]
    if group is None:
        return project(model.embed_out, x, products)  # [B, T, V]
    return logits_sharded(x, local(model.embed_out.weight), group)  # [B, T, V]


def layer_kv_caches(model: GPTNeoX) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Each layer's KV cache buffers (k, v), or None for a layer without a cache."""
    caches = [block.attention.kv_cache for block in model.gpt_neox.layers]
    return [None if cache is None else (cache.k, cache.v) for cache in caches]


def decode_products(model: GPTNeoX, batch_size: int) -> dict | None:
    """Every product of a decode step of `batch_size` rows, bound to its weights: {layer: fn(x)}, for
    forward(products=...). None where there is nothing to bind: no choices are made off the CPU, for
    more than matvec.MAX_ROWS rows, or for a tensor-parallel model.

    Each product is the method chosen for it (matvec.bound), with what it derives from the weight
    made here, once per generation: inside a decode step, where every small operation pays for
    code and data the streamed weights have pushed out of the caches, looking the method up and
    viewing the weight at every product took 10-15 % of a 14m step and 2-16 % of a 70m-160m one
    (with the leaner split, matvec.split; alternating in one process, docs/performance.md). A layer
    whose tensors have been replaced since (new tensors, or new data under the same ones) takes the
    general path, project."""
    weight = model.gpt_neox.final_layer_norm.weight
    if batch_size > matvec.MAX_ROWS or model.shard_group is not None or weight.device.type != "cpu":
        return None
    products = {}
    for layer in model.modules():
        if type(layer) is torch.nn.Linear:
            fn = matvec.bound(layer.weight, layer.bias, batch_size)
        elif isinstance(layer, Int8Linear):
            fn = matvec.int8_bound(layer.weight, layer.scale, layer.bias, weight.dtype, batch_size)
        else:
            continue
        products[layer] = functools.partial(project, layer) if fn is None else checked_product(layer, fn)
    return products


def checked_product(layer, fn):
    """fn(x) while the layer keeps the tensors (and their data) it has now; otherwise the general
    path, project(layer, x)."""
    weight, bias, scale = layer.weight, layer.bias, getattr(layer, "scale", None)  # scale: int8 only
    address, bias_address = weight.data_ptr(), None if bias is None else bias.data_ptr()

    def product(x: torch.Tensor) -> torch.Tensor:
        if (
            layer.weight is weight
            and layer.bias is bias
            and weight.data_ptr() == address
            and (bias is None or bias.data_ptr() == bias_address)
            and (scale is None or layer.scale is scale)
        ):
            return fn(x)
        return project(layer, x)

    return product


# ----------------------------------------------------------------------------- torch.compile, opt-in

_compiled_forwards = {}  # torch.compile(forward) per set of inductor options (compiled_forward)

# How inductor compiles a decode step with frozen weights (an int8 model's always, a float model's in
# mode "max-autotune"). freezing: the weights become constants of the compiled code, so inductor's C++
# GEMM template (max_autotune, backend CPP) may lay each weight out once for its own matrix-vector
# kernel (for int8, one that widens the values in registers), with the layer norm or GELU that follows
# fused into it; max_autotune times that kernel against ATen's product for each shape, once (inductor
# caches the verdict; an int8 model's products get the template alone, INT8_OPTIONS). A float weight
# left to ATen is repacked for MKL's packed product. Compiled int8 decoding went from 1.0-1.45x to
# 1.4-2.5x the uncompiled step with it, fp32 decoding by 1.1-1.25x (docs/performance.md), for more
# memory: the packed copies (for fp32, the weights' size again). Frozen weights are copies: an edit
# in place would not reach them, so prepare_decode compiles again when the weights have changed
# since. Inductor's cache of compiled graphs keys a frozen weight by shape and dtype only, and
# stores the layout it made from the weights with the graph: another checkpoint of the same shape got
# the first one's back, in a later process too (torch 2.13). So a frozen graph is cached only with a
# digest of the weights in its key (FrozenWeightsKey, compiled_forward): an int8 model's (INT8_OPTIONS).
# A float model's is not cached at all: MKL's packed weights cannot be pickled.
FROZEN_OPTIONS = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "fx_graph_cache": False,
    # The timings are inductor's business: no tables on stderr.
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}

# An int8 model's products get inductor's template alone. max_autotune times each kernel on its own,
# its weight hot in the caches, and there ATen's _weight_int8pack_mm wins some shapes (160m's
# 3072 -> 768); inside a decode step, where each weight comes from memory after all the others,
# the template alone made whole steps faster. Compiled steps alternating in one process
# (docs/performance.md): 160m 10.3 -> 9.1 ms, 14m 1.44 -> 1.31 ms, 70m the same within noise; with
# inductor and ATen both held to AVX2, 160m 16.6 -> 13.7 ms. With one choice there is nothing to
# time, so compiling takes half as long. Where the template has no int8 kernel (it has them for
# AVX2 and AVX-512), inductor finds no choice at all: decode then compiles with ATen's kernel
# allowed too (FROZEN_OPTIONS), and so does every later compile in this process. Its graphs are
# cached, keyed by the weights: a later start with the same weights compiled 70m in 16 s, not 39.
INT8_OPTIONS = {**FROZEN_OPTIONS, "max_autotune_gemm_backends": "CPP", "fx_graph_cache": True}
_int8_template_usable = True  # False once inductor had no choice for an int8 product (decode)


def choose_int8_decode_kernels(model: GPTNeoX, batch_size: int) -> float:
    """For an int8 model (quantize.py): choose the kernels of its decode products by timing whole
    decode steps of `batch_size` rows, once per machine (kept with matvec.py's other choices).
    Returns the seconds it took: 0 when the choice was already made (or there is none to make).

    Timed alone, one product at a time, the kernels rank differently from how they decode: in a
    step each weight comes back after all the others have streamed through the caches, with small
    operations in between. On the Intel machine of docs/performance.md the per-product choice
    (int8-pack for the layers' weights) decoded 160m 20-30% slower than int8-fbgemm everywhere.
    So whole assignments compete (fastest_assignment): the per-product choices, and each kernel for
    every product (but int8-dequant, which converts every weight at every step and stays where it
    wins alone)."""
    layers = [module for module in model.modules() if isinstance(module, Int8Linear)]
    device = model.gpt_neox.final_layer_norm.weight.device
    if not layers or batch_size > matvec.MAX_ROWS or model.shard_group is not None or device.type != "cpu":
        return 0.0
    dtype = model.gpt_neox.final_layer_norm.weight.dtype  # the activations'
    shapes = sorted({tuple(module.weight.shape) for module in layers})
    step_key = matvec.decode_step_key(dtype, shapes, batch_size)
    if step_key in matvec.load_choices():
        return 0.0
    keys = [matvec.int8_choice_key(dtype, shape, batch_size) for shape in shapes]
    kernels = [kernel for kernel in matvec.int8_candidates(batch_size) if kernel != "int8-dequant"]
    began = time.perf_counter()
    fastest_assignment(model, batch_size, keys, {kernel: dict.fromkeys(keys, kernel) for kernel in kernels}, step_key)
    choices = matvec.load_choices()
    for module in layers:
        key = matvec.int8_choice_key(dtype, module.weight.shape, batch_size)
        matvec.drop_unused_packs(module.weight, dtype, choices[key])
    matvec.save_choices()
    return time.perf_counter() - began


def choose_float_decode_kernels(model: GPTNeoX, batch_size: int) -> float:
    """For a float model on the CPU: the same choice as choose_int8_decode_kernels, between the
    per-product choices (matvec.linear), F.linear for every product, each batched product over row
    blocks (split-k) for every product whose rows it divides (F.linear for the others), and oneDNN's
    product for every product, once per machine, model shape and batch size. Timed one product at a
    time, the batched product won most products of 8 rows with the CPU held to AVX2
    (ATEN_CPU_CAPABILITY=avx2), yet F.linear everywhere decoded a batch of 8 on 160m 8% faster:
    F.linear, which transformers runs, is the floor no choice may fall below. On an AMD Zen 4 it
    went the other way: torch.mv won 160m's 768 x 3072 product alone, warm in the caches, and a
    split for every product decoded 160m 18% faster than those choices; there oneDNN's product
    everywhere decoded a batch of 8 on 160m 1.4x faster than a split everywhere
    (docs/performance.md). Returns the seconds it took: 0 when the choice was already made
    (or there is none to make)."""
    layers = [module for module in model.modules() if type(module) is torch.nn.Linear]
    if not layers or batch_size > matvec.MAX_ROWS or model.shard_group is not None:
        return 0.0
    weight = layers[0].weight
    if weight.device.type != "cpu":
        return 0.0
    shapes = sorted({tuple(module.weight.shape) for module in layers})
    step_key = matvec.float_step_key(weight.dtype, shapes, batch_size)
    if step_key in matvec.load_choices():
        return 0.0
    keys = {matvec.choice_key(weight.dtype, shape, batch_size): shape for shape in shapes}

    def everywhere(method: str) -> dict[str, str]:  # the method for every product it can compute
        return {key: method if method in matvec.candidates(batch_size, O) else "linear" for key, (O, _) in keys.items()}

    methods = [method for method in matvec.METHODS if method != "mv"]  # mv: one row only, F.linear's BLAS call
    began = time.perf_counter()
    fastest_assignment(model, batch_size, list(keys), {method: everywhere(method) for method in methods}, step_key)
    matvec.save_choices()
    return time.perf_counter() - began


def fastest_assignment(
    model: GPTNeoX, batch_size: int, keys: list[str], assignments: dict[str, dict[str, str]], step_key: str
) -> str:
    """Time whole decode steps of `batch_size` rows on a throwaway KV cache under each assignment of
    methods to the products' choice keys: the per-product choices (measured by the first step where
    missing), and each of `assignments` (name -> {key: method}). Each assignment runs 4 steps, best of
    3 rounds after a warm-up. The winner is left in matvec's choices, under step_key too (its name;
    not yet saved)."""
    device = model.gpt_neox.final_layer_norm.weight.device
    choices = matvec.load_choices()
    steps = 4
    kept = [block.attention.kv_cache for block in model.gpt_neox.layers]
    winner, variants = "per-product", {"per-product": {}}
    try:
        with torch.inference_mode():
            model.setup_kv_cache(batch_size, steps + 1)
            token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # [B, 1]
            forward(model, token, checked=True)  # the per-product choices, measured where missing
            variants["per-product"] = {key: choices[key] for key in keys}
            variants.update(assignments)
            best = dict.fromkeys(variants, float("inf"))
            for repeat in range(4):  # the first is a warm-up: packing, first calls
                for name, assignment in variants.items():
                    choices.update(assignment)
                    products = decode_products(model, batch_size)  # as generate's steps run them
                    start = time.perf_counter()
                    for pos in range(1, 1 + steps):
                        forward(model, token, start_pos=pos, checked=True, products=products)
                    if repeat:
                        best[name] = min(best[name], time.perf_counter() - start)
            winner = min(best, key=best.get)
    finally:  # an interrupted timing leaves the per-product choices, and the caches as they were
        choices.update(variants[winner])
        for block, cache in zip(model.gpt_neox.layers, kept, strict=True):
            block.attention.kv_cache = cache
    choices[step_key] = winner
    return winner


COMPILE_MODES = ("default", "max-autotune")


def compile_decode(model: GPTNeoX, batch_size: int = 1, mode: str = "default") -> float:
    """From now on, run the model's decode steps (one token per row, `decode`) through torch.compile;
    returns the seconds spent compiling them, done here rather than inside the first generation.

    What it buys: the ~15 small operations per layer around the products (layer norms, rotary,
    attention, GELU, residual adds) become a few fused loops, which matters most where decoding is
    bound by the cost per operation (pythia-14m), little where it is bound by streaming the weights.

    mode "default": each float product is the method measured fastest on this machine
    (matvec.method_when_compiled; chosen first, uncompiled, if it was not yet), a library call as
    uncompiled, and inductor keeps what it built in $TORCHINDUCTOR_CACHE_DIR (default:
    $NEOX_MINI_CACHE/inductor), so a later process with the same model shape, dtype and batch size
    compiles in a fraction of the first time. mode "max-autotune" (as torch.compile's), on the CPU: the
    weights are frozen into the compiled step (FROZEN_OPTIONS) and inductor builds and times its own
    kernel for each product, 1.1-1.25x faster fp32 decoding here (docs/performance.md), for more memory
    (a packed copy of the weights) and half a minute to two of compiling at every start: MKL's packed
    weights cannot be cached (off the CPU, it is the default mode). An int8 model on the CPU is always
    compiled that way: inductor's own int8 kernels are what make its compiled step fast. Its graphs are
    cached with their packed weights, keyed by a digest of the weights (FrozenWeightsKey): a later start
    with the same weights compiles in a fraction of the time, and each set of weights compiled adds its
    int8 bytes to the cache. Editing or replacing frozen weights later is seen by the next generation
    (prepare_decode), which compiles again.

    The warm-up compiles for `batch_size` rows; another batch size compiles once more when it first
    occurs, and so does a step that writes the cache's last slot (generate never does: the last
    token it samples is not fed back). Prefill is not compiled: its length changes with every
    prompt, and its time is in the products already."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if model.shard_group is not None:
        raise ValueError("compile_decode does not support tensor parallelism: its collectives run outside the compiler")
    use_our_inductor_cache()
    start = time.perf_counter()
    if model.compile_mode != mode:
        # Drop the other mode's graphs: a frozen step holds a packed copy of the weights (every
        # model's graphs go: the others compile again on their next step).
        torch._dynamo.reset_code(forward.__wrapped__.__code__)
    # The products' methods, measured uncompiled: the compiled step traces them (a float model's).
    choose_float_decode_kernels(model, batch_size)
    model.compiled_decode, model.compile_mode = True, mode
    drop_stale_step(model)  # compiled before, from weights edited since: the warm-up would reuse it
    device = model.gpt_neox.final_layer_norm.weight.device
    kept = [block.attention.kv_cache for block in model.gpt_neox.layers]
    # Under inference_mode, as generate runs: the graph's guards tell its tensors from plain ones.
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # inductor's own use of a deprecated torch API, nothing the user can act on
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # [B, 1]
            # A graph with the position and the cache length as variables, so no later generation
            # compiles again. generate passes each row's position (left padding shifts them), so
            # the warm-up does too.
            warm_up_steps(model, token)
    except BaseException:
        model.compiled_decode = False  # a failed compile leaves the model as it was
        raise
    finally:
        for block, cache in zip(model.gpt_neox.layers, kept, strict=True):
            block.attention.kv_cache = cache
    model.compiled_weights_stamp = weights_stamp(model) if compile_options(model) else None
    return time.perf_counter() - start


def warm_up_steps(model: GPTNeoX, token: torch.Tensor) -> None:
    """compile_decode's two steps, [B, 1] token ids: at position 2 in a cache of 5, then at 3 in 6.

    The first compiles the graph generations run, with the position and the cache length as
    variables from the start: start_pos is named to dynamo as dynamic, and so is the length of the
    cache buffers. Left to find out by itself, dynamo compiled a graph for the first position and
    length, which no generation runs, and another when both changed: one graph instead of two took
    a 70m int8 compile from 91 to 68 s (17 to 12 s from the cache), with the same logits, and halves
    an int8 model's entries in inductor's cache. The second step compiles only where that could not
    be done (an older torch without dynamic_sources): it makes both variables then. Positions from
    2: dynamo specializes a variable whose first value is 0 or 1."""
    for pos in (2, 3):
        model.setup_kv_cache(token.shape[0], pos + 3)
        for cache in filter(None, layer_kv_caches(model)):
            for buffer in cache:  # [B, nh, max_seq_len, hs]
                torch._dynamo.maybe_mark_dynamic(buffer, 2)
        with dynamic_position():
            decode(model, token, pos, position_ids=torch.full_like(token, pos))


def dynamic_position():
    """Dynamo told to treat forward's start_pos as a variable from its first call (where it can be)."""
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "dynamic_sources"):
        return contextlib.nullcontext()
    return config.patch(dynamic_sources="L['start_pos']")


@torch.inference_mode()
def decode(model: GPTNeoX, token: torch.Tensor, pos: int, **forward_kwargs) -> torch.Tensor:
    """One decode step, [B, 1] ids at sequence index pos -> logits [B, 1, V]: forward(..., checked=True),
    compiled when compile_decode has been called for this model: by the compiled object of the
    model's inductor options (compile_options, compiled_forward), which keeps its own graphs."""
    if not model.compiled_decode:
        return forward(model, token, start_pos=pos, checked=True, **forward_kwargs)
    forward_kwargs.pop("products", None)  # the compiled step traces the general path once
    # Fresh [B, 1] tensors: the compiled graph is guarded on strides, and a column of a [B, total]
    # tensor (generate's positions) has strides that change with every prompt length.
    token = token.clone(memory_format=torch.contiguous_format)
    position_ids = forward_kwargs.pop("position_ids", None)
    if position_ids is None:  # one graph, whether or not the caller gives positions
        position_ids = torch.full_like(token, pos)  # [B, 1]: forward's default for one token
    else:
        position_ids = position_ids.clone(memory_format=torch.contiguous_format)
    options = compile_options(model)
    try:
        with frozen_while_traced(model) if options.get("freezing") else contextlib.nullcontext():
            return compiled_forward(options)(
                model,
                token,
                start_pos=pos,
                checked=True,
                position_ids=position_ids,
                kv_caches=layer_kv_caches(model),
                **forward_kwargs,
            )
    except Exception as error:  # re-raised, but for the one case below
        if options is not INT8_OPTIONS or not no_choice_for_product(error):
            raise
    # A failed compile leaves nothing behind in dynamo: this call compiles again, with ATen's kernel.
    global _int8_template_usable
    _int8_template_usable = False
    return decode(model, token, pos, position_ids=position_ids, **forward_kwargs)


@contextlib.contextmanager
def frozen_while_traced(model: GPTNeoX):
    """inductor's `freezing` option on for a call of a compiled step with frozen weights: dynamo reads
    it when it traces (frozen weights are guarded by identity), which may happen at any step (a new
    batch size, new weights), before the options of compiled_forward apply. Set directly: ~9 us a
    step, where patching inductor's config with all of FROZEN_OPTIONS around each call cost ~50.
    And the model whose weights a compile in this call freezes, for the cache key (FrozenWeightsKey)."""
    import torch._inductor.config as inductor_config  # loaded already: compile_decode compiled a step

    kept = inductor_config.freezing
    inductor_config.freezing = True
    key = frozen_weights_key()
    key.model = model
    try:
        yield
    finally:
        inductor_config.freezing = kept
        key.model = key.digest = None  # computed again for the next compile: the weights may change


def compiled_forward(options: dict):
    """forward through torch.compile with inductor's `options`, one compiled object per set of
    options, made on first use (importing the compiler costs ~1 s). The options apply whenever it
    compiles (a step may compile again later: a new batch size, new weights); dynamo keeps each
    object's graphs apart."""
    key = tuple(sorted(options.items()))
    if key not in _compiled_forwards:
        # forward without its inference_mode decorator, which dynamo does not trace through; the
        # compiled step is called inside inference_mode all the same (decode).
        options = {**options, **vector_width()}
        # Each product's method is looked up once, while dynamo traces (marked in place).
        torch.compiler.assume_constant_result(matvec.method_when_compiled)
        if options.get("freezing") and options.get("fx_graph_cache"):
            options["post_grad_custom_post_pass"] = frozen_weights_key()  # the weights in the cache key
        _compiled_forwards[key] = torch.compile(forward.__wrapped__, options=options)
    return _compiled_forwards[key]


@functools.cache
def frozen_weights_key():
    """The one FrozenWeightsKey (made on first use: its base class loads the compiler)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class FrozenWeightsKey(CustomGraphPass):
        """A post-grad pass that changes nothing: inductor adds its uuid to the key of its graph cache,
        and the uuid is a digest of the weights a compile freezes (those of `model`, which
        frozen_while_traced sets around each call). Without it, the cache handed a graph compiled
        from one checkpoint's weights to another of the same shape. No model known: None, which
        tells inductor not to cache the graph."""

        model: GPTNeoX | None = None
        digest: str | None = None  # of model's weights, computed once per call

        def __call__(self, graph) -> None:
            return None

        def uuid(self) -> str | None:
            if self.model is not None and self.digest is None:
                self.digest = weights_digest(self.model)
            return self.digest

    return FrozenWeightsKey()


def weights_digest(model: GPTNeoX) -> str:
    """A digest of the names, dtypes, shapes and bytes of every parameter and buffer of model: what a
    compiled step with frozen weights is made from. Once per compile: 0.07 / 0.34 / 0.65 s for an int8
    14m / 70m / 160m, most of it embed_in, which stays in fp32."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {data.dtype} {tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def use_our_inductor_cache() -> None:
    """Point inductor's cache at $NEOX_MINI_CACHE/inductor, unless TORCHINDUCTOR_CACHE_DIR names a
    folder of the user's. Inductor writes its default folder into that variable the first time
    anything asks it where its cache is (importing transformers' models does), so its default
    counts as unnamed: otherwise whether our folder is used would depend on what was imported first."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    named = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if named is None or os.path.abspath(named) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")


def vector_width() -> dict:
    """The SIMD width inductor's C++ code is written for, stated as an option (cpp.simdlen) so that
    it is part of the key of inductor's cache of compiled graphs. Left unstated, the key missed it:
    a graph compiled for AVX-512 came back from the cache in a process with ATen's kernels held to
    AVX2 (ATEN_CPU_CAPABILITY=avx2) and decoded garbage, different at every run. Stated, each width
    compiles and keeps its own graph. The width is the one inductor would pick by itself."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return {"cpp.simdlen": isa.bit_width()} if isa else {}


def no_choice_for_product(error: BaseException) -> bool:
    """Whether inductor failed because a product had no kernel among its allowed backends."""
    from torch._inductor.select_algorithm import NoValidChoicesError

    while error is not None and not isinstance(error, NoValidChoicesError):
        error = error.__cause__ or error.__context__
    return error is not None


def compile_options(model: GPTNeoX) -> dict:
    """Inductor's options for model's compiled decode step: on the CPU, frozen weights for an int8
    model (INT8_OPTIONS) or in mode "max-autotune" (FROZEN_OPTIONS)."""
    if model.gpt_neox.final_layer_norm.weight.device.type != "cpu":
        return {}
    if model.quantization == "int8":
        return INT8_OPTIONS if _int8_template_usable else FROZEN_OPTIONS
    return FROZEN_OPTIONS if model.compile_mode == "max-autotune" else {}


def prepare_decode(model: GPTNeoX, batch_size: int) -> dict | None:
    """What a generation does before its decode steps: the kernels chosen (once per machine,
    choose_float_decode_kernels, choose_int8_decode_kernels), and a compiled step built from weights
    that have since been edited in place or replaced dropped. Its frozen copies of them are stale (an
    edit) or would stay in memory beside a new step (a replacement); it compiles again on the next
    step. Dropping clears every compiled decode step, other models' too: they compile again on their
    next call. Returns the products to pass to the uncompiled steps (decode_products), or None."""
    choose_float_decode_kernels(model, batch_size)
    choose_int8_decode_kernels(model, batch_size)
    drop_stale_step(model)
    return None if model.compiled_decode else decode_products(model, batch_size)


def drop_stale_step(model: GPTNeoX) -> None:
    """Drop the model's compiled step if its weights are frozen into it and have been edited in place
    or replaced since it was compiled (every model's steps go: see prepare_decode)."""
    if not (model.compiled_decode and compile_options(model)):
        return
    stamp = weights_stamp(model)
    if model.compiled_weights_stamp not in (None, stamp):
        torch._dynamo.reset_code(forward.__wrapped__.__code__)
    model.compiled_weights_stamp = stamp


def weights_stamp(model: GPTNeoX) -> int:
    """Changes when a parameter or buffer of model is edited in place (its version counter) or
    replaced (the tensor object). Inference tensors have no counter and can be edited only inside
    inference_mode: only replacing them counts. ~1.5 ms for 160m: once per generation, not per step."""
    tensors = [t for tensors in (model.parameters(), model.buffers()) for t in tensors]
    return hash(tuple((id(t), 0 if t.is_inference() else t._version) for t in tensors))
