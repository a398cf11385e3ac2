"""Helpers shared by the tests: small configs, transformers reference models, folder snapshots.

Reference models are random-weight transformers `GPTNeoXForCausalLM`s (eager attention, fp32) with
their layer norms and biases perturbed away from 1/0 so that every parameter influences the output.
Our parameter names equal transformers' (the checkpoint keys), so parity checks can run in memory:
`ours_from_hf` hands the very same weights to a GPTNeoX. Files are written only by the tests of
the loader itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neox_mini import GPTNeoX, NeoXConfig
from neox_mini.checkpoint import LEGACY_BUFFER_SUFFIXES
from neox_mini.model import RotaryEmbedding
from neox_mini.parity import transformers_activations

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_JSON = SHARED / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"


def tiny(**changes) -> NeoXConfig:
    """A 3-layer, 64-wide model with a 1001-row vocabulary and a 128-token context."""
    base = dict(
        vocab_size=1001, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=256, max_position_embeddings=128
    )
    return NeoXConfig(**{**base, **changes})


def random_ids(config: NeoXConfig, batch: int = 2, length: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- transformers


def hf_config(config: NeoXConfig):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        rotary_pct=config.rotary_pct,
        rotary_emb_base=config.rotary_base,
        max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=config.layer_norm_eps,
        use_parallel_residual=config.use_parallel_residual,
        hidden_act={"erf": "gelu", "tanh": "gelu_new"}[config.gelu],
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )


def make_hf_model(config: NeoXConfig, seed: int = 0):
    """A random transformers GPTNeoXForCausalLM in fp32 eval mode, norms and biases perturbed."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(hf_config(config)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return model


# transformers 5 calls the output projection lm_head in memory (its saved files say embed_out).
HF_NAMES = {"lm_head.weight": "embed_out.weight"}


def ours_from_hf(hf_model, config: NeoXConfig, dtype: torch.dtype = torch.float32) -> GPTNeoX:
    """Our model with a copy of the transformers model's weights in `dtype`, in memory (strict:
    every name must match, as loading a checkpoint file checks too). The rotary tables stay fp32,
    as from_pretrained builds them."""
    with torch.device("meta"):
        model = GPTNeoX(config)
    state = {
        HF_NAMES.get(k, k): v.detach().to(dtype, copy=True)
        for k, v in hf_model.state_dict().items()
        if not k.endswith(LEGACY_BUFFER_SUFFIXES)
    }
    model.load_state_dict(state, strict=True, assign=True)
    model.rotary = RotaryEmbedding(config)
    return model.eval()


def hf_pair(config: NeoXConfig, seed: int = 0):
    """(transformers reference model, our model with the same weights)."""
    hf = make_hf_model(config, seed)
    return hf, ours_from_hf(hf, config)


def save_hf_model(model, folder: Path, weights: str = "safetensors") -> Path:
    """Save in a Hub layout. weights: "safetensors" (one file), "sharded" (index + several
    safetensors shards, written by transformers) or "bin" (pytorch_model.bin, written by torch.save
    with the checkpoint key names, as old Pythia revisions ship)."""
    folder = Path(folder)
    if weights == "safetensors":
        model.save_pretrained(folder)
    elif weights == "sharded":
        total = sum(p.numel() * 4 for p in model.parameters())
        model.save_pretrained(folder, max_shard_size=max(total // 3, 1))
        assert (folder / "model.safetensors.index.json").is_file(), "transformers did not shard"
    elif weights == "bin":
        model.save_pretrained(folder)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        state = {HF_NAMES.get(k, k): v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        raise ValueError(weights)
    return folder


def make_hf_checkpoint(config: NeoXConfig, folder: Path, weights: str = "safetensors", seed: int = 0):
    """Create, save and return a reference model (see save_hf_model for `weights`)."""
    model = make_hf_model(config, seed)
    save_hf_model(model, folder, weights)
    return model


def hf_activations(model, input_ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, activations named like neox_mini's return_hidden_states) of a transformers model:
    the parity tool's own capture (forward hooks on the modules named like ours)."""
    return transformers_activations(model, input_ids, **kwargs)
