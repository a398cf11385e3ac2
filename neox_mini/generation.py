"""Text generation as small functions (in the style of gpt-fast's generate.py):

    prefill              run the whole prompt once, filling the KV cache   -> next-token logits
    decode_one_token     feed one token per row at the next position       -> next-token logits
    mask_padded_vocab    forbid the embedding rows no text maps to (ids >= 50277)
    apply_repetition_penalty   CTRL-style penalty on tokens already in the sequence
    logits_to_probs      temperature / top-k / top-p                        -> probabilities
    sample               greedy argmax, or a draw from a seeded torch.Generator per row
    generate_tokens      the loop: prefill, then sample + decode, one step per yield
    generate             the loop collected into a tensor [B, T + N]
    generate_batch       prompts of different lengths, left-padded into one batch
    stream_text          one prompt -> text pieces as they are produced (EOS / stop strings)

Left padding: prompts of different lengths are padded on the left with <|padding|> so that every
row's next token sits in the last column. Each row then gets its own rotary positions (counting
real tokens only) and an attention mask that hides the padding, so every row computes exactly
what it would compute alone. The per-row seeded generators make that hold for sampling too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from . import fast
from .errors import NonFiniteError
from .model import GPTNeoX, check_token_ids
from .pythia import TOKENIZER_VOCAB_SIZE
from .tokenizer import EOS_ID, PAD_ID, Tokenizer


def default_vocab_limit(model: GPTNeoX) -> int:
    """Ids >= this are never generated: the tokenizer's 50,277, or fewer for a smaller test model.
    The padded rows above 50,277 were never a training target, but their logits are not -inf, so a
    sampler must exclude them explicitly."""
    return min(model.config.vocab_size, TOKENIZER_VOCAB_SIZE)


@torch.inference_mode()
def prefill(model: GPTNeoX, input_ids: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Logits for the token after the prompt ([B, T] -> [B, V]), with the KV cache filled."""
    # fast.forward: the same function as model(...), with fewer and bigger ops (see fast.py)
    return fast.forward(model, input_ids, start_pos=0, last_token_only=True, **forward_kwargs)[:, -1]  # [B, V]


@torch.inference_mode()
def decode_one_token(model: GPTNeoX, token: torch.Tensor, pos: int, **forward_kwargs) -> torch.Tensor:
    """Logits after feeding one token per row ([B, 1] at sequence index pos) -> [B, V]. The ids come
    from sample() and the position from the loop, so the input checks (a host sync each) are skipped;
    compiled after fast.compile_decode."""
    return fast.decode(model, token, pos, **forward_kwargs)[:, -1]  # [B, V]


def mask_padded_vocab(logits: torch.Tensor, vocab_limit: int, in_place: bool = False) -> torch.Tensor:
    """[B, V] logits with every id >= vocab_limit set to -inf (in a copy, unless in_place).

    This is where the padded vocabulary is handled: a Pythia model has 50,304+ output rows but only
    50,277 of them are tokens. The rest get -inf here, before greedy argmax, repetition penalty,
    temperature or top-k/top-p, so no path can ever produce an id the tokenizer cannot decode.
    """
    if vocab_limit >= logits.shape[-1]:
        return logits
    if not in_place:
        logits = logits.clone()
    logits[:, vocab_limit:] = float("-inf")
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as transformers computes it: the logit of every
    token already in the sequence (seen [B, V] bool) is divided by penalty when positive and
    multiplied by it when negative, so penalty > 1 always makes a repeat less likely."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)  # [B, V]
    return torch.where(seen, penalized, logits)


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """[B, V] logits -> [B, V] probabilities after temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]: the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # each [B, V]
        sorted_probs = sorted_logits.softmax(-1)  # [B, V]
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the top
        # token is always kept.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p  # [B, V]
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """[B, V] logits -> [B, 1] next tokens. temperature 0 means greedy (argmax).

    generator: one torch.Generator for the whole batch, or one per row. With one per row (what
    `generate_tokens` uses for a seed) row i draws exactly what it would draw alone.
    """
    if temperature <= 0.0:
        return greedy(logits)
    probs = logits_to_probs(logits, temperature, top_k, top_p)  # [B, V]
    if isinstance(generator, (list, tuple)):
        rows = [torch.multinomial(probs[i : i + 1], num_samples=1, generator=g) for i, g in enumerate(generator)]
        return torch.cat(rows)  # [B, 1]
    return torch.multinomial(probs, num_samples=1, generator=generator)  # [B, 1]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] logits -> [B, 1]: the index of each row's largest logit, the first one on a tie, a NaN
    counting as the largest (argmax's answer). Float CPU logits go through numpy's argmax, which
    vectorises the search: ~5 us over 50,304 fp32 logits where torch.max takes 60-90 and argmax ~100
    (torch 2.13), once per generated token (2-5 % of a compiled 14m-70m decode step). numpy has no
    bfloat16, and a tensor that requires grad (a hooked forward outside no_grad) cannot be viewed."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float16) and not logits.requires_grad:
        return torch.from_numpy(logits.numpy().argmax(-1, keepdims=True)).long()  # [B, 1]
    return torch.max(logits, dim=-1, keepdim=True).indices  # [B, 1]


def check_sampling_args(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float
) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")


def check_finite(logit_sums: torch.Tensor, during: str) -> None:
    """Raise NonFiniteError if any row had NaN or infinite logits (its sum [B] is not finite)."""
    nonfinite = ~torch.isfinite(logit_sums)  # [B]
    if bool(nonfinite.any()):
        rows = nonfinite.nonzero()[:, 0].tolist()
        raise NonFiniteError(
            f"the model computed NaN or infinite logits during {during} (batch row(s) {rows}): NaN/inf in the "
            f"weights, or an overflow in half precision; the output is not a result"
        )


@torch.inference_mode()
def generate_tokens(
    model: GPTNeoX,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    vocab_limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row ([B]) for up to max_new_tokens steps.

    input_ids      [B, T] prompt ids; left-padded rows come with attention_mask [B, T] (bool,
                   True = real token). Every row needs at least one real token.
    eos_id         once a row has produced it, that row yields PAD_ID (as transformers pads
                   finished rows); the loop ends early when every row has finished.
    vocab_limit    ids >= this are never produced (default: the tokenizer's 50,277, see
                   mask_padded_vocab). A parity test against an unmasked reference on random
                   weights passes model.config.vocab_size to switch the mask off.
    """
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]  # [1, T]
    check_token_ids(input_ids, model.config.vocab_size)
    B, T = input_ids.shape
    device = input_ids.device
    total = T + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"the context length {model.config.max_position_embeddings}"
        )
    if max_new_tokens == 0:
        return
    vocab_limit = default_vocab_limit(model) if vocab_limit is None else vocab_limit
    V = model.config.vocab_size
    if not 1 <= vocab_limit <= V:
        raise ValueError(f"vocab_limit must be between 1 and the model's {V} rows, got {vocab_limit}")

    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.bool, device=device)
    attention_mask = attention_mask.to(device=device, dtype=torch.bool)
    if attention_mask.shape != (B, T):
        raise ValueError(f"attention_mask has shape {list(attention_mask.shape)}, input_ids {[B, T]}")
    n_real = attention_mask.sum(-1)  # [B]
    if (n_real == 0).any():
        raise ValueError(f"row {int((n_real == 0).nonzero()[0])} of the batch has no real token")
    # Each row's positions count its real tokens only: a left-padded row starts at position 0 at
    # its first real token, exactly as it would alone. Padding positions are clamped to 0; their
    # values do not matter since no query attends to them.
    prompt_positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    n_pad = T - n_real  # [B]
    # The mask over every key the sequence will ever have: the prompt's, then all-real for the
    # generated tokens. The model reads its first S columns at each step.
    # Only a batch with padding needs a mask; checked once here, not read back at every step.
    padded = not bool(attention_mask.all())
    full_mask = torch.cat(
        [attention_mask, torch.ones(B, max_new_tokens, dtype=torch.bool, device=device)], 1
    )  # [B, total]

    # Tokens already in each row (real ones only), for the repetition penalty. Padding is routed to
    # an extra column V that is dropped, so <|padding|> is not penalised for being padding.
    seen = torch.zeros(B, V + 1, dtype=torch.bool, device=device)  # [B, V + 1]
    seen.scatter_(1, input_ids.masked_fill(~attention_mask, V), True)
    seen = seen[:, :V]  # [B, V]

    generator = None
    if seed is not None:  # one generator per row, all with the same seed: a row draws what it draws alone
        generator = [torch.Generator(device=device).manual_seed(seed) for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool, device=device)  # [B]
    # Every logit of every step summed per row, in fp32: a sum is NaN or infinite as soon as one
    # term is (or, for finite logits, only beyond 3e38, which are no result either). Accumulated
    # without a host sync per token and checked before the first token and at the end: a NaN
    # never passes as a token (argmax over NaN logits returns some id, e.g. <|endoftext|>, which
    # would look like a normal, empty answer). One reduction per step, where isfinite().all() was
    # three passes over the logits: at 70m-160m sizes the loop's own work is ~10% of a token.
    logit_sums = torch.zeros(B, dtype=torch.float32, device=device)  # [B]

    # With hooks attached (`with model.hooks(...)`), each step is a full forward over the whole
    # sequence so far, without the KV cache: every hook sees, and may change, every position at
    # every step, exactly as in a loop of hooked forwards. Otherwise: prefill once, then one token
    # per step from the cache.
    full_forwards = model.hooked
    sequence = torch.cat([input_ids, input_ids.new_full((B, max_new_tokens), PAD_ID)], 1)  # [B, total]
    generated_positions = torch.arange(T, total, device=device)[None] - n_pad[:, None]  # [B, N]
    positions = torch.cat([prompt_positions, generated_positions], 1)  # [B, total]: real tokens before each

    products = None
    if not full_forwards:
        products = fast.prepare_decode(model, B)  # kernels chosen and bound, a stale compiled step dropped
        model.setup_kv_cache(B, total)
    try:
        if full_forwards:
            logits = model(
                input_ids, position_ids=prompt_positions, attention_mask=attention_mask, last_token_only=True
            )
            logits = logits[:, -1]  # [B, V]
        else:
            logits = prefill(model, input_ids, position_ids=prompt_positions, attention_mask=full_mask)  # [B, V]
        logit_sums += logits.sum(-1, dtype=torch.float32)
        check_finite(logit_sums, "the prompt")
        for pos in range(T, total):
            # In place when the logits are this step's own; with hooks attached, one of them may
            # have kept the tensor.
            logits = mask_padded_vocab(logits, vocab_limit, in_place=not full_forwards)  # [B, V]
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)  # [B, V]
            token = sample(logits, temperature, top_k, top_p, generator)[:, 0]  # [B]
            if eos_id is not None:
                token = token.masked_fill(finished, PAD_ID)  # finished rows only pad
            yield token
            if eos_id is not None:
                finished |= token == eos_id
                if bool(finished.all()):
                    check_finite(logit_sums, "generation")
                    return
            # Only what a later step reads: the tokens seen (for a repetition penalty) and the
            # sequence (for full forwards).
            if repetition_penalty != 1.0:
                seen[torch.arange(B, device=device), token] = True
            if full_forwards:
                sequence[:, pos] = token
            if pos + 1 == total:
                break
            if full_forwards:
                S = pos + 1
                logits = model(
                    sequence[:, :S],
                    position_ids=positions[:, :S],
                    attention_mask=full_mask[:, :S],
                    last_token_only=True,
                )[:, -1]  # [B, V]
            else:
                logits = decode_one_token(
                    model,
                    token[:, None],
                    pos,
                    position_ids=positions[:, pos : pos + 1],
                    attention_mask=full_mask if padded else None,
                    products=products,
                )  # [B, V]
            logit_sums += logits.sum(-1, dtype=torch.float32)
        check_finite(logit_sums, "generation")
    finally:
        model.clear_kv_cache()


@torch.inference_mode()
def generate(
    model: GPTNeoX,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    vocab_limit: int | None = None,
    hooks: dict | None = None,
) -> torch.Tensor:
    """Generate after input_ids ([B, T] -> [B, T + N]); temperature 0 is greedy.

    N = max_new_tokens, or fewer when eos_id is given and every row has produced it (rows that
    finish earlier are filled with PAD_ID). See generate_tokens for the other arguments.
    hooks: {hook point name: fn}, attached for this call: `with model.hooks(hooks): generate(...)`.
    """
    if hooks:
        with model.hooks(hooks):
            return generate(
                model,
                input_ids,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                attention_mask=attention_mask,
                repetition_penalty=repetition_penalty,
                eos_id=eos_id,
                vocab_limit=vocab_limit,
            )
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]  # [1, T]
    steps = generate_tokens(
        model,
        input_ids,
        max_new_tokens,
        attention_mask=attention_mask,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        repetition_penalty=repetition_penalty,
        eos_id=eos_id,
        vocab_limit=vocab_limit,
    )
    new = [token[:, None] for token in steps]  # N x [B, 1]
    return torch.cat([input_ids, *new], dim=1)  # [B, T + N]


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = PAD_ID, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths -> (input_ids [B, T], attention_mask [B, T] bool), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (an empty prompt has nothing to "
            "continue: start it with BOS_ID = 0 instead)"
        )
    T = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)  # [B, T]
    attention_mask = torch.zeros(len(prompts), T, dtype=torch.bool, device=device)  # [B, T]
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        attention_mask[i, T - len(p) :] = True
    return input_ids, attention_mask


def generate_batch(model: GPTNeoX, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kwargs) -> list[list[int]]:
    """Generate for several prompts (lists of ids, any lengths) in one left-padded batch.

    Returns each prompt's new ids; with eos_id given, a row ends at (and includes) its EOS.
    Row i equals what generate() gives for prompts[i] alone.
    """
    device = model.embed_out.weight.device
    input_ids, attention_mask = left_pad(prompts, device=device)
    out = generate(model, input_ids, max_new_tokens, attention_mask=attention_mask, **kwargs)
    eos_id = kwargs.get("eos_id")
    results = []
    for row in out[:, input_ids.shape[1] :].tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        results.append(row)
    return results


def split_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str, bool]:
    """(text safe to emit now, text held back, whether a stop string was found).

    The text before the first stop string is emitted and the rest dropped. Without a stop, the
    longest tail that could still grow into a stop string is held back, so a stop string split
    over several tokens never leaks out half-printed.
    """
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return text[: min(found)], "", True
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


def stream_text(
    model: GPTNeoX,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop: Sequence[str] = (),
    eos_id: int | None = EOS_ID,
    **sampling,
) -> Iterator[str]:
    """Generate after one prompt and yield the new text piece by piece, as it is produced.

    Stops at eos_id (not printed; None = never stop), at the first stop string (not printed), or
    after max_new_tokens. Pieces never split a character (see tokenizer.StreamDecoder).
    sampling: temperature, top_k, top_p, seed, repetition_penalty, vocab_limit (see generate_tokens).
    """
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give some text (or start from <|endoftext|> with bos)")
    if any(s == "" for s in stop):
        raise ValueError("a stop string must not be empty")
    device = model.embed_out.weight.device
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # [1, T]
    sampling.setdefault("vocab_limit", min(tokenizer.vocab_size, model.config.vocab_size))
    tokens = generate_tokens(model, input_ids, max_new_tokens, **sampling)
    decoder = tokenizer.stream_decoder()
    held = ""
    try:
        for token in tokens:
            token_id = int(token[0])
            if eos_id is not None and token_id == eos_id:
                break
            emit, held, stopped = split_at_stop(held + decoder.push(token_id), stop)
            if emit:
                yield emit
            if stopped:
                return
        emit, _, _ = split_at_stop(held + decoder.flush(), stop)
        if emit:
            yield emit
    finally:
        tokens.close()  # frees the KV cache now, even when the caller stops early
