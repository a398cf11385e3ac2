"""Reference checkpoints and activations from Hugging Face transformers, for the parity tests.

Checkpoints are random-weight `GPTNeoXForCausalLM` models (eager attention, fp32) with their layer
norms and biases perturbed away from 1/0 so that every parameter influences the output.
Activations are captured with forward hooks on modules whose names equal ours, so the comparison
does not depend on how a transformers version defines `output_hidden_states`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neox_mini import NeoXConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_JSON = SHARED / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"


def hf_config(config: NeoXConfig):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size, rotary_pct=config.rotary_pct,
        rotary_emb_base=config.rotary_base, max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=config.layer_norm_eps, use_parallel_residual=config.use_parallel_residual,
        hidden_act={"erf": "gelu", "tanh": "gelu_new"}[config.gelu],
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, tie_word_embeddings=False,
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
        state = {("embed_out.weight" if k == "lm_head.weight" else k): v.contiguous()
                 for k, v in model.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        raise ValueError(weights)
    return folder


def make_hf_checkpoint(config: NeoXConfig, folder: Path, weights: str = "safetensors", seed: int = 0):
    """Create, save and return a reference model (see save_hf_model for `weights`)."""
    model = make_hf_model(config, seed)
    save_hf_model(model, folder, weights)
    return model


@torch.no_grad()
def hf_activations(model, input_ids: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, activations named like neox_mini's return_hidden_states) of a transformers model."""
    names = ["gpt_neox.embed_in"] + [f"gpt_neox.layers.{i}" for i in range(len(model.gpt_neox.layers))] \
        + ["gpt_neox.final_layer_norm"]
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = []
    for name in names:
        def hook(module, inputs, output, name=name):
            captured[name] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        logits = model(input_ids, **kwargs).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, {name: captured[name] for name in names}
