"""Text generation as small functions (in the style of gpt-fast's generate.py):

    prefill          run the whole prompt once, filling the KV cache -> next-token logits
    decode_one_token feed one token at the next position               -> next-token logits
    logits_to_probs  temperature / top-k / top-p                        -> probabilities
    sample           greedy argmax, or a draw from a seeded torch.Generator
    generate         prefill, then decode until max_new_tokens (or EOS)
"""

from __future__ import annotations

import torch

from .model import GPTNeoX


@torch.inference_mode()
def prefill(model: GPTNeoX, input_ids: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Logits for the token after the prompt ([B, T] -> [B, V]), with the KV cache filled."""
    return model(input_ids, start_pos=0, last_token_only=True, **forward_kwargs)[:, -1]  # [B, V]


@torch.inference_mode()
def decode_one_token(model: GPTNeoX, token: torch.Tensor, pos: int, **forward_kwargs) -> torch.Tensor:
    """Logits after feeding one token per row ([B, 1] at sequence index pos) -> [B, V]."""
    return model(token, start_pos=pos, **forward_kwargs)[:, -1]  # [B, V]


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """[B, V] logits -> [B, V] probabilities after temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]: the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # each [B, V]
        cumulative = sorted_logits.softmax(-1).cumsum(-1)  # [B, V]
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top
        # token is always kept.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p  # [B, V]
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] logits -> [B, 1] next tokens. temperature 0 means greedy (argmax)."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1, keepdim=True)  # [B, 1]
    probs = logits_to_probs(logits, temperature, top_k, top_p)  # [B, V]
    return torch.multinomial(probs, num_samples=1, generator=generator)  # [B, 1]


@torch.inference_mode()
def generate(model: GPTNeoX, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> torch.Tensor:
    """Generate max_new_tokens after input_ids ([B, T] -> [B, T + N]); temperature 0 is greedy."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]  # [1, T]
    B, T = input_ids.shape
    total = T + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                         f"the context length {model.config.max_position_embeddings}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    out = torch.empty(B, total, dtype=torch.long, device=input_ids.device)  # [B, T + N]
    out[:, :T] = input_ids
    model.setup_kv_cache(B, total)
    try:
        logits = prefill(model, input_ids)  # [B, V]
        for pos in range(T, total):
            token = sample(logits, temperature, top_k, top_p, generator)  # [B, 1]
            out[:, pos] = token[:, 0]
            if pos + 1 < total:
                logits = decode_one_token(model, token, pos)  # [B, V]
    finally:
        model.clear_kv_cache()
    return out
