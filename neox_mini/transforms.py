"""TransformerLens' weight processing, as explicit and optional transforms of a copy of the model.

TransformerLens loads a model "processed" by default, which changes what its hook points show;
neox_mini's hook points always show the raw model. These functions produce the processed model
when an analysis expects it:

    fold_layer_norm(model)        each layer norm's weight and bias folded into the matrices that
                                  read its output (attention, MLP, unembedding); the norms then
                                  only centre and scale. Logits unchanged (up to rounding).
    center_writing_weights(model) what writes into the residual stream (embedding, attention and
                                  MLP outputs) made mean-zero over the C channels. Every reader
                                  centres first, so logits are unchanged; the residual stream is not.
    center_unembed(model)         the unembedding made mean-zero over the vocabulary: every logit
                                  of a position shifts by the same constant, so probabilities are
                                  unchanged.
    process(model)                all three, in that order (TransformerLens' defaults).

Each returns a new model; the given one is left as it is. A folded model carries a bias on
`embed_out` (the final norm's bias, unembedded), so it is an analysis object, not a Pythia
checkpoint to save.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .model import GPTNeoX, LayerNorm


def _fold(norm: LayerNorm, reader: nn.Linear) -> nn.Linear:
    """reader(norm(x)) == reader'(norm'(x)) with norm' = (x - mean) / scale: W' = W diag(w), b' = b + W b_norm."""
    W = reader.weight.double()  # [out, C]
    bias = (reader.bias.double() if reader.bias is not None else 0) + W @ norm.bias.double()  # [out]
    folded = nn.Linear(W.shape[1], W.shape[0], bias=True, dtype=reader.weight.dtype, device=reader.weight.device)
    folded.weight.data.copy_(W * norm.weight.double()[None, :])
    folded.bias.data.copy_(bias)
    norm.weight.data.fill_(1.0)
    norm.bias.data.zero_()
    return folded


@torch.no_grad()
def fold_layer_norm(model: GPTNeoX) -> GPTNeoX:
    model = copy.deepcopy(model)
    for block in model.gpt_neox.layers:
        block.attention.query_key_value = _fold(block.input_layernorm, block.attention.query_key_value)
        block.mlp.dense_h_to_4h = _fold(block.post_attention_layernorm, block.mlp.dense_h_to_4h)
    model.embed_out = _fold(model.gpt_neox.final_layer_norm, model.embed_out)
    return model


def _center_rows(linear: nn.Linear) -> None:
    """Output channels (rows) of a matrix writing into the residual stream made mean-zero."""
    linear.weight.data -= linear.weight.data.mean(0, keepdim=True)
    if linear.bias is not None:
        linear.bias.data -= linear.bias.data.mean()


@torch.no_grad()
def center_writing_weights(model: GPTNeoX) -> GPTNeoX:
    model = copy.deepcopy(model)
    embed = model.gpt_neox.embed_in.weight.data  # [V, C]
    embed -= embed.mean(-1, keepdim=True)
    for block in model.gpt_neox.layers:
        _center_rows(block.attention.dense)
        _center_rows(block.mlp.dense_4h_to_h)
    return model


@torch.no_grad()
def center_unembed(model: GPTNeoX) -> GPTNeoX:
    model = copy.deepcopy(model)
    W = model.embed_out.weight.data  # [V, C]
    W -= W.mean(0, keepdim=True)
    if model.embed_out.bias is not None:
        model.embed_out.bias.data -= model.embed_out.bias.data.mean()
    return model


def process(model: GPTNeoX) -> GPTNeoX:
    """fold_layer_norm, center_writing_weights, center_unembed: TransformerLens' processed model."""
    return center_unembed(center_writing_weights(fold_layer_norm(model)))
