"""`neox-mini plan`: memory per device from the config alone."""

import pytest
import torch

from neox_mini import NeoXConfig
from neox_mini.cli import main
from neox_mini.plan import plan
from neox_mini.pythia import table

SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", list(table()))
def test_weights_are_exactly_the_tensor_bytes(name, dtype):
    config = NeoXConfig.from_pythia(name)
    p = plan(config, dtype)
    size = torch.empty(0, dtype=p.dtype).element_size()
    assert p.weights == config.num_params() * size == table()[name]["params_total"] * size


def test_tensor_parallel_split_and_the_kv_cache_formula():
    config = NeoXConfig.from_pythia("160m")
    C, F, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_layers
    replicated = L * (4 * C + 2 * C) + 2 * C  # per layer 2 norms, 2 row-parallel biases; final norm
    split = L * (3 * C * C + 3 * C + C * C + F * C + F + C * F) + 2 * V * C  # and embed_in, embed_out
    assert replicated + split == config.num_params()
    p = plan(config, "bf16", devices=2, context=1024, batch=4)
    assert p.weights == (replicated + split // 2) * 2
    assert p.kv_cache == 2 * L * 4 * 1024 * (C // 2) * 2
    with pytest.raises(
        ValueError, match=r"5 devices do not divide the 12 attention heads: use one of \[1, 2, 3, 4, 6, 12\]"
    ):
        plan(config, "bf16", devices=5)


def test_cli_plan(capsys):
    assert main(["plan", "--model", "pythia-70m", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "pythia-70m: 70,426,624 parameters" in out and f"({70_426_624 * 4:,} bytes)" in out and "fits" in out
    assert main(["plan", "--model", "pythia-12b", "--dtype", "fp32", "--batch", "64"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
