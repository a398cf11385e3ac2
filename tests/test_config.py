"""NeoXConfig: parameter counts of the Pythia table, and reading both config.json styles."""

import dataclasses

import pytest
import torch

from neox_mini import ConfigError, GPTNeoX, NeoXConfig
from neox_mini.pythia import table as pythia_table

# The published totals / non-embedding counts (the Pythia model card).
PUBLISHED = {
    "14m": (14_067_712, 1_189_888),
    "31m": (30_494_720, 4_739_072),
    "70m": (70_426_624, 18_915_328),
    "160m": (162_322_944, 85_056_000),
    "410m": (405_334_016, 302_311_424),
    "1b": (1_011_781_632, 805_736_448),
    "1.4b": (1_414_647_808, 1_208_602_624),
    "2.8b": (2_775_208_960, 2_517_652_480),
    "6.9b": (6_857_302_016, 6_444_163_072),
    "12b": (11_846_072_320, 11_327_027_200),
}


@pytest.mark.parametrize("size", PUBLISHED)
def test_param_counts_match_published_by_arithmetic_and_meta_model(size):
    total, non_embedding = PUBLISHED[size]
    cfg = NeoXConfig.from_pythia(size)
    assert cfg.num_params() == total
    assert cfg.num_params(non_embedding=True) == non_embedding
    with torch.device("meta"):
        model = GPTNeoX(cfg)
    counted = sum(p.numel() for p in model.parameters())
    embeddings = model.gpt_neox.embed_in.weight.numel() + model.embed_out.weight.numel()
    assert counted == total
    assert counted - embeddings == non_embedding
    row = pythia_table()[f"pythia-{size}"]
    assert (row["params_total"], row["params_non_embedding"]) == (total, non_embedding)


def test_padded_vocab_sizes():
    vocab = {name: row["vocab_size"] for name, row in pythia_table().items()}
    assert vocab.pop("pythia-6.9b") == 50432
    assert vocab.pop("pythia-12b") == 50688
    assert set(vocab.values()) == {50304}
    assert len(pythia_table()) == 10


def test_every_row_writes_every_value_and_a_source():
    keys = None
    for name, row in pythia_table().items():
        assert row["source"], name
        keys = keys or set(row)
        assert set(row) == keys, f"{name} has different keys than the other rows"


def test_the_config_is_architecture_only():
    """Where a checkpoint came from and how it is stored are provenance, not architecture: two
    checkpoints of one shape compare equal whatever their names and dtypes."""
    fields = {f.name for f in dataclasses.fields(NeoXConfig)}
    assert not fields & {"name", "dtype", "torch_dtype", "path", "revision"}
    assert NeoXConfig.from_pythia("160m") == NeoXConfig.from_pythia("EleutherAI/pythia-160m-deduped-v0")


ORIGINAL_STYLE = {  # EleutherAI/pythia-160m config.json as served (transformers 4.x era)
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.24.0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}
V5_STYLE = {  # the same model as transformers 5.x writes it
    "architectures": ["GPTNeoXForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "classifier_dropout": 0.1,
    "dtype": "float16",
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_dropout": 0.0,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "is_decoder": False,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": None,
    "rope_parameters": {"partial_rotary_factor": 0.25, "rope_theta": 10000, "rope_type": "default"},
    "tie_word_embeddings": False,
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 50304,
}


def test_from_hf_reads_both_styles_the_same():
    a, b = NeoXConfig.from_hf(ORIGINAL_STYLE), NeoXConfig.from_hf(V5_STYLE)
    assert a == b
    assert a == NeoXConfig.from_pythia("160m")
    assert (a.head_size, a.rotary_ndims) == (64, 16)


def test_from_hf_reads_a_file_and_a_folder(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(V5_STYLE))
    assert NeoXConfig.from_hf(tmp_path) == NeoXConfig.from_hf(tmp_path / "config.json") == NeoXConfig.from_hf(V5_STYLE)


def test_to_hf_round_trips():
    cfg = NeoXConfig.from_pythia("410m").replace(gelu="tanh", use_parallel_residual=False)
    assert NeoXConfig.from_hf(cfg.to_hf()) == cfg


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "relu"}, r"unsupported hidden_act='relu'"),
        ({"hidden_act": "gelu_fast"}, r"unsupported hidden_act='gelu_fast'"),
        ({"tie_word_embeddings": True}, r"unsupported tie_word_embeddings=True: .*untied embed_out"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"unsupported rope_scaling="),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000, "factor": 2.0}},
            r"unsupported rope_parameters.rope_type='dynamic'",
        ),
        ({"model_type": "llama"}, r"unsupported model_type='llama'"),
        ({"attention_bias": False}, r"unsupported attention_bias=False"),
        ({"torch_dtype": "int8"}, r"unsupported dtype='int8'"),
        ({"num_attention_heads": 7}, r"hidden_size 768 is not divisible by num_heads 7"),
        ({"rotary_pct": 0.3}, r"rotary dims .* must be even"),
    ],
)
def test_from_hf_refuses_what_is_not_implemented(change, message):
    with pytest.raises(ConfigError, match=message):
        NeoXConfig.from_hf({**ORIGINAL_STYLE, **change})


def test_from_hf_names_a_missing_key():
    hf = dict(ORIGINAL_STYLE)
    del hf["num_hidden_layers"]
    with pytest.raises(ConfigError, match=r"missing required key 'num_hidden_layers'"):
        NeoXConfig.from_hf(hf)


def test_from_hf_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match=r"no config.json at"):
        NeoXConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        NeoXConfig.from_hf(tmp_path)
