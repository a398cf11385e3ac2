"""Hook points: named places in the forward pass where an activation can be read or replaced.

model.py wraps each activation of interest in a HookPoint, an identity module (`q = self.hook_q(q)`);
nothing happens there unless a hook is attached. The names are TransformerLens' (`blocks.3.attn.
hook_pattern`, `blocks.3.hook_resid_post`, ...), so analysis code written for TransformerLens ports
by changing the import. Where each point sits in a block (Pythia's parallel residual):

      resid_pre ──────────────────────────────────────────────────────────(+)── resid_post
          │                                                                 ▲   ▲
          ├── ln1 ─ q,k,v ─ rot_q,rot_k ─ attn_scores ─ pattern ─ z ─ dense ┘   │   attn_out
          │     (scale, normalized)                                             │
          └── ln2 ─ dense_h_to_4h ─ pre ─ GELU ─ post ─ dense_4h_to_h ──────────┘   mlp_out
                (scale, normalized)

In the parallel residual both branches read resid_pre, so there is no `hook_resid_mid`; models
with the sequential residual (attention, then the MLP on its output) have one, between the two.

Every value is the raw model's: nothing is folded or centred (see transforms.py for that).
This module imports nothing else of the package: it works on any module tree holding HookPoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]

# Module paths of the checkpoint layout -> TransformerLens' names for the same places.
TL_PATHS = (
    ("gpt_neox.layers.", "blocks."),
    (".attention.", ".attn."),
    (".input_layernorm.", ".ln1."),
    (".post_attention_layernorm.", ".ln2."),
    ("gpt_neox.final_layer_norm.", "ln_final."),
)


class HookPoint(nn.Module):
    """The identity, until hooks are attached: then each fn(tensor, name) in turn may return a
    replacement (or None to keep the tensor). A plain module, so torch's own forward hooks (and
    libraries built on them) work here too."""

    def __init__(self):
        super().__init__()
        self.name = ""  # set by name_hook_points: "blocks.0.attn.hook_q"
        self.fns: list[HookFn] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            out = fn(x, self.name)
            if out is not None:
                x = out
        return x


def name_hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint of the model its TransformerLens name; return them by name, in order."""
    points = {}
    for path, module in model.named_modules():
        if isinstance(module, HookPoint):
            for ours, theirs in TL_PATHS:
                path = path.replace(ours, theirs)
            module.name = path
            points[path] = module
    return points


def resolve_names(points: dict[str, HookPoint], names: Iterable[str] | Callable[[str], bool] | None) -> list[str]:
    """None (all), a list of names, or a predicate name -> bool -> the names, in forward order."""
    if names is None:
        return list(points)
    if callable(names):
        return [n for n in points if names(n)]
    names = list(names)
    unknown = [n for n in names if n not in points]
    if unknown:
        raise KeyError(
            f"no hook point {unknown[0]!r}; e.g. {', '.join(list(points)[:4])}, ... "
            f"(model.hook_points() lists all {len(points)})"
        )
    return names


@contextlib.contextmanager
def attached(model: nn.Module, points: dict[str, HookPoint], hooks: dict[str, HookFn]) -> Iterator[None]:
    """Attach hooks ({name: fn}) for the duration of the block, on every path that runs the model
    (see GPTNeoX.hooks); they are removed on exit, also when the block raises."""
    names = resolve_names(points, list(hooks))
    for name in names:
        points[name].fns.append(hooks[name])
    model.active_hooks += len(names)
    try:
        yield
    finally:
        model.active_hooks -= len(names)
        for name in names:
            points[name].fns.remove(hooks[name])


def run_with_cache(
    model: nn.Module, points: dict[str, HookPoint], input_ids: torch.Tensor, names=None, **forward_kwargs
) -> tuple[torch.Tensor, ActivationCache]:
    """(logits, ActivationCache of the requested activations); only those are kept in memory."""
    cache = ActivationCache(model)

    def keep(tensor: torch.Tensor, name: str) -> None:
        cache[name] = tensor.detach()

    with attached(model, points, {name: keep for name in resolve_names(points, names)}):
        logits = model(input_ids, **forward_kwargs)
    return logits, cache


class ActivationCache(dict):
    """Activations by hook-point name, plus TransformerLens' ways of reading the residual stream.

    Each tensor is as the hook point saw it ([batch, pos, ...]); the model itself is kept (not
    copied) to apply its final layer norm and unembedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def _need(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self]
        if missing:
            raise KeyError(
                f"the cache does not hold {missing[0]!r}: run run_with_cache with names=None "
                f"(all), or with this name among them"
            )

    @property
    def num_layers(self) -> int:
        return len(self.model.gpt_neox.layers)

    def accumulated_resid(self, layer: int | None = None, apply_ln: bool = False) -> torch.Tensor:
        """The residual stream before each layer up to `layer` (all: None), then after the last one:
        [components, batch, pos, C] = resid_pre 0 .. layer-1 (+ resid_post L-1 when layer is None).

        apply_ln: as TransformerLens does, centre each component and divide it by the scale the
        final layer norm computed for the real stream (ln_final.hook_scale), which keeps the
        operation linear; the norm's weight and bias are not applied."""
        L = self.num_layers
        stop = L if layer is None else layer
        names = [f"blocks.{i}.hook_resid_pre" for i in range(stop)]
        if layer is None:
            names.append(f"blocks.{L - 1}.hook_resid_post")
        self._need(names)
        stack = torch.stack([self[n] for n in names])  # [components, B, T, C]
        return self.apply_ln_to_stack(stack) if apply_ln else stack

    def apply_ln_to_stack(self, stack: torch.Tensor) -> torch.Tensor:
        """Centre [components, B, T, C] and divide by the final layer norm's cached scale [B, T, 1]."""
        self._need(["ln_final.hook_scale"])
        stack = stack - stack.mean(-1, keepdim=True)
        return stack / self["ln_final.hook_scale"]

    def logit_lens(self, top_k: int | None = None):
        """The logit lens: every entry of accumulated_resid() (the embedding, then each layer's
        output) through the model's own final layer norm and unembedding:
        [layers + 1, batch, pos, V], or with top_k the (values, indices) of the top k logits."""
        model = self.model
        stack = self.accumulated_resid()  # [L + 1, B, T, C]
        with torch.no_grad():
            logits = model.embed_out(model.gpt_neox.final_layer_norm(stack))  # [L + 1, B, T, V]
        return logits.topk(top_k, dim=-1) if top_k else logits

    def stack_head_results(self, layer: int | None = None) -> torch.Tensor:
        """What each attention head writes into the residual stream, for the layers before `layer`
        (all: None): z of head h times its slice of the output projection, the bias left out
        (TransformerLens' result): [layers * heads, batch, pos, C], ordered L0H0, L0H1, ..."""
        stop = self.num_layers if layer is None else layer
        names = [f"blocks.{i}.attn.hook_z" for i in range(stop)]
        self._need(names)
        results = []
        for i, name in enumerate(names):
            z = self[name]  # [B, T, nh, hs]
            nh, hs = z.shape[-2:]
            W = self.model.gpt_neox.layers[i].attention.dense.weight  # [C, nh * hs]
            per_head = W.view(W.shape[0], nh, hs)  # [C, nh, hs]
            results.append(torch.einsum("bthd,chd->hbtc", z, per_head))  # [nh, B, T, C]
        return torch.cat(results)

    def decompose_resid(self, layer: int | None = None, return_labels: bool = False):
        """The residual stream after the layers before `layer` (all: None) as the sum of what wrote
        into it: the embedding, then each layer's attention and MLP outputs, [components, B, T, C]
        (rotary adds no position embedding). Summed, it gives that layer's input."""
        stop = self.num_layers if layer is None else layer
        labels = ["embed"] + [f"{i}_{part}" for i in range(stop) for part in ("attn_out", "mlp_out")]
        names = ["hook_embed"] + [f"blocks.{i}.hook_{part}" for i in range(stop) for part in ("attn_out", "mlp_out")]
        self._need(names)
        stack = torch.stack([self[n] for n in names])
        return (stack, labels) if return_labels else stack

    def __repr__(self) -> str:
        more = ", ..." if len(self) > 3 else ""
        return f"ActivationCache({len(self)} activations: {', '.join(list(self)[:3])}{more})"
