"""Comparing neox_mini's activations with a reference, and the parity tool behind `neox-mini parity`.

The error measure everywhere is the *relative max error*: max |ours - ref| / max |ref| over a whole
tensor (one number per activation), insensitive to the scale of each layer's activations. The
tolerance per dtype is stated once, in TOLERANCES, with its reason.

In reading order: the tolerances -> `Difference`, the one result type -> the tool: inputs ->
running both models -> next-token statistics -> comparing -> the report -> `run_parity`. The golden
reference file format is golden.py. transformers is imported only inside `load_transformers_model`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__, distributed
from .checkpoint import to_torch_dtype
from .config import NeoXConfig
from .errors import ParityError
from .golden import (
    DEFAULT_CHANNELS,
    DEFAULT_TOP_K,
    Reference,
    check_reference_fits,
    load_reference,
    save_reference,
    summarize,
)
from .model import hidden_state_names
from .pythia import TOKENIZER_VOCAB_SIZE
from .tokenizer import Tokenizer

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
    # Weight-only int8 (quantize.py), against the same model in fp32: each weight is rounded to one
    # of 255 levels of its row's range (error <= max|w| / 254), and depending on the kernel this
    # machine runs fastest (matvec.int8_linear) the activations are rounded too: to bf16, or to 255
    # levels per row (int8-dynamic). Measured worst case on random weights in the 14m, 70m and 160m
    # shapes, prefill and decode, 2 seeds, each kernel: 2.5e-2 with float activations, 3.9e-2 with
    # int8 ones; KL(fp32 || int8) per token <= 2.7e-4. Tolerance: 2x the worst. Real checkpoints
    # have outlier channels, where per-row scales lose more: measure them with quantization_error.
    "int8": 8e-2,
}


@dataclass
class Difference:
    """How far one activation of ours is from the reference."""

    name: str  # "gpt_neox.layers.3", "logits", ...
    max_abs: float  # max |ours - ref|
    rel_error: float  # max |ours - ref| / max |ref|: the number the tolerance applies to
    nmse: float  # sum (ours - ref)^2 / sum ref^2
    where: tuple[int, ...]  # index of the largest absolute difference ((token, channel) in the tool)
    compared: str = "all values"  # what was compared (a reference file keeps a subset)

    def over(self, tolerance: float) -> bool:
        # `not <=` so that a NaN counts as over the tolerance.
        return not self.rel_error <= tolerance

    def __str__(self) -> str:
        return (
            f"{self.name}: relative max error {self.rel_error:.3e} "
            f"(max abs diff {self.max_abs:.3e} at index {list(self.where)})"
        )


def difference(name: str, ours: torch.Tensor, ref: torch.Tensor, compared: str = "all values") -> Difference:
    """Compare one activation with its reference (any shape, the same for both)."""
    if ours.shape != ref.shape:
        raise ValueError(f"{name}: shape {list(ours.shape)} vs reference {list(ref.shape)}")
    ours64, ref64 = ours.detach().double(), ref.detach().double()
    diff = (ours64 - ref64).abs()
    where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    scale = ref64.abs().max().item()
    max_abs = diff.max().item()
    err2, ref2 = diff.square().sum().item(), ref64.square().sum().item()
    nmse = err2 / ref2 if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    return Difference(name, max_abs, max_abs / (scale if scale > 0 else 1.0), nmse, where, compared)


def quantization_error(reference: torch.Tensor, quantized: torch.Tensor) -> dict[str, float]:
    """How far a quantized model's logits are from the float model's, both [..., V]: the relative max
    error (what TOLERANCES["int8"] applies to), the mean and max per-token KL(reference || quantized)
    in nats, and how often both pick the same top-1 token."""
    ref, q = torch.log_softmax(reference.double(), -1), torch.log_softmax(quantized.double(), -1)
    kl = (ref.exp() * (ref - q)).sum(-1)
    return {
        "rel_error": difference("logits", quantized, reference).rel_error,
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "top1_agreement": (reference.argmax(-1) == quantized.argmax(-1)).double().mean().item(),
    }


def first_divergence(
    ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tolerance: float
) -> tuple[Difference | None, list[Difference]]:
    """Compare activations in the reference's order; return (the first one over tolerance or
    None, all differences)."""
    diffs = [difference(name, ours[name], ref[name]) for name in ref]
    return next((d for d in diffs if d.over(tolerance)), None), diffs


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


# ----------------------------------------------------------------------------- inputs


def random_sequences(
    high: int, n: int = RANDOM_SEQUENCES, length: int = RANDOM_LENGTH, seed: int = RANDOM_SEED
) -> list[torch.Tensor]:
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
        for text in DEFAULT_TEXTS if texts is None else texts:
            ids = tokenizer.encode(text)
            if not ids:
                raise ParityError(f"prompt {text!r} gives no tokens")
            if max(ids) >= vocab_size:
                if texts is not None:
                    raise ParityError(
                        f"prompt {text!r} has token id {max(ids)}, but the model has only {vocab_size} embedding rows"
                    )
                notes.append(f"text inputs skipped: the tokenizer's ids do not fit the {vocab_size}-row embedding")
                sequences, described = [], []
                break
            sequences.append(torch.tensor(ids, dtype=torch.long))
            described.append(f"text ({len(ids)} tokens): {text[:40]!r}")
    else:
        notes.append("no tokenizer.json next to the weights: random ids only")
    # Random ids stay below the tokenizer's size: Pythia's padding rows (>= 50277) were never trained.
    high = min(vocab_size, tokenizer.vocab_size if tokenizer is not None else TOKENIZER_VOCAB_SIZE)
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
        raise ParityError(
            "--against transformers needs the transformers package: "
            "pip install transformers (or pip install 'neox_mini[parity]'); "
            "without it, compare with --reference FILE"
        ) from None
    # transformers renamed torch_dtype= to dtype= in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = GPTNeoXForCausalLM.from_pretrained(str(folder), attn_implementation="eager", **{dtype_kwarg: dtype})
    return model.to(device).eval()


@torch.no_grad()
def transformers_activations(
    hf_model, input_ids: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits [B, T, V], {name: [B, T, C]}) of transformers' GPTNeoXForCausalLM on input_ids, the
    activations named as in our `return_hidden_states`. They are captured by forward hooks on the
    modules named like ours (transformers' own parameter names), so the comparison does not depend
    on what a transformers version returns as `hidden_states`. kwargs go to the model's forward."""
    names = hidden_state_names(len(hf_model.gpt_neox.layers))
    modules = dict(hf_model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            # Decoder layers return a tuple in some transformers versions, a tensor in others.
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        logits = hf_model(input_ids, **kwargs).logits  # [B, T, V]
    finally:
        for handle in handles:
            handle.remove()
    return logits, {name: captured[name] for name in names}


def transformers_outputs(hf_model, sequences: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same as neox_mini_outputs, for transformers (see transformers_activations)."""
    device = next(hf_model.parameters()).device
    logits, acts = [], {}
    for ids in sequences:
        out, hidden = transformers_activations(hf_model, ids[None].to(device))  # [1, T, V], each [1, T, C]
        logits.append(out[0].cpu())
        for name, h in hidden.items():
            acts.setdefault(name, []).append(h[0].cpu())
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in acts.items()}


# ----------------------------------------------------------------------------- next-token statistics


def next_token_stats(
    ours_logits: torch.Tensor, ref_values: torch.Tensor, ref_indices: torch.Tensor, ref_lse: torch.Tensor
) -> dict[str, float]:
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
        kl = kl + torch.where(
            ref_rest > 0, ref_rest * (ref_rest.clamp(min=1e-300).log() - ours_rest.log()), torch.zeros_like(kl)
        )
    kl = kl.clamp(min=0.0)  # KL >= 0; tiny negatives are rounding
    top1 = (ours.argmax(-1) == idx[:, 0]).double().mean().item()
    n5 = min(5, k, V)
    ours5, ref5 = ours.topk(n5, dim=-1).indices, idx[:, :n5]  # each [N, 5]
    overlap = (ours5[:, :, None] == ref5[:, None, :]).any(-1).double().sum(-1) / n5  # [N]
    return {
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
        "top1_agreement": top1,
        "top5_agreement": overlap.mean().item(),
        "positions": int(ours.shape[0]),
    }


# ----------------------------------------------------------------------------- comparing


def compare_full(ours: tuple[torch.Tensor, dict], ref: tuple[torch.Tensor, dict]) -> tuple[list[Difference], dict]:
    """Every activation and the logits, compared in full; next-token statistics exact."""
    (our_logits, our_acts), (ref_logits, ref_acts) = ours, ref
    stats = [difference(name, our_acts[name], ref_acts[name]) for name in ref_acts]
    stats.append(difference("logits", our_logits, ref_logits))
    ref64 = ref_logits.double()
    order = ref64.sort(dim=-1, descending=True)  # k = V: the exact KL
    return stats, next_token_stats(our_logits, order.values, order.indices, ref64.logsumexp(-1))


def compare_summary(ours: tuple[torch.Tensor, dict], reference: Reference) -> tuple[list[Difference], dict]:
    """Our full outputs against what a reference file keeps (see the comment above summarize)."""
    our_logits, our_acts = ours
    t = reference.tensors
    ours_sum = summarize(our_logits, our_acts, channels=t["channels"])  # our values at the same channels
    c, C = t["channels"].numel(), next(iter(our_acts.values())).shape[-1]
    what = "all channels" if c == C else f"{c} of {C} channels + norm"
    stats = []
    for name in reference.names:
        s = difference(name, ours_sum[f"{name}.sample"], t[f"{name}.sample"], what)
        if c < C:  # the norm of the whole vector catches a change in the channels not stored
            norm = difference(name, ours_sum[f"{name}.norm"], t[f"{name}.norm"])
            s.rel_error = max(s.rel_error, norm.rel_error)
        stats.append(s)
    # Logits: ours at the reference's top-k token ids, plus the logsumexp as one more column.
    idx = t["logits.top_indices"].long()  # [N, k]
    ours_top = torch.cat(
        [our_logits.double().gather(-1, idx), our_logits.double().logsumexp(-1, keepdim=True)], dim=-1
    )  # [N, k+1]
    ref_top = torch.cat([t["logits.top_values"].double(), t["logits.logsumexp"].double()[:, None]], dim=-1)
    stats.append(difference("logits", ours_top, ref_top, f"top-{idx.shape[-1]} + logsumexp"))
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
    stats: list[Difference]  # embed_in, layers..., final_layer_norm, logits
    next_token: dict[str, float]
    notes: list[str]
    provenance: dict
    saved_reference: str | None = None

    @property
    def first_divergence(self) -> Difference | None:
        return next((s for s in self.stats if s.over(self.tolerance)), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None

    def to_dict(self) -> dict:
        first = self.first_divergence
        return {
            "passed": self.passed,
            "first_divergence": None if first is None else first.name,
            "model": self.model,
            "dtype": self.dtype,
            "gelu": self.gelu,
            "reference": self.reference,
            "tolerance": self.tolerance,
            "inputs": self.inputs,
            "num_tokens": self.num_tokens,
            "activations": [
                {
                    "name": s.name,
                    "max_abs": s.max_abs,
                    "rel_error": s.rel_error,
                    "nmse": s.nmse,
                    "where": list(s.where),
                    "compared": s.compared,
                    "within_tolerance": not s.over(self.tolerance),
                }
                for s in self.stats
            ],
            "next_token": self.next_token,
            "notes": self.notes,
            "provenance": self.provenance,
            "saved_reference": self.saved_reference,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def format_table(self) -> str:
        lines = [
            f"model:     {self.model} ({self.dtype}, gelu {self.gelu})",
            f"reference: {self.reference}",
            f"inputs:    {len(self.inputs)} sequences, {self.num_tokens} tokens",
            f"tolerance: relative max error <= {self.tolerance:g} ({self.dtype})",
            "",
        ]
        width = max(len(s.name) for s in self.stats)
        lines.append(f"{'activation':<{width}}  {'max abs':>10}  {'rel error':>10}  {'NMSE':>10}  ok   compared")
        for s in self.stats:
            mark = "FAIL" if s.over(self.tolerance) else "ok"
            lines.append(
                f"{s.name:<{width}}  {s.max_abs:10.3e}  {s.rel_error:10.3e}  {s.nmse:10.3e}  {mark:<4} {s.compared}"
            )
        nt = self.next_token
        lines += [
            "",
            f"next token ({nt['positions']} positions): KL(ref || ours) mean {nt['kl_mean']:.3e} "
            f"max {nt['kl_max']:.3e} nats; top-1 agreement {100 * nt['top1_agreement']:.2f}%; "
            f"top-5 agreement {100 * nt['top5_agreement']:.2f}%",
        ]
        lines += [f"note: {n}" for n in self.notes]
        if self.saved_reference:
            lines.append(f"saved reference: {self.saved_reference}")
        first = self.first_divergence
        if first is None:
            lines.append(f"PASS: every activation within {self.tolerance:g}")
        else:
            lines.append(
                f"FAIL: first divergence at {first.name}: relative max error {first.rel_error:.3e} "
                f"> {self.tolerance:g} (max abs diff {first.max_abs:.3e} at token/channel {list(first.where)})"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole check


def load_tokenizer(folder: str | Path) -> Tokenizer | None:
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
    return {
        **provenance_summary(model.provenance),
        "reference_impl": "transformers GPTNeoXForCausalLM (eager attention)",
        "reference_dtype": str(reference_dtype).removeprefix("torch."),
        "transformers_version": transformers_version(),
        "torch_version": torch.__version__,
        "neox_mini_version": __version__,
        "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": json.dumps(dataclasses.asdict(model.config)),
        "inputs": json.dumps(inputs),
        **(extra or {}),
    }


def run_parity(
    model: str | Path,
    *,
    revision: str | None = None,
    dtype: str = "fp32",
    against: str | None = "transformers",
    reference: str | Path | None = None,
    save_reference_to: str | Path | None = None,
    reference_dtype: str = "fp32",
    prompts: str | Path | None = None,
    texts: list[str] | None = None,
    gelu: str | None = None,
    device: str = "cpu",
    top_k: int = DEFAULT_TOP_K,
    max_channels: int = DEFAULT_CHANNELS,
    extra_metadata: dict | None = None,
) -> ParityReport:
    """Check neox_mini on `model` against transformers (`against`) or a reference file.

    The inputs are DEFAULT_TEXTS (or `texts`, or the lines of the `prompts` file) tokenized with the
    model's tokenizer, plus RANDOM_SEQUENCES of random ids; with a reference file, its stored ids.
    """
    if reference is not None and save_reference_to is not None:
        raise ParityError(
            "--save-reference writes a reference from transformers; it cannot be combined with --reference"
        )
    if reference is None and against != "transformers":
        raise ParityError("nothing to compare with: use --against transformers or --reference FILE")
    if top_k < 5 or max_channels < 1:
        raise ParityError("--top-k must be at least 5 and --channels at least 1")
    ref_file = load_reference(reference) if reference is not None else None  # check the file first: cheap
    if save_reference_to is not None:  # and where the output goes, before the work
        check_output_file(Path(save_reference_to))

    net = distributed.load(model, revision=revision, dtype=dtype, gelu=gelu, device=device)  # split under torchrun
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
        ref_text = (
            f"reference file {ref_file.path} ({m.get('reference_impl', '?')}, "
            f"{m.get('reference_dtype', '?')}, transformers {m.get('transformers_version', '?')}, "
            f"made {m.get('date', '?')} from {made_from})"
        )
        saved = None
    else:
        ref_torch_dtype = to_torch_dtype(reference_dtype)
        hf = load_transformers_model(folder, ref_torch_dtype, device)
        sequences, described, notes = build_inputs(net.config.vocab_size, load_tokenizer(folder), texts)
        ours = neox_mini_outputs(net, sequences)
        theirs = transformers_outputs(hf, sequences)
        del hf
        stats, next_token = compare_full(ours, theirs)
        ref_text = (
            f"transformers {transformers_version()} GPTNeoXForCausalLM (eager attention, "
            f"{str(ref_torch_dtype).removeprefix('torch.')}) on {folder}"
        )
        saved = None
        if save_reference_to is not None:
            meta = reference_metadata(net, ref_torch_dtype, described, extra_metadata)
            # The reference records the checkpoint's own config (its GELU), not a --gelu override.
            meta["config"] = json.dumps({**json.loads(meta["config"]), "gelu": hf_gelu(folder)})
            saved = str(save_reference(save_reference_to, sequences, theirs[0], theirs[1], meta, top_k, max_channels))
    return ParityReport(
        model=name,
        dtype=our_dtype,
        gelu=net.config.gelu,
        reference=ref_text,
        tolerance=tolerance,
        inputs=described,
        num_tokens=sum(len(s) for s in sequences),
        stats=stats,
        next_token=next_token,
        notes=notes,
        provenance=prov,
        saved_reference=saved,
    )


def check_output_file(path: Path) -> None:
    """A reference file can be written at path (checked before any work: nothing is written yet)."""
    if path.is_dir():
        raise ParityError(f"--save-reference {path} is a folder: give the path of a .safetensors file to write")
    parent = next((p for p in path.parents if p.exists()), None)  # the folders below it are created
    if parent is None or not parent.is_dir():
        raise ParityError(f"--save-reference {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise ParityError(f"--save-reference {path}: {parent} is not writable")


def hf_gelu(folder: Path) -> str:
    return NeoXConfig.from_hf(folder).gelu
