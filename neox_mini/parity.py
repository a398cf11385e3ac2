"""Comparing neox_mini's activations with a reference, and the tolerances that apply.

The error measure everywhere is the *relative max error*: max |ours - ref| / max |ref| over a whole
tensor (one number per layer), which is insensitive to the scale of each layer's activations.

Below the comparison helpers is the parity tool behind `neox-mini parity`, in reading order:
inputs -> running both models -> statistics -> golden reference files -> comparing -> the report
-> `run_parity`, the whole check. transformers is imported only inside `load_transformers_model`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# One tolerance per dtype of *our* model, always measured against an fp32 reference, with the reason.
TOLERANCES = {
    # Same arithmetic as transformers' eager fp32 path, only summed in a different order (e.g. the
    # parallel residual adds attn + mlp + x in another order): differences are a few float32 ulps
    # (~1e-7 per op) and stay below 1e-5 after accumulating over layers.
    "float32": 1e-5,
    # fp16 keeps 11 significant bits (unit roundoff 4.9e-4) and every matmul, layer norm and residual
    # add rounds to that. Measured worst case over tests/test_parity.py's 11 models (14m/31m/70m
    # shapes and the small grid, any activation): 1.8e-3. Tolerance: ~2.5x that.
    "float16": 5e-3,
    # bf16 keeps 8 significant bits (unit roundoff 3.9e-3, 8x fp16's). Measured worst case on the
    # same models: 2.0e-2. Tolerance: 2x that.
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


# =============================================================================================
# The parity tool (`neox-mini parity`): run neox_mini and a reference on the same inputs and
# report, activation by activation, how far apart they are.
#
# Two kinds of reference:
#   * transformers' GPTNeoXForCausalLM on the same checkpoint folder (eager attention, fp32),
#     with activations captured by forward hooks on the modules whose names equal ours;
#   * a golden reference file (safetensors) written earlier by `--save-reference`, which needs
#     neither transformers nor the reference run to be repeated.
# =============================================================================================

EXIT_DIVERGED = 1  # ran fine, but some activation is over the tolerance
EXIT_ERROR = 2  # could not run the check at all (bad file, wrong model, missing package, ...)

REFERENCE_FORMAT = "neox_mini.parity-reference"
REFERENCE_VERSION = "1"

# Fixed inputs: a few real texts of different kinds (prose, code, numbers and punctuation,
# non-English text with multi-byte characters) tokenized with the model's own tokenizer, plus
# random ids, which reach embedding rows no short text touches.
DEFAULT_TEXTS = (
    "The Pythia suite consists of sixteen language models trained on public data in the same order, "
    "so that researchers can study how knowledge develops during training.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "On 14 July 1789, 954 people stormed the Bastille; by 3:30 p.m. it had fallen (cost: $0, or 0.00%).",
    "Zürich liegt am Zürichsee. 東京は日本の首都です。 Москва — столица России.",
)
RANDOM_SEQUENCES = 2  # how many sequences of random ids
RANDOM_LENGTH = 32  # tokens in each
RANDOM_SEED = 0
PYTHIA_TOKENIZER_IDS = 50277  # ids the GPT-NeoX-20B tokenizer can produce; rows above are padding

# What a reference file keeps (see `summarize`): the top-k logits of every position and the
# residual stream at a fixed subset of channels.
DEFAULT_TOP_K = 64
DEFAULT_CHANNELS = 64

SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")


class ParityError(ValueError):
    """The check cannot be run: a bad or mismatched reference file, a missing package, bad inputs."""


# ----------------------------------------------------------------------------- inputs


def activation_names(num_layers: int) -> list[str]:
    """The activations compared, in forward order (as `GPTNeoX(..., return_hidden_states=True)`)."""
    return (["gpt_neox.embed_in"] + [f"gpt_neox.layers.{i}" for i in range(num_layers)]
            + ["gpt_neox.final_layer_norm"])


def random_sequences(high: int, n: int = RANDOM_SEQUENCES, length: int = RANDOM_LENGTH,
                     seed: int = RANDOM_SEED) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, high, (length,), generator=generator) for _ in range(n)]


def build_inputs(vocab_size: int, tokenizer=None, texts=None) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """(id sequences, a description of each, notes) for a model with vocab_size embedding rows.

    texts: the prompts to use instead of DEFAULT_TEXTS (from `--prompts`); they need a tokenizer.
    """
    notes = []
    sequences, described = [], []
    if texts is not None and tokenizer is None:
        raise ParityError("--prompts needs the model's tokenizer.json, which was not found")
    if tokenizer is not None:
        for text in (DEFAULT_TEXTS if texts is None else texts):
            ids = tokenizer.encode(text)
            if not ids:
                raise ParityError(f"prompt {text!r} gives no tokens")
            if max(ids) >= vocab_size:
                if texts is not None:
                    raise ParityError(f"prompt {text!r} has token id {max(ids)}, but the model has only "
                                      f"{vocab_size} embedding rows")
                notes.append(f"text inputs skipped: the tokenizer's ids do not fit the {vocab_size}-row embedding")
                sequences, described = [], []
                break
            sequences.append(torch.tensor(ids, dtype=torch.long))
            described.append(f"text ({len(ids)} tokens): {text[:40]!r}")
    else:
        notes.append("no tokenizer.json next to the weights: random ids only")
    # Random ids stay below the tokenizer's size: Pythia's padding rows (>= 50277) were never trained.
    high = min(vocab_size, tokenizer.vocab_size if tokenizer is not None else PYTHIA_TOKENIZER_IDS)
    for i, ids in enumerate(random_sequences(high)):
        sequences.append(ids)
        described.append(f"random ids #{i + 1} ({len(ids)} tokens, seed {RANDOM_SEED}, ids < {high})")
    return sequences, described, notes


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ParityError(f"prompts file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise ParityError(f"prompts file {path} is not UTF-8 text: {e}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ParityError(f"prompts file {path} has no non-empty lines")
    return prompts


# ----------------------------------------------------------------------------- running the models


@torch.no_grad()
def neox_mini_outputs(model, sequences: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run each sequence alone (batch 1: no padding to get wrong) and concatenate over tokens:
    (logits [N, V], {activation name: [N, C]}), N = total tokens."""
    device = model.embed_out.weight.device
    logits, acts = [], {}
    for ids in sequences:
        out, hidden = model(ids[None].to(device), return_hidden_states=True)  # [1, T, V], each [1, T, C]
        logits.append(out[0].cpu())
        for name, h in hidden.items():
            acts.setdefault(name, []).append(h[0].cpu())
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in acts.items()}


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_transformers_model(folder: str | Path, dtype: torch.dtype, device: str):
    """transformers' GPTNeoXForCausalLM from a local checkpoint folder, eager attention (the plain
    softmax(QK^T)V that our model writes out), in the given dtype. transformers is imported here
    only: it is an optional extra, never needed by the model itself."""
    try:
        import transformers
        from transformers import GPTNeoXForCausalLM
    except ImportError:
        raise ParityError("--against transformers needs the transformers package: "
                          "pip install transformers (or pip install 'neox_mini[parity]'); "
                          "without it, compare with --reference FILE") from None
    # transformers renamed torch_dtype= to dtype= in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = GPTNeoXForCausalLM.from_pretrained(str(folder), attn_implementation="eager",
                                               **{dtype_kwarg: dtype})
    return model.to(device).eval()


@torch.no_grad()
def transformers_outputs(hf_model, sequences: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same as neox_mini_outputs, for transformers: the activations are captured by forward hooks
    on the modules named like ours (transformers' own parameter names), so the comparison does not
    depend on what a transformers version returns as `hidden_states`."""
    names = activation_names(len(hf_model.gpt_neox.layers))
    modules = dict(hf_model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            # Decoder layers return a tuple in some transformers versions, a tensor in others.
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    device = next(hf_model.parameters()).device
    logits, acts = [], {name: [] for name in names}
    try:
        for ids in sequences:
            captured.clear()
            logits.append(hf_model(ids[None].to(device)).logits[0].cpu())  # [T, V]
            for name in names:
                acts[name].append(captured[name][0].cpu())  # [T, C]
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in acts.items()}


# ----------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    """How far one activation of ours is from the reference."""
    name: str  # "gpt_neox.layers.3", "logits", ...
    max_abs: float  # max |ours - ref|
    rel_error: float  # max |ours - ref| / max |ref|: the number the tolerance applies to
    nmse: float  # sum (ours - ref)^2 / sum ref^2
    where: tuple[int, ...]  # (token, channel) of the largest absolute difference
    compared: str = "all values"  # what was compared (a reference file keeps a subset)

    def over(self, tolerance: float) -> bool:
        # `not <=` so that a NaN counts as over the tolerance.
        return not self.rel_error <= tolerance


def tensor_stat(name: str, ours: torch.Tensor, ref: torch.Tensor, compared: str = "all values") -> Stat:
    d = difference(name, ours, ref)
    ref64 = ref.detach().double()
    err2 = (ours.detach().double() - ref64).square().sum().item()
    ref2 = ref64.square().sum().item()
    nmse = err2 / ref2 if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    return Stat(name, d.abs_error, d.rel_error, nmse, d.where, compared)


def next_token_stats(ours_logits: torch.Tensor, ref_values: torch.Tensor, ref_indices: torch.Tensor,
                     ref_lse: torch.Tensor) -> dict[str, float]:
    """KL(ref || ours) of the next-token distributions and top-1 / top-5 agreement, from our full
    logits [N, V] and the reference's k largest logits per position (values and vocabulary indices,
    [N, k], sorted descending) plus its logsumexp [N].

    With k = V this is the exact KL. With k < V the remaining V - k tokens are lumped into one
    outcome: that is the exact KL of the coarser distributions, a lower bound on the full KL (which
    is why a reference file stores enough of the head, k = 64 by default, to hold almost all mass).
    """
    ours = ours_logits.detach().double()  # [N, V]
    V, k = ours.shape[-1], ref_indices.shape[-1]
    idx = ref_indices.long()
    ref_logp = ref_values.double() - ref_lse.double()[:, None]  # [N, k]
    ours_logp = ours.gather(-1, idx) - ours.logsumexp(-1, keepdim=True)  # [N, k]
    kl = (ref_logp.exp() * (ref_logp - ours_logp)).sum(-1)  # [N]
    if k < V:
        ref_rest = (-torch.expm1(ref_logp.logsumexp(-1))).clamp(min=0.0)  # [N]: mass outside the top k
        ours_rest = (-torch.expm1(ours_logp.logsumexp(-1))).clamp(min=1e-300)  # [N]
        kl = kl + torch.where(ref_rest > 0, ref_rest * (ref_rest.clamp(min=1e-300).log() - ours_rest.log()),
                              torch.zeros_like(kl))
    kl = kl.clamp(min=0.0)  # KL >= 0; tiny negatives are rounding
    top1 = (ours.argmax(-1) == idx[:, 0]).double().mean().item()
    n5 = min(5, k, V)
    ours5, ref5 = ours.topk(n5, dim=-1).indices, idx[:, :n5]  # each [N, 5]
    overlap = (ours5[:, :, None] == ref5[:, None, :]).any(-1).double().sum(-1) / n5  # [N]
    return {"kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "top1_agreement": top1,
            "top5_agreement": overlap.mean().item(), "positions": int(ours.shape[0])}


# ----------------------------------------------------------------------------- golden reference files
#
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


def summarize(logits: torch.Tensor, acts: dict[str, torch.Tensor], top_k: int = DEFAULT_TOP_K,
              channels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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


def save_reference(path: str | Path, sequences: list[torch.Tensor], logits: torch.Tensor,
                   acts: dict[str, torch.Tensor], metadata: dict[str, str], top_k: int = DEFAULT_TOP_K,
                   max_channels: int = DEFAULT_CHANNELS) -> Path:
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
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # never leave a half-written reference under the final name
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
        raise ParityError(f"reference file {path} ({path.stat().st_size:,} bytes) is not a readable "
                          f"safetensors file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def bad(why: str) -> ParityError:
        return ParityError(f"reference file {path} is not a valid parity reference: {why}")

    if metadata.get("format") != REFERENCE_FORMAT:
        raise bad(f"metadata 'format' is {metadata.get('format')!r}, expected {REFERENCE_FORMAT!r} "
                  f"(write one with `neox-mini parity --save-reference`)")
    if metadata.get("format_version") != REFERENCE_VERSION:
        raise bad(f"format_version {metadata.get('format_version')!r}; this neox_mini reads {REFERENCE_VERSION!r}")
    try:
        names = json.loads(metadata["activations"])
        config = json.loads(metadata["config"])
        shape = {f: int(config[f]) for f in SHAPE_FIELDS}
    except (KeyError, ValueError, TypeError) as e:
        raise bad(f"metadata 'activations' / 'config' missing or malformed ({e})") from None
    if names != activation_names(shape["num_layers"]):
        raise bad(f"activations {names} do not match num_layers={shape['num_layers']}")

    required = ["input_ids", "sequence_lengths", "logits.top_values", "logits.top_indices",
                "logits.logsumexp", "channels"] + [f"{n}.{part}" for n in names for part in ("sample", "norm")]
    missing = [r for r in required if r not in tensors]
    if missing:
        raise bad(f"missing tensor(s) {', '.join(missing)}")
    ids, lengths = tensors["input_ids"], tensors["sequence_lengths"]
    if ids.dim() != 1 or lengths.dim() != 1 or ids.dtype != torch.int64 or (lengths <= 0).any() \
            or int(lengths.sum()) != ids.numel():
        raise bad(f"input_ids ({list(ids.shape)}) and sequence_lengths {lengths.tolist()} do not agree")
    if tensors_sha256({"input_ids": ids}) != metadata.get("input_ids_sha256"):
        raise bad("input_ids do not match the checksum recorded when the file was written "
                  "(the file was modified or is corrupt)")
    if tensors_sha256(tensors) != metadata.get("tensors_sha256"):
        raise bad("tensor data does not match the checksum recorded when the file was written "
                  "(the file was modified or is corrupt)")
    N, c = ids.numel(), tensors["channels"].numel()
    k = tensors["logits.top_values"].shape[-1] if tensors["logits.top_values"].dim() == 2 else -1
    expected = {"logits.top_values": [N, k], "logits.top_indices": [N, k], "logits.logsumexp": [N],
                **{f"{n}.sample": [N, c] for n in names}, **{f"{n}.norm": [N] for n in names}}
    wrong = [f"{n} {list(tensors[n].shape)} (expected {s})" for n, s in expected.items()
             if list(tensors[n].shape) != s]
    if wrong or k < 1:
        raise bad("inconsistent shapes: " + "; ".join(wrong or ["no logits stored"]))
    return Reference(path, tensors, metadata, config, names)


def check_reference_fits(reference: Reference, config, sequences: list[torch.Tensor] | None = None) -> list[str]:
    """Refuse a reference made for a model of another shape, or on other inputs than asked for;
    return notes about configuration differences that do not change shapes (those are exactly
    what a parity check should then show as divergence)."""
    ours, theirs = config_shape(config), {f: int(reference.config[f]) for f in SHAPE_FIELDS}
    if ours != theirs:
        diff = ", ".join(f"{f} {theirs[f]} (reference) vs {ours[f]} (this model)"
                         for f in SHAPE_FIELDS if ours[f] != theirs[f])
        raise ParityError(f"reference file {reference.path} was made from a model of another shape: {diff}")
    ids = reference.tensors["input_ids"]
    if int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size:
        raise ParityError(f"reference file {reference.path} has token ids up to {int(ids.max())}, outside this "
                          f"model's 0..{config.vocab_size - 1}")
    top = reference.tensors["logits.top_indices"]
    if int(top.min()) < 0 or int(top.max()) >= config.vocab_size:
        raise ParityError(f"reference file {reference.path} has logit indices outside 0..{config.vocab_size - 1}")
    channels = reference.tensors["channels"]
    if int(channels.min()) < 0 or int(channels.max()) >= config.hidden_size:
        raise ParityError(f"reference file {reference.path} has channel indices outside 0..{config.hidden_size - 1}")
    if sequences is not None:
        ref_seqs = reference.sequences
        if len(ref_seqs) != len(sequences) or any(not torch.equal(a, b) for a, b in zip(ref_seqs, sequences)):
            raise ParityError(f"the inputs asked for ({len(sequences)} sequences, {sum(map(len, sequences))} "
                              f"tokens) are not the ids stored in reference file {reference.path} "
                              f"({len(ref_seqs)} sequences, {ids.numel()} tokens)")
    notes = []
    for field, theirs_value in reference.config.items():
        ours_value = getattr(config, field, None)
        if field not in SHAPE_FIELDS and field not in ("dtype", "name") and ours_value != theirs_value:
            notes.append(f"config differs from the reference's: {field} = {ours_value!r} here, "
                         f"{theirs_value!r} there")
    return notes


# ----------------------------------------------------------------------------- comparing


def compare_full(ours: tuple[torch.Tensor, dict], ref: tuple[torch.Tensor, dict]) -> tuple[list[Stat], dict]:
    """Every activation and the logits, compared in full; next-token statistics exact."""
    (our_logits, our_acts), (ref_logits, ref_acts) = ours, ref
    stats = [tensor_stat(name, our_acts[name], ref_acts[name]) for name in ref_acts]
    stats.append(tensor_stat("logits", our_logits, ref_logits))
    ref64 = ref_logits.double()
    order = ref64.sort(dim=-1, descending=True)  # k = V: the exact KL
    return stats, next_token_stats(our_logits, order.values, order.indices, ref64.logsumexp(-1))


def compare_summary(ours: tuple[torch.Tensor, dict], reference: Reference) -> tuple[list[Stat], dict]:
    """Our full outputs against what a reference file keeps (see the comment above summarize)."""
    our_logits, our_acts = ours
    t = reference.tensors
    ours_sum = summarize(our_logits, our_acts, channels=t["channels"])  # our values at the same channels
    c, C = t["channels"].numel(), next(iter(our_acts.values())).shape[-1]
    what = "all channels" if c == C else f"{c} of {C} channels + norm"
    stats = []
    for name in reference.names:
        s = tensor_stat(name, ours_sum[f"{name}.sample"], t[f"{name}.sample"], what)
        if c < C:  # the norm of the whole vector catches a change in the channels not stored
            norm = difference(name, ours_sum[f"{name}.norm"], t[f"{name}.norm"])
            s.rel_error = max(s.rel_error, norm.rel_error)
        stats.append(s)
    # Logits: ours at the reference's top-k token ids, plus the logsumexp as one more column.
    idx = t["logits.top_indices"].long()  # [N, k]
    ours_top = torch.cat([our_logits.double().gather(-1, idx),
                          our_logits.double().logsumexp(-1, keepdim=True)], dim=-1)  # [N, k+1]
    ref_top = torch.cat([t["logits.top_values"].double(), t["logits.logsumexp"].double()[:, None]], dim=-1)
    stats.append(tensor_stat("logits", ours_top, ref_top, f"top-{idx.shape[-1]} + logsumexp"))
    return stats, next_token_stats(our_logits, t["logits.top_values"], idx, t["logits.logsumexp"])


# ----------------------------------------------------------------------------- the report


@dataclass
class ParityReport:
    model: str  # what was checked (folder, or repo id @ revision)
    dtype: str  # our dtype
    gelu: str
    reference: str  # what it was compared with
    tolerance: float
    inputs: list[str]
    num_tokens: int
    stats: list[Stat]  # embed_in, layers..., final_layer_norm, logits
    next_token: dict[str, float]
    notes: list[str]
    provenance: dict
    saved_reference: str | None = None

    @property
    def first_divergence(self) -> Stat | None:
        return next((s for s in self.stats if s.over(self.tolerance)), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None

    def to_dict(self) -> dict:
        first = self.first_divergence
        return {
            "passed": self.passed,
            "first_divergence": None if first is None else first.name,
            "model": self.model, "dtype": self.dtype, "gelu": self.gelu, "reference": self.reference,
            "tolerance": self.tolerance, "inputs": self.inputs, "num_tokens": self.num_tokens,
            "activations": [{"name": s.name, "max_abs": s.max_abs, "rel_error": s.rel_error, "nmse": s.nmse,
                             "where": list(s.where), "compared": s.compared,
                             "within_tolerance": not s.over(self.tolerance)} for s in self.stats],
            "next_token": self.next_token, "notes": self.notes, "provenance": self.provenance,
            "saved_reference": self.saved_reference,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format_table(self) -> str:
        lines = [f"model:     {self.model} ({self.dtype}, gelu {self.gelu})",
                 f"reference: {self.reference}",
                 f"inputs:    {len(self.inputs)} sequences, {self.num_tokens} tokens",
                 f"tolerance: relative max error <= {self.tolerance:g} ({self.dtype})", ""]
        width = max(len(s.name) for s in self.stats)
        lines.append(f"{'activation':<{width}}  {'max abs':>10}  {'rel error':>10}  {'NMSE':>10}  ok   compared")
        for s in self.stats:
            mark = "FAIL" if s.over(self.tolerance) else "ok"
            lines.append(f"{s.name:<{width}}  {s.max_abs:10.3e}  {s.rel_error:10.3e}  {s.nmse:10.3e}  "
                         f"{mark:<4} {s.compared}")
        nt = self.next_token
        lines += ["", f"next token ({nt['positions']} positions): KL(ref || ours) mean {nt['kl_mean']:.3e} "
                      f"max {nt['kl_max']:.3e} nats; top-1 agreement {100 * nt['top1_agreement']:.2f}%; "
                      f"top-5 agreement {100 * nt['top5_agreement']:.2f}%"]
        lines += [f"note: {n}" for n in self.notes]
        if self.saved_reference:
            lines.append(f"saved reference: {self.saved_reference}")
        first = self.first_divergence
        if first is None:
            lines.append(f"PASS: every activation within {self.tolerance:g}")
        else:
            lines.append(f"FAIL: first divergence at {first.name}: relative max error {first.rel_error:.3e} "
                         f"> {self.tolerance:g} (max abs diff {first.max_abs:.3e} at token/channel {list(first.where)})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole check


def load_neox_mini(model: str | Path, *, revision: str | None = None, dtype: str = "fp32",
                   gelu: str | None = None, device: str = "cpu"):
    from .model import GPTNeoX

    kwargs = {"dtype": dtype, "device": device, "gelu": gelu}
    if revision is not None:  # only Hub names have revisions; a plain folder loader may not take one
        kwargs["revision"] = revision
    return GPTNeoX.from_pretrained(model, **kwargs)


def load_tokenizer(folder: str | Path):
    from .tokenizer import Tokenizer

    try:
        return Tokenizer(folder)
    except FileNotFoundError:
        return None


def provenance_summary(provenance: dict | None) -> dict:
    """The identity of a loaded checkpoint: where it came from (Hub id, revision, commit) and what."""
    p = provenance or {}
    return {
        "repo_id": p.get("repo_id") or "",
        "revision": p.get("revision") or "",
        "commit_sha": p.get("commit_sha") or "",
        "path": p.get("path") or "",
    }


def reference_metadata(model, reference_dtype: torch.dtype, inputs: list[str], extra: dict | None = None) -> dict:
    from . import __version__

    return {
        **provenance_summary(model.provenance),
        "reference_impl": "transformers GPTNeoXForCausalLM (eager attention)",
        "reference_dtype": str(reference_dtype).removeprefix("torch."),
        "transformers_version": transformers_version(),
        "torch_version": torch.__version__,
        "neox_mini_version": __version__,
        "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": json.dumps(dataclasses.asdict(model.config)),
        "inputs": json.dumps(inputs),
        **(extra or {}),
    }


def run_parity(model: str | Path, *, revision: str | None = None, dtype: str = "fp32",
               against: str | None = "transformers", reference: str | Path | None = None,
               save_reference_to: str | Path | None = None, reference_dtype: str = "fp32",
               prompts: str | Path | None = None, texts: list[str] | None = None,
               gelu: str | None = None, device: str = "cpu",
               top_k: int = DEFAULT_TOP_K, max_channels: int = DEFAULT_CHANNELS,
               extra_metadata: dict | None = None) -> ParityReport:
    """Check neox_mini on `model` against transformers (`against`) or a reference file.

    The inputs are DEFAULT_TEXTS (or `texts`, or the lines of the `prompts` file) tokenized with the
    model's tokenizer, plus RANDOM_SEQUENCES of random ids; with a reference file, its stored ids.
    """
    from .checkpoint import to_torch_dtype

    if reference is not None and save_reference_to is not None:
        raise ParityError("--save-reference writes a reference from transformers; it cannot be combined "
                          "with --reference")
    if reference is None and against != "transformers":
        raise ParityError("nothing to compare with: use --against transformers or --reference FILE")
    if top_k < 5 or max_channels < 1:
        raise ParityError("--top-k must be at least 5 and --channels at least 1")
    ref_file = load_reference(reference) if reference is not None else None  # check the file first: cheap

    net = load_neox_mini(model, revision=revision, dtype=dtype, gelu=gelu, device=device)
    our_dtype = str(net.embed_out.weight.dtype).removeprefix("torch.")
    tolerance = TOLERANCES[our_dtype]
    folder = Path((net.provenance or {}).get("path") or model)
    prov = provenance_summary(net.provenance)
    name = str(model) + (f" @ {revision}" if revision else "")

    if prompts is not None:
        texts = read_prompts(prompts)
    if ref_file is not None:
        sequences = None
        if texts is not None:
            sequences, _, _ = build_inputs(net.config.vocab_size, load_tokenizer(folder), texts)
        notes = check_reference_fits(ref_file, net.config, sequences)
        sequences = ref_file.sequences
        described = json.loads(ref_file.metadata.get("inputs", "[]")) or [f"{len(sequences)} stored sequences"]
        ours = neox_mini_outputs(net, sequences)
        stats, next_token = compare_summary(ours, ref_file)
        m = ref_file.metadata
        made_from = m.get("repo_id") or m.get("path") or "?"
        if m.get("revision") or m.get("commit_sha"):
            made_from += f" @ {m.get('revision') or ''} {m.get('commit_sha') or ''}".rstrip()
        ref_text = (f"reference file {ref_file.path} ({m.get('reference_impl', '?')}, "
                    f"{m.get('reference_dtype', '?')}, transformers {m.get('transformers_version', '?')}, "
                    f"made {m.get('date', '?')} from {made_from})")
        saved = None
    else:
        ref_torch_dtype = to_torch_dtype(reference_dtype)
        hf = load_transformers_model(folder, ref_torch_dtype, device)
        sequences, described, notes = build_inputs(net.config.vocab_size, load_tokenizer(folder), texts)
        ours = neox_mini_outputs(net, sequences)
        theirs = transformers_outputs(hf, sequences)
        del hf
        stats, next_token = compare_full(ours, theirs)
        ref_text = (f"transformers {transformers_version()} GPTNeoXForCausalLM (eager attention, "
                    f"{str(ref_torch_dtype).removeprefix('torch.')}) on {folder}")
        saved = None
        if save_reference_to is not None:
            meta = reference_metadata(net, ref_torch_dtype, described, extra_metadata)
            # The reference records the checkpoint's own config (its GELU), not a --gelu override.
            meta["config"] = json.dumps({**json.loads(meta["config"]), "gelu": hf_gelu(folder)})
            saved = str(save_reference(save_reference_to, sequences, theirs[0], theirs[1], meta,
                                       top_k, max_channels))
    return ParityReport(model=name, dtype=our_dtype, gelu=net.config.gelu, reference=ref_text,
                        tolerance=tolerance, inputs=described, num_tokens=sum(len(s) for s in sequences),
                        stats=stats, next_token=next_token, notes=notes, provenance=prov,
                        saved_reference=saved)


def hf_gelu(folder: Path) -> str:
    from .config import NeoXConfig

    return NeoXConfig.from_hf(folder).gelu
