"""Analysis helpers built on the hook points: the logit lens, attention patterns, activation patching.

logit_lens(model, ids, top_k)          -> per layer (embedding, then each block), the top tokens
attention_patterns(model, ids, layer)  -> [heads, query, key] of one layer
patch_resid(model, clean, corrupt, metric) -> [layers, pos]: TransformerLens' get_act_patch_resid_pre
plot_lens / plot_attention             -> PNG files (matplotlib, the optional [plot] extra)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .model import GPTNeoX


@torch.no_grad()
def logit_lens(model: GPTNeoX, input_ids: torch.Tensor, top_k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and ids of the top_k next tokens that each layer's residual stream predicts
    through the model's own final layer norm and unembedding: two [layers + 1, T, top_k] for one
    sequence ([1, T] ids); row 0 is the embedding, row L the model's real output."""
    names = [f"blocks.{i}.hook_resid_pre" for i in range(model.config.num_layers)]
    names.append(f"blocks.{model.config.num_layers - 1}.hook_resid_post")
    _, cache = model.run_with_cache(input_ids, names=names)
    probs = cache.logit_lens()[:, 0].float().softmax(-1)  # [L + 1, T, V]
    top = probs.topk(top_k, dim=-1)
    return top.values, top.indices


@torch.no_grad()
def attention_patterns(model: GPTNeoX, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The attention pattern of every head of `layer` for one sequence: [heads, query, key]
    (each row sums to 1; keys after the query are 0)."""
    if not 0 <= layer < model.config.num_layers:
        raise ValueError(f"layer {layer} does not exist: this model has layers 0..{model.config.num_layers - 1}")
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(input_ids, names=[name])
    return cache[name][0].float()


@torch.no_grad()
def patch_resid(
    model: GPTNeoX,
    clean_ids: torch.Tensor,
    corrupt_ids: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor | float],
) -> torch.Tensor:
    """Activation patching of the residual stream, as TransformerLens' get_act_patch_resid_pre:
    for every layer l and position p, run the corrupt input with blocks.{l}.hook_resid_pre at p
    replaced by the clean run's value, and record metric(logits). Returns [layers, pos] (float32).
    clean_ids and corrupt_ids must have the same shape [B, T]."""
    if clean_ids.shape != corrupt_ids.shape:
        raise ValueError(f"clean {list(clean_ids.shape)} and corrupt {list(corrupt_ids.shape)} ids differ in shape")
    L, T = model.config.num_layers, clean_ids.shape[-1]
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)]
    _, clean = model.run_with_cache(clean_ids, names=names)
    out = torch.zeros(L, T)
    for layer, name in enumerate(names):
        for pos in range(T):

            def patch(resid: torch.Tensor, _: str, pos: int = pos, name: str = name) -> torch.Tensor:
                resid = resid.clone()
                resid[:, pos] = clean[name][:, pos]
                return resid

            out[layer, pos] = float(metric(model.run_with_hooks(corrupt_ids, {name: patch})))
    return out


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'neox_mini[plot]'") from None
    return plt


def plot_lens(model: GPTNeoX, input_ids: torch.Tensor, labels: list[str], path: str | Path) -> Path:
    """A heat map, layers x positions, of the probability each layer gives to the model's final
    prediction at that position (the token the last layer ranks first)."""
    plt = pyplot()
    _, cache = model.run_with_cache(input_ids)
    probs = cache.logit_lens()[:, 0].float().softmax(-1)  # [L + 1, T, V]
    final = probs[-1].argmax(-1)  # [T]
    p_final = probs.gather(-1, final[None, :, None].expand(probs.shape[0], -1, 1))[..., 0]  # [L + 1, T]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels)), 0.4 * p_final.shape[0] + 1.5))
    im = ax.imshow(p_final.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(p_final.shape[0]), ["embed"] + [f"layer {i}" for i in range(p_final.shape[0] - 1)])
    ax.set_title("logit lens: probability of the final prediction")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_attention(pattern: torch.Tensor, path: str | Path, layer: int) -> Path:
    """One heat map per head ([heads, query, key] from attention_patterns), side by side."""
    plt = pyplot()
    heads = pattern.shape[0]
    cols = min(heads, 4)
    rows = (heads + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        ax.axis("off")
        if h < heads:
            ax.imshow(pattern[h].numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {h}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
