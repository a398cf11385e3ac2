"""Tensor parallelism: one model split over the ranks of a torch.distributed process group, each
rank holding and reading only its own slice of the weights.

    torchrun --nproc-per-node 2 -m neox_mini generate --model EleutherAI/pythia-6.9b "Hello"

    mesh = distributed.init_mesh()                      # under torchrun: gloo on CPU, NCCL on GPU
    model = distributed.from_pretrained("pythia-6.9b", mesh=mesh, dtype="bf16")
    generate(model, ...), score_text(model, ...)         # the same calls as for one process

The engine is PyTorch's own (`torch.distributed.tensor.parallel`): each split weight is a DTensor,
and `ColwiseParallel` / `RowwiseParallel` put the communication on the modules' forward. model.py
runs unchanged; only `Attention.num_heads` becomes this rank's share of the heads.

Why NeoX splits without any re-ordering of the weights:

    query_key_value  [3C, C]  column-parallel (rows / N). The fused output is laid out per head,
                              [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], so a block of 3C/N rows is a set
                              of whole heads: rank r computes heads r*nh/N .. (r+1)*nh/N - 1,
                              including their KV cache, and attention needs nothing from the others.
    attention.dense  [C, C]   row-parallel (columns / N) over the same heads: each rank's product is
                              a partial sum of the output; one all-reduce adds them (and the bias once).
    dense_h_to_4h    [F, C]   column-parallel: each rank has F/N hidden units (GELU is elementwise).
    dense_4h_to_h    [C, F]   row-parallel over those units: one all-reduce.
    embed_in         [V, C]   row-parallel over the vocabulary: a rank looks up the ids it holds,
                              zeros for the rest, and an all-reduce assembles the embeddings.
    embed_out        [V, C]   column-parallel over the vocabulary; the logits are all-gathered so
                              every rank samples the same token from the same numbers.
    layer norms, the biases of the row-parallel layers: replicated (a few KB per layer).

So a forward is 2 all-reduces per layer plus one for the embedding and one all-gather for the
logits. plan.py computes the memory per device of the same split from the config alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import find_weight_files, iter_bin, read_state_dict
from .errors import ConfigError
from .hub import resolve
from .loading import read_config, read_quantization, target_dtype, weights_provenance
from .model import GPTNeoX, RotaryEmbedding
from .plan import check_fits, split_dim


def world_size() -> int:
    """How many processes torchrun started (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_mesh(device_type: str | None = None):
    """A 1-D DeviceMesh over every rank of the job (WORLD_SIZE, RANK and the rendezvous address come
    from torchrun): gloo on CPU, NCCL on CUDA, where rank r uses GPU LOCAL_RANK."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return init_device_mesh(device_type, (dist.get_world_size(),))


def parallel_styles(model: GPTNeoX) -> dict:
    """Module name -> ColwiseParallel / RowwiseParallel: the split in this file's docstring."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {
        "gpt_neox.embed_in": RowwiseParallel(input_layouts=Replicate()),
        "embed_out": ColwiseParallel(output_layouts=Replicate()),
    }
    for i in range(len(model.gpt_neox.layers)):
        styles[f"gpt_neox.layers.{i}.attention.query_key_value"] = ColwiseParallel()
        styles[f"gpt_neox.layers.{i}.attention.dense"] = RowwiseParallel()
        styles[f"gpt_neox.layers.{i}.mlp.dense_h_to_4h"] = ColwiseParallel()
        styles[f"gpt_neox.layers.{i}.mlp.dense_4h_to_h"] = RowwiseParallel()
    for style in styles.values():
        # The model is still on the meta device when it is parallelized: no rank has data to send,
        # each reads its own slice from the checkpoint afterwards (read_local_weights).
        style.src_data_rank = None
    return styles


def load(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str = "cpu",
    gelu: str | None = None,
) -> GPTNeoX:
    """The model for this process: split over the ranks when torchrun started several (the
    commands' way in: generate, score, parity), else loading.from_pretrained on `device`."""
    if world_size() == 1:
        from .loading import from_pretrained as load_whole

        return load_whole(name_or_path, revision, dtype=dtype, device=device, gelu=gelu)
    mesh = init_mesh(torch.device(device).type)
    return from_pretrained(name_or_path, revision, mesh=mesh, dtype=dtype, gelu=gelu)


def from_pretrained(
    name_or_path: str | Path,
    revision: str | None = None,
    *,
    mesh=None,
    dtype: torch.dtype | str | None = None,
    gelu: str | None = None,
) -> GPTNeoX:
    """loading.from_pretrained, split over the ranks of `mesh` (default: init_mesh()). Every rank
    calls it with the same arguments; each reads only its slice of the weights."""
    mesh = mesh if mesh is not None else init_mesh()
    resolved = resolve(name_or_path, revision)
    return load_folder(resolved.path, mesh=mesh, dtype=dtype, gelu=gelu, provenance=resolved.provenance)


def load_folder(
    path: str | Path,
    *,
    mesh,
    dtype: torch.dtype | str | None = None,
    gelu: str | None = None,
    provenance: dict | None = None,
) -> GPTNeoX:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    folder = Path(path)
    config = read_config(folder)
    if read_quantization(folder):
        raise ConfigError(f"{folder} holds int8 weights: tensor parallelism splits float checkpoints only")
    if gelu is not None:
        config = config.replace(gelu=gelu)
    n, r = mesh.size(), mesh.get_local_rank()
    device = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else "cpu"
    with torch.device("meta"):
        model = GPTNeoX(config)
    full_shapes = {name: t.shape for name, t in model.state_dict().items()}
    # The checkpoint checked whole against the config, exactly as one process checks it (names,
    # shapes, dtypes, shard index), from the headers and memory maps: no weight is read.
    checked, files_read = read_state_dict(folder, full_shapes)
    stored = checked["gpt_neox.embed_in.weight"].dtype
    del checked  # unmaps the files
    target = target_dtype(dtype, device, stored)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", n)) if str(device) == "cpu" else 1
    check_fits(config, target, n, str(device), ranks_here)  # also refuses an N that does not divide the heads

    parallelize_module(model, mesh, parallel_styles(model))
    local, bytes_read = read_local_weights(folder, full_shapes, r, n)
    state = {}
    for name, param in model.state_dict().items():
        tensor = local[name].to(device=device, dtype=target)
        if isinstance(param, DTensor):
            if tensor.shape != param.to_local().shape:  # the slice read must be the one the DTensor holds
                raise RuntimeError(f"{name}: read {list(tensor.shape)}, rank {r} holds {list(param.to_local().shape)}")
            tensor = DTensor.from_local(
                tensor, mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
            )
        state[name] = tensor
    model.load_state_dict(state, strict=True, assign=True)
    for block in model.gpt_neox.layers:
        block.attention.num_heads = config.num_heads // n  # this rank's heads
    model.shards, model.shard_group = n, mesh.get_group()
    model.rotary = RotaryEmbedding(config, device=device)
    model.provenance = {
        **weights_provenance(folder, files_read, stored, target),
        "tensor_parallel": {"rank": r, "ranks": n, "bytes_read": bytes_read},
        **(provenance or {}),
    }
    return model.eval()


def read_local_weights(
    folder: Path, full_shapes: dict[str, torch.Size], rank: int, ranks: int
) -> tuple[dict[str, torch.Tensor], int]:
    """This rank's slice of every weight ({name: tensor}) of a checkpoint already checked against
    the config (read_state_dict), and the bytes it copied out of the files. Each slice is copied
    out on its own, so only its pages are read.

    safetensors: safe_open(...).get_slice per tensor, opened and closed per tensor so that the
    mapped pages of one tensor leave this process's memory before the next is read.
    .bin: torch.load(mmap=True) per shard file, slices copied out, the file's mapping dropped."""
    kind, paths, weight_map = find_weight_files(folder)
    local: dict[str, torch.Tensor] = {}
    bytes_read = 0

    def piece(name: str, sliceable, shape: torch.Size):
        dim = split_dim(name)
        if dim is None:
            return sliceable[:]
        k = shape[dim] // ranks
        index = (slice(rank * k, (rank + 1) * k),) if dim == 0 else (slice(None), slice(rank * k, (rank + 1) * k))
        return sliceable[index]

    if kind == "safetensors":
        from safetensors import safe_open

        for name, shape in full_shapes.items():
            path = folder / weight_map[name] if weight_map else paths[0]
            with safe_open(str(path), framework="pt", device="cpu") as f:
                local[name] = piece(name, f.get_slice(name), shape).contiguous()
            bytes_read += local[name].numel() * local[name].element_size()
    else:
        for path in paths:
            for name, tensor in iter_bin(path):
                if name in full_shapes:
                    local[name] = piece(name, tensor, full_shapes[name]).clone(memory_format=torch.contiguous_format)
                    bytes_read += local[name].numel() * local[name].element_size()
    return local, bytes_read
