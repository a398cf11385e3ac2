"""Golden reference files: a reference implementation's outputs on fixed inputs, saved once
(safetensors) so that neox_mini can be checked later with neither transformers nor the reference
run. Written by `neox-mini parity --save-reference` and scripts/make_reference.py; read by
`neox-mini parity --reference FILE`. Every problem with a file is a ParityError naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import NeoXConfig
from .errors import ParityError
from .model import hidden_state_names

REFERENCE_FORMAT = "neox_mini.parity-reference"
REFERENCE_VERSION = "1"

# What a reference file keeps (see `summarize`): the top-k logits of every position and the
# residual stream at a fixed subset of channels.
DEFAULT_TOP_K = 64
DEFAULT_CHANNELS = 64

SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(NeoXConfig))


# What is stored, and why. Full logits are N x V floats: 200 tokens x 50,304 rows = 40 MB in fp32,
# too big to commit and mostly noise (the far tail of the distribution). A reference file keeps,
# per position, the top-k logits (values and token ids, k = 64) and the logsumexp over all V,
# which is enough for: the max error of the logits that matter, the normaliser (any change
# anywhere in the vocabulary moves it), top-1/top-5 agreement, and the KL of the next-token
# distributions (exact on the top k, the rest lumped: see next_token_stats).
# For every activation (embeddings, each layer's residual stream, the final layer norm) it keeps
# a fixed subset of channels at every position plus the L2 norm of the whole vector: the subset is
# compared value by value with the same relative max error as the full tensors, and the norm sees
# a change in channels outside the subset. Models with at most 64 channels are stored whole.


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of named tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def channel_subset(hidden_size: int, max_channels: int = DEFAULT_CHANNELS) -> torch.Tensor:
    """Evenly spaced channels 0 .. C-1 (all of them when C <= max_channels)."""
    if hidden_size <= max_channels:
        return torch.arange(hidden_size)
    return torch.linspace(0, hidden_size - 1, max_channels).round().long()


def summarize(
    logits: torch.Tensor,
    acts: dict[str, torch.Tensor],
    top_k: int = DEFAULT_TOP_K,
    channels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors a reference file stores, from full logits [N, V] and activations {name: [N, C]}."""
    logits64 = logits.double()
    k = min(top_k, logits.shape[-1])
    top = logits.float().topk(k, dim=-1)  # values/indices [N, k], sorted descending
    C = next(iter(acts.values())).shape[-1]
    channels = channel_subset(C) if channels is None else channels
    out = {
        "logits.top_values": top.values.contiguous(),  # [N, k] fp32
        "logits.top_indices": top.indices.to(torch.int32).contiguous(),  # [N, k]
        "logits.logsumexp": logits64.logsumexp(-1).contiguous(),  # [N] fp64
        "channels": channels.to(torch.int64).contiguous(),  # [c]
    }
    for name, h in acts.items():
        out[f"{name}.sample"] = h.float()[:, channels].contiguous()  # [N, c]
        out[f"{name}.norm"] = h.double().norm(dim=-1).contiguous()  # [N] fp64
    return out


def config_shape(config) -> dict:
    return {f: getattr(config, f) for f in SHAPE_FIELDS}


def save_reference(
    path: str | Path,
    sequences: list[torch.Tensor],
    logits: torch.Tensor,
    acts: dict[str, torch.Tensor],
    metadata: dict[str, str],
    top_k: int = DEFAULT_TOP_K,
    max_channels: int = DEFAULT_CHANNELS,
) -> Path:
    """Write a golden reference file (safetensors): inputs, summarized outputs, and metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    C = next(iter(acts.values())).shape[-1]
    tensors = {
        "input_ids": torch.cat(sequences).to(torch.int64).contiguous(),  # [N]
        "sequence_lengths": torch.tensor([len(s) for s in sequences], dtype=torch.int64),  # [S]
        **summarize(logits, acts, top_k, channel_subset(C, max_channels)),
    }
    meta = {
        "format": REFERENCE_FORMAT,
        "format_version": REFERENCE_VERSION,
        "activations": json.dumps(list(acts)),
        "input_ids_sha256": tensors_sha256({"input_ids": tensors["input_ids"]}),
        "tensors_sha256": tensors_sha256(tensors),
        **{k: str(v) for k, v in metadata.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)  # never leave a half-written reference under the final name
    finally:
        tmp.unlink(missing_ok=True)  # nor a temporary file, whatever happened
    return path


@dataclass
class Reference:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    config: dict  # the reference model's NeoXConfig fields
    names: list[str]  # activation names, forward order

    @property
    def sequences(self) -> list[torch.Tensor]:
        return list(self.tensors["input_ids"].split(self.tensors["sequence_lengths"].tolist()))


def load_reference(path: str | Path) -> Reference:
    """Read and check a reference file; every problem is a ParityError naming the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ParityError(f"reference file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated / garbage files
        raise ParityError(
            f"reference file {path} ({path.stat().st_size:,} bytes) is not a readable "
            f"safetensors file: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None

    def bad(why: str) -> ParityError:
        return ParityError(f"reference file {path} is not a valid parity reference: {why}")

    if metadata.get("format") != REFERENCE_FORMAT:
        raise bad(
            f"metadata 'format' is {metadata.get('format')!r}, expected {REFERENCE_FORMAT!r} "
            f"(write one with `neox-mini parity --save-reference`)"
        )
    if metadata.get("format_version") != REFERENCE_VERSION:
        raise bad(f"format_version {metadata.get('format_version')!r}; this neox_mini reads {REFERENCE_VERSION!r}")
    try:
        names = json.loads(metadata["activations"])
        config = json.loads(metadata["config"])
        shape = {f: int(config[f]) for f in SHAPE_FIELDS}
    except (KeyError, ValueError, TypeError) as e:
        raise bad(f"metadata 'activations' / 'config' missing or malformed ({e})") from None
    if names != hidden_state_names(shape["num_layers"]):
        raise bad(f"activations {names} do not match num_layers={shape['num_layers']}")

    required = [
        "input_ids",
        "sequence_lengths",
        "logits.top_values",
        "logits.top_indices",
        "logits.logsumexp",
        "channels",
    ] + [f"{n}.{part}" for n in names for part in ("sample", "norm")]
    missing = [r for r in required if r not in tensors]
    if missing:
        raise bad(f"missing tensor(s) {', '.join(missing)}")
    ids, lengths = tensors["input_ids"], tensors["sequence_lengths"]
    if (
        ids.dim() != 1
        or lengths.dim() != 1
        or ids.dtype != torch.int64
        or (lengths <= 0).any()
        or int(lengths.sum()) != ids.numel()
    ):
        raise bad(f"input_ids ({list(ids.shape)}) and sequence_lengths {lengths.tolist()} do not agree")
    if tensors_sha256({"input_ids": ids}) != metadata.get("input_ids_sha256"):
        raise bad(
            "input_ids do not match the checksum recorded when the file was written "
            "(the file was modified or is corrupt)"
        )
    if tensors_sha256(tensors) != metadata.get("tensors_sha256"):
        raise bad(
            "tensor data does not match the checksum recorded when the file was written "
            "(the file was modified or is corrupt)"
        )
    N, c = ids.numel(), tensors["channels"].numel()
    k = tensors["logits.top_values"].shape[-1] if tensors["logits.top_values"].dim() == 2 else -1
    expected = {
        "logits.top_values": [N, k],
        "logits.top_indices": [N, k],
        "logits.logsumexp": [N],
        **{f"{n}.sample": [N, c] for n in names},
        **{f"{n}.norm": [N] for n in names},
    }
    wrong = [f"{n} {list(tensors[n].shape)} (expected {s})" for n, s in expected.items() if list(tensors[n].shape) != s]
    if wrong or k < 1:
        raise bad("inconsistent shapes: " + "; ".join(wrong or ["no logits stored"]))
    return Reference(path, tensors, metadata, config, names)


def check_reference_fits(reference: Reference, config, sequences: list[torch.Tensor] | None = None) -> list[str]:
    """Refuse a reference made for a model of another shape, or on other inputs than asked for;
    return notes about configuration differences that do not change shapes (those are exactly
    what a parity check should then show as divergence)."""
    ours, theirs = config_shape(config), {f: int(reference.config[f]) for f in SHAPE_FIELDS}
    if ours != theirs:
        diff = ", ".join(
            f"{f} {theirs[f]} (reference) vs {ours[f]} (this model)" for f in SHAPE_FIELDS if ours[f] != theirs[f]
        )
        raise ParityError(f"reference file {reference.path} was made from a model of another shape: {diff}")
    ids = reference.tensors["input_ids"]
    if int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size:
        raise ParityError(
            f"reference file {reference.path} has token ids up to {int(ids.max())}, outside this "
            f"model's 0..{config.vocab_size - 1}"
        )
    top = reference.tensors["logits.top_indices"]
    if int(top.min()) < 0 or int(top.max()) >= config.vocab_size:
        raise ParityError(f"reference file {reference.path} has logit indices outside 0..{config.vocab_size - 1}")
    channels = reference.tensors["channels"]
    if int(channels.min()) < 0 or int(channels.max()) >= config.hidden_size:
        raise ParityError(f"reference file {reference.path} has channel indices outside 0..{config.hidden_size - 1}")
    if sequences is not None:
        ref_seqs = reference.sequences
        if len(ref_seqs) != len(sequences) or any(
            not torch.equal(a, b) for a, b in zip(ref_seqs, sequences, strict=True)
        ):
            raise ParityError(
                f"the inputs asked for ({len(sequences)} sequences, {sum(map(len, sequences))} "
                f"tokens) are not the ids stored in reference file {reference.path} "
                f"({len(ref_seqs)} sequences, {ids.numel()} tokens)"
            )
    notes = []
    for field, theirs_value in reference.config.items():
        ours_value = getattr(config, field, None)
        # Only architecture fields count: files written before the config held only architecture
        # also record the stored dtype and the table row name.
        if field in CONFIG_FIELDS and field not in SHAPE_FIELDS and ours_value != theirs_value:
            notes.append(f"config differs from the reference's: {field} = {ours_value!r} here, {theirs_value!r} there")
    return notes
