"""GPT-NeoX, the architecture of every Pythia model, in one file that reads top to bottom:

    layer norm -> rotary embedding -> KV cache -> attention -> MLP -> block (parallel residual) -> model

Parameter names are exactly the Hugging Face checkpoint keys (`gpt_neox.layers.3.attention.
query_key_value.weight`, `embed_out.weight`, ...), so a checkpoint loads 1:1 with no rename table.

Shape notation used in the comments:
    B   batch size
    T   tokens in this forward call (the whole prompt in prefill, 1 when decoding)
    S   keys/values attended to = tokens already in the KV cache + T
    C   hidden_size, the width of the residual stream (d_model)
    nh  number of attention heads          hs  head size = C // nh
    R   rotary_ndims = rotary_pct * hs     (25% of each head for every Pythia model)
    F   intermediate_size of the MLP       (4 C)
    V   vocab_size, the *padded* number of embedding rows (50304 for most Pythia models, while the
        tokenizer has only 50277 ids: rows >= 50277 are never produced by text)

`self.hook_x(x)` marks a hook point: the identity, unless a hook is attached there (hooks.py, with
a picture of where each point sits). The names are TransformerLens': blocks.3.attn.hook_pattern.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import hooks as hooks_module
from . import quantize as quantize_module
from .config import NeoXConfig
from .hooks import HookPoint

# ----------------------------------------------------------------------------- layer norm


class LayerNorm(nn.Module):
    """nn.LayerNorm written out, (x - mean) / sqrt(var + eps) * weight + bias, so that the scale and
    the result can be hooked. Computed in fp32 whatever the model dtype, as F.layer_norm does."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps
        self.hook_scale = HookPoint()  # [B, T, 1]
        self.hook_normalized = HookPoint()  # [B, T, C], before weight and bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        centred = x32 - x32.mean(-1, keepdim=True)  # [B, T, C]
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [B, T, 1]
        normalized = self.hook_normalized(centred / scale)  # [B, T, C]
        return (normalized * self.weight.float() + self.bias.float()).to(x.dtype)


# ----------------------------------------------------------------------------- rotary embedding


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embedding (RoPE), computed once for every position.

    NeoX quirks that bite here:
      * Only the first R = rotary_pct * hs dims of each head are rotated (25% for Pythia: 16 of 64
        dims in pythia-160m); the remaining dims carry no position information at all.
      * The pairing is "rotate_half": dim i is rotated together with dim i + R/2 (GPT-NeoX, HF),
        NOT interleaved pairs (2i, 2i+1) as in the original RoFormer / GPT-J. Same math, other layout:
        using the wrong one gives a model that runs but produces garbage.
      * The frequencies are computed here in fp32. Old checkpoints carry an fp16 copy
        (`attention.rotary_emb.inv_freq`) whose rounding shifts every angle; it is never used.
    """

    def __init__(self, config: NeoXConfig, device: torch.device | str | None = None):
        super().__init__()
        R = config.rotary_ndims
        exponents = torch.arange(0, R, 2, dtype=torch.float32, device=device) / R  # [R/2]: 0, 2/R, 4/R, ...
        inv_freq = 1.0 / (config.rotary_base**exponents)  # [R/2]
        positions = torch.arange(config.max_position_embeddings, dtype=torch.float32, device=device)  # [P]
        angles = positions[:, None] * inv_freq[None, :]  # [P, R/2]: angle of position p for frequency i
        angles = torch.cat([angles, angles], dim=-1)  # [P, R]: dims i and i + R/2 share an angle (rotate_half)
        # Not persistent: derived from the config, never read from (or written to) a checkpoint.
        self.register_buffer("cos", angles.cos(), persistent=False)  # [P, R], fp32
        self.register_buffer("sin", angles.sin(), persistent=False)  # [P, R], fp32

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for the given positions, [B, T] -> two [B, T, 1, R] (broadcast over heads)."""
        cos = self.cos[position_ids].to(dtype)  # [B, T, R]
        sin = self.sin[position_ids].to(dtype)  # [B, T, R]
        return cos.unsqueeze(2), sin.unsqueeze(2)  # [B, T, 1, R]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1 | x2] -> [-x2 | x1] on the last dim: multiplying by sin after this is a 2-D rotation of
    each (x1[i], x2[i]) pair, i.e. of dims i and i + R/2."""
    x1, x2 = x.chunk(2, dim=-1)  # each [..., R/2]
    return torch.cat([-x2, x1], dim=-1)  # [..., R]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of each head of x ([B, T, nh, hs]); leave the other hs - R dims alone."""
    R = cos.shape[-1]
    x_rot, x_pass = x[..., :R], x[..., R:]  # [B, T, nh, R], [B, T, nh, hs - R]
    x_rot = x_rot * cos + rotate_half(x_rot) * sin  # [B, T, nh, R]
    return torch.cat([x_rot, x_pass], dim=-1)  # [B, T, nh, hs]


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of the tokens seen so far, preallocated for max_seq_len and written in place.

    Allocated explicitly by `GPTNeoX.setup_kv_cache` (never on first use), so memory is known up front
    and decoding does no allocation or concatenation per token.

    A plain object, not an nn.Module with buffers: it is state of one generation, not part of the
    model. Module traversals (state_dict, named_buffers, torch.compile freezing the model's weights
    into the compiled decode step, fast.compile_decode) must not take it for a weight.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_seq_len: int,
        head_size: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        shape = (batch_size, num_heads, max_seq_len, head_size)  # [B, nh, max_seq_len, hs]
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([B, nh, T, hs]) at positions start_pos.., return all keys/values so far ([B, nh, S, hs])."""
        return write_kv(self.k, self.v, start_pos, k, v)


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, start_pos: int, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KVCache.update on the buffers themselves (fast.py's compiled step is given them directly)."""
    end = start_pos + k.shape[2]
    k_cache[:, :, start_pos:end] = k  # [B, nh, T, hs] into [B, nh, max_seq_len, hs]
    v_cache[:, :, start_pos:end] = v
    return k_cache[:, :, :end], v_cache[:, :, :end]  # each [B, nh, S, hs]


# ----------------------------------------------------------------------------- attention


class Attention(nn.Module):
    def __init__(self, config: NeoXConfig):
        super().__init__()
        # The heads this module computes: all of them, or this device's share when tensor
        # parallelism (distributed.py) splits the heads over devices. Read from here, not the config.
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        # One fused projection for q, k and v: C -> 3C, with bias.
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv_cache: KVCache | None = None
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [B, T, nh, hs]
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()  # [B, T, nh, hs], after rotary
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()  # [B, nh, T, S]
        self.hook_z = HookPoint()  # [B, T, nh, hs], the heads' outputs before `dense`

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, start_pos: int
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.num_heads, self.head_size
        qkv = self.query_key_value(x)  # [B, T, 3C]
        # NeoX quirk: the fused output is laid out PER HEAD, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], each
        # piece hs wide. So view it as [nh, 3*hs] and split the last dim; viewing it as [3, nh, hs]
        # (the GPT-2 / nanoGPT layout) would silently mix heads.
        qkv = qkv.view(B, T, nh, 3 * hs)  # [B, T, nh, 3hs]
        q, k, v = qkv.split(hs, dim=-1)  # each [B, T, nh, hs]
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        q = self.hook_rot_q(apply_rotary(q, cos, sin))  # [B, T, nh, hs]
        k = self.hook_rot_k(apply_rotary(k, cos, sin))  # [B, T, nh, hs]

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each [B, nh, T, hs]
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start_pos, k, v)  # each [B, nh, S, hs]

        # Scaled dot-product attention, written out. Scores are computed in the model dtype and the
        # softmax in fp32 (as transformers' eager path does), which keeps fp16 from overflowing.
        # Scaled and masked in place: [B, nh, T, S] is the largest tensor of a long prompt (8 x 2048 x
        # 2048 floats = 134 MB per layer of pythia-70m), so no copies of it.
        scores = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(hs))  # [B, nh, T, S]
        scores = self.hook_attn_scores(scores.masked_fill_(~mask, float("-inf")))  # [B, nh, T, S]
        # Every query has at least its own key (see attention_allowed), so no row is all -inf.
        probs = self.hook_pattern(F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))  # [B, nh, T, S]
        z = self.hook_z((probs @ v).transpose(1, 2))  # [B, T, nh, hs]
        return self.dense(z.reshape(B, T, nh * hs))  # [B, T, C]: heads side by side again (nh * hs = C)


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        # NeoX quirk: Pythia was TRAINED with the tanh approximation of GELU, but its HF config says
        # "gelu", which transformers computes exactly (with erf). "erf" matches transformers (and is
        # the default); "tanh" matches training. The difference is small but not zero.
        self.approximate = {"erf": "none", "tanh": "tanh"}[config.gelu]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()  # [B, T, F], before / after GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook_pre(self.dense_h_to_4h(x))  # [B, T, F]
        h = self.hook_post(F.gelu(h, approximate=self.approximate))  # [B, T, F]
        return self.dense_4h_to_h(h)  # [B, T, C]


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.mlp = MLP(config)
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()  # [B, T, C]
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()  # [B, T, C]
        self.hook_resid_mid = HookPoint()  # [B, T, C], sequential residual only

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, start_pos: int
    ) -> torch.Tensor:
        x = self.hook_resid_pre(x)  # [B, T, C]
        attn_out = self.hook_attn_out(self.attention(self.input_layernorm(x), cos, sin, mask, start_pos))
        if self.use_parallel_residual:
            # Every Pythia model: attention and MLP both read the block's input (each through its
            # own layer norm) and both add into the residual stream. "post_attention_layernorm" is a
            # misleading legacy name here: it normalises x, not the attention output.
            mlp_out = self.hook_mlp_out(self.mlp(self.post_attention_layernorm(x)))  # [B, T, C]
            return self.hook_resid_post(x + attn_out + mlp_out)  # [B, T, C]
        # The sequential (GPT-2 style) form, which GPT-NeoX also supports.
        x = self.hook_resid_mid(x + attn_out)  # [B, T, C]
        mlp_out = self.hook_mlp_out(self.mlp(self.post_attention_layernorm(x)))  # [B, T, C]
        return self.hook_resid_post(x + mlp_out)  # [B, T, C]


# ----------------------------------------------------------------------------- model


class GPTNeoX(nn.Module):
    def __init__(self, config: NeoXConfig):
        super().__init__()
        self.config = config
        self.gpt_neox = nn.ModuleDict(
            dict(
                # Zeros, not nn.Embedding's random init: the weights always come from a checkpoint or
                # init_random_weights, and on the meta device (where from_pretrained builds the model)
                # normal_() first imports torch._dynamo, which costs ~1 s of start-up for nothing.
                embed_in=nn.Embedding(
                    config.vocab_size, config.hidden_size, _weight=torch.zeros(config.vocab_size, config.hidden_size)
                ),
                layers=nn.ModuleList([Block(config) for _ in range(config.num_layers)]),
                final_layer_norm=LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
            )
        )
        # NeoX quirk: the output projection is its own matrix, NOT tied to embed_in (GPT-2 ties them).
        # It is half the parameters of pythia-14m. Its name "embed_out" is kept for 1:1 loading.
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # The rotary tables are computed for real even when the model is built on the meta device
        # (as from_pretrained does): they come from the config, never from a checkpoint, and
        # computing them on meta would import torch._dynamo, ~1 s of start-up for nothing.
        self.rotary = RotaryEmbedding(config, device="cpu" if torch.empty(0).is_meta else None)
        self.provenance: dict | None = None  # filled in by loading.from_pretrained: what was loaded from where
        self.hook_embed, self.hook_logits = HookPoint(), HookPoint()  # [B, T, C], [B, T, V]
        self.points = hooks_module.name_hook_points(self)  # TransformerLens name -> HookPoint
        self.active_hooks = 0  # hooks attached right now (by `with model.hooks(...)`)
        # Tensor parallelism (distributed.py): how many ranks the weights are split over, and their
        # process group, which the fast path's collectives use. 1 and None: every weight is here.
        self.shards = 1
        self.shard_group = None
        self.quantization: str | None = None  # "int8" once quantize() has run
        self.compiled_decode = False  # decode steps through torch.compile (fast.compile_decode)
        self.compile_mode = "default"  # and how: fast.COMPILE_MODES
        self.compiled_weights_stamp: int | None = None  # the weights frozen into it (fast.prepare_decode)

    # -- KV cache, allocated explicitly --------------------------------------------------------

    def setup_kv_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Preallocate every layer's KV cache for batch_size sequences of up to max_seq_len tokens."""
        cfg = self.config
        max_seq_len = max_seq_len or cfg.max_position_embeddings
        if max_seq_len > cfg.max_position_embeddings:
            raise ValueError(
                f"max_seq_len {max_seq_len} exceeds the context length {cfg.max_position_embeddings} of this model"
            )
        dtype = dtype or self.gpt_neox.final_layer_norm.weight.dtype
        device = self.gpt_neox.final_layer_norm.weight.device
        for block in self.gpt_neox.layers:
            heads = block.attention.num_heads  # this device's heads (fewer under tensor parallelism)
            block.attention.kv_cache = KVCache(batch_size, heads, max_seq_len, cfg.head_size, dtype, device)

    def clear_kv_cache(self) -> None:
        for block in self.gpt_neox.layers:
            block.attention.kv_cache = None

    @property
    def kv_cache_shape(self) -> tuple[int, ...] | None:
        cache = self.gpt_neox.layers[0].attention.kv_cache
        return None if cache is None else tuple(cache.k.shape)

    # -- forward -------------------------------------------------------------------------------

    def check_inputs(self, input_ids: torch.Tensor, start_pos: int) -> None:
        """The errors of forward (also used by fast.forward): token ids, cache fit, context length."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size)
        B, T = input_ids.shape
        S = start_pos + T
        cache_shape = self.kv_cache_shape
        if cache_shape is None and start_pos != 0:
            raise ValueError("start_pos > 0 needs a KV cache: call setup_kv_cache first")
        if cache_shape is not None and (B != cache_shape[0] or S > cache_shape[2]):
            raise ValueError(
                f"batch {B} x {S} tokens does not fit the KV cache set up for "
                f"batch {cache_shape[0]} x {cache_shape[2]} tokens"
            )
        if S > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence of {S} tokens is longer than the context length {cfg.max_position_embeddings} of this model"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        start_pos: int = 0,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        last_token_only: bool = False,
        return_hidden_states: bool = False,
    ):
        """Logits for input_ids [B, T] -> [B, T, V] ([B, 1, V] with last_token_only).

        start_pos      where input_ids start in the sequence = tokens already in the KV cache
                       (must be 0 when no cache is set up: then attention sees only input_ids).
        position_ids   [B, T] rotary positions; default start_pos .. start_pos + T - 1. Left-padded
                       batches pass each row's own positions (counting real tokens only).
        attention_mask [B, S] bool, True for real tokens, False for padding, over all S keys
                       (cached + new); default: all real.
        return_hidden_states  also return a dict of the activations, named after the module that
                       produced them, in order: "gpt_neox.embed_in", "gpt_neox.layers.0", ...,
                       "gpt_neox.layers.{L-1}" (the residual stream after each block) and
                       "gpt_neox.final_layer_norm"; each [B, T, C]. Used for layer-by-layer parity.
        """
        self.check_inputs(input_ids, start_pos)
        B, T = input_ids.shape
        S = start_pos + T

        if position_ids is None:
            position_ids = torch.arange(start_pos, S, device=input_ids.device).expand(B, T)  # [B, T]
        mask = attention_allowed(start_pos, T, attention_mask, input_ids.device)  # [B or 1, 1, T, S]

        x = self.hook_embed(self.gpt_neox.embed_in(input_ids))  # [B, T, C]
        cos, sin = self.rotary(position_ids, x.dtype)  # each [B, 1, T, R]
        hidden_states = {"gpt_neox.embed_in": x}
        for i, block in enumerate(self.gpt_neox.layers):
            x = block(x, cos, sin, mask, start_pos)  # [B, T, C]
            if return_hidden_states:
                hidden_states[f"gpt_neox.layers.{i}"] = x
        if last_token_only:
            x = x[:, -1:, :]  # [B, 1, C]: prefill for generation needs only the next-token logits
        x = self.gpt_neox.final_layer_norm(x)  # [B, T, C]
        hidden_states["gpt_neox.final_layer_norm"] = x
        logits = self.hook_logits(self.embed_out(x))  # [B, T, V]
        return (logits, hidden_states) if return_hidden_states else logits

    # -- weight-only int8 (quantize.py) ----------------------------------------------------------

    def quantize(self, method: str = "int8") -> GPTNeoX:
        """Store every nn.Linear's weight as int8 with one scale per output row (quantize.py), in
        place; returns the model. The forward is unchanged: Int8Linear computes what nn.Linear did,
        up to the rounding of the weights."""
        return quantize_module.quantize_model(self, method)

    # -- hooks: reading and changing activations (hooks.py) -------------------------------------

    def hook_points(self) -> list[str]:
        """Every hook point's name (`run_with_cache` keeps activations in the order they are computed)."""
        return list(self.points)

    def hooks(self, hooks: dict[str, hooks_module.HookFn]):
        """`with model.hooks({name: fn}):` attaches fn(tensor, name) -> replacement or None at each
        named point, on every path that runs the model while the block is open (model(...),
        fast.forward, generate, scoring, parity), and removes it on exit."""
        return hooks_module.attached(self, self.points, hooks)

    @property
    def hooked(self) -> bool:
        """Whether any hook is attached: the fast path then runs this readable forward instead."""
        return self.active_hooks > 0

    def run_with_hooks(self, input_ids: torch.Tensor, hooks: dict[str, hooks_module.HookFn], **forward_kwargs):
        """model(input_ids) with hooks ({name: fn}) attached for this one call."""
        with self.hooks(hooks):
            return self(input_ids, **forward_kwargs)

    def run_with_cache(self, input_ids: torch.Tensor, names=None, **forward_kwargs):
        """(logits, ActivationCache): the activations at `names` (None: all; a list; or a predicate
        name -> bool), detached. Only those are kept in memory."""
        return hooks_module.run_with_cache(self, self.points, input_ids, names, **forward_kwargs)


def hidden_state_names(num_layers: int) -> list[str]:
    """The activations `forward(..., return_hidden_states=True)` returns, in forward order."""
    return ["gpt_neox.embed_in"] + [f"gpt_neox.layers.{i}" for i in range(num_layers)] + ["gpt_neox.final_layer_norm"]


def attention_allowed(
    start_pos: int, T: int, attention_mask: torch.Tensor | None, device: torch.device | str
) -> torch.Tensor:
    """Which keys each query may attend to: bool [1, 1, T, S] (or [B, 1, T, S] with padding).

    Causal: query t (at sequence index start_pos + t) sees keys 0 .. start_pos + t. attention_mask
    ([B, S'] with S' >= S, True = real token) additionally hides left padding; but every query keeps
    its own key. For a real token that changes nothing (it sees itself anyway); a padding position
    would otherwise see no key at all, and softmax over nothing but -inf is NaN, which would reach
    the real rows through 0 * NaN. So a padding position attends to itself: finite garbage that no
    real token ever reads."""
    S = start_pos + T
    key_index = torch.arange(S, device=device)  # [S]
    query_index = torch.arange(start_pos, S, device=device)  # [T]
    allowed = (key_index[None, :] <= query_index[:, None])[None, None]  # [1, 1, T, S]
    if attention_mask is not None:
        itself = (key_index[None, :] == query_index[:, None])[None, None]  # [1, 1, T, S]
        allowed = (allowed & attention_mask[:, None, None, :S].bool()) | itself  # [B, 1, T, S]
    return allowed


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """input_ids must be [B, T] integer ids in [0, V): an id outside would index past the embedding
    (a crash on CPU, garbage on GPU)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, tokens] (2-D), got shape {list(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise ValueError("input_ids is empty: there must be at least one token")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is out of range: this model has ids 0..{vocab_size - 1}")
