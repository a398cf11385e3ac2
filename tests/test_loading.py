"""Loading checkpoint folders: formats, dtypes, legacy buffers, and every kind of bad input.

Each bad input must raise one clear error naming the problem, and leave the folder untouched.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_hf_checkpoint, random_ids, tiny
from safetensors.torch import load_file, save_file

from neox_mini import CheckpointError, ConfigError, GPTNeoX, NeoXConfig, from_pretrained, synthetic
from neox_mini.checkpoint import save_checkpoint
from neox_mini.loading import auto_dtype, load_folder
from neox_mini.parity import TOLERANCES, difference
from neox_mini.synthetic import write_random_checkpoint

CONFIG = NeoXConfig(
    vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=64
)
IDS = torch.tensor([[1, 5, 9, 100, 127, 3]])


def random_model(config=CONFIG, seed=0, dtype=torch.float32):
    return synthetic.random_model(config, seed, dtype)


@pytest.fixture
def folder(tmp_path):
    save_checkpoint(random_model(), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def snapshot(path):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def load_error(folder, error=CheckpointError, **kwargs):
    """Load, expect `error`, check the folder was not changed, return the message."""
    before = snapshot(folder)
    with pytest.raises(error) as info:
        from_pretrained(folder, **kwargs)
    assert snapshot(folder) == before, "a failed load changed the checkpoint folder"
    return str(info.value)


def test_round_trip_gives_the_same_logits(folder):
    model = from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(model(IDS), random_model()(IDS))
    assert model.provenance["dtype"] == "float32"
    assert model.provenance["files"] == {
        str(folder / "model.safetensors"): os.path.getsize(folder / "model.safetensors")
    }


def test_weights_stay_memory_mapped_without_a_copy(tmp_path):
    """Loading fp32 weights as fp32 maps the file: resident memory grows only when the weights are
    touched (by a forward pass), not at load time. Measured in a fresh process."""
    config = CONFIG.replace(vocab_size=32768, hidden_size=128, intermediate_size=512)  # ~35 MB
    save_checkpoint(random_model(config), tmp_path)
    weight_bytes = os.path.getsize(tmp_path / "model.safetensors")
    script = f"""
import torch
from neox_mini import GPTNeoX, NeoXConfig, from_pretrained
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
with torch.device("meta"):  # warm-up: torch's one-off start-up allocations are not the weights
    GPTNeoX(NeoXConfig.from_hf({str(tmp_path)!r}))
before = rss()
model = from_pretrained({str(tmp_path)!r})
loaded = rss()
with torch.no_grad():
    model(torch.tensor([[1, 2, 3]]))
print(loaded - before, rss() - before)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    after_load, after_forward = map(int, out.split())
    assert after_load < 0.25 * weight_bytes, f"load made resident {after_load:,} of {weight_bytes:,} bytes"
    assert after_forward > 0.8 * weight_bytes, "the forward pass should have paged the weights in"


@pytest.mark.parametrize(
    "stored, requested, expected",
    [
        (torch.float16, None, torch.float16),  # default: the checkpoint's own dtype
        (torch.bfloat16, None, torch.bfloat16),
        (torch.float32, "bf16", torch.bfloat16),
        (torch.float16, "fp32", torch.float32),
        (torch.float32, torch.float16, torch.float16),
    ],
)
def test_dtype_default_is_stored_dtype_and_can_be_cast(tmp_path, stored, requested, expected):
    save_checkpoint(random_model(dtype=stored), tmp_path)
    model = from_pretrained(tmp_path, dtype=requested)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == str(stored)[6:]
    with torch.no_grad():
        assert torch.isfinite(model(IDS).float()).all()


@pytest.mark.parametrize("weights", ["safetensors", "sharded", "bin"])
def test_transformers_written_checkpoints_load_in_every_format(tmp_path, weights):
    """A folder as transformers (or, for .bin, old Pythia revisions) writes it loads from the
    expected files and gives transformers' logits."""
    config = tiny()
    reference = make_hf_checkpoint(config, tmp_path, weights=weights, seed=3)
    ours = from_pretrained(tmp_path)
    names = {Path(p).name for p in ours.provenance["files"]}
    if weights == "bin":
        assert names == {"pytorch_model.bin"}
    elif weights == "sharded":
        assert len(names) > 1 and all(n.startswith("model-") and n.endswith(".safetensors") for n in names)
    else:
        assert names == {"model.safetensors"}
    ids = random_ids(config)
    with torch.no_grad():
        d = difference("logits", ours(ids), reference(ids).logits)
    assert not d.over(TOLERANCES["float32"]), str(d)


def test_sharded_safetensors_and_bin(tmp_path):
    reference = random_model()
    for weights in ("safetensors", "bin"):
        out = tmp_path / weights
        files = save_checkpoint(reference, out, weights=weights, max_shard_bytes=40_000)
        assert len([f for f in files if "-of-" in f.name]) >= 3
        with torch.no_grad():
            assert torch.equal(from_pretrained(out)(IDS), reference(IDS))


def test_safetensors_preferred_over_bin(folder):
    torch.save(random_model(seed=1).state_dict(), folder / "pytorch_model.bin")
    model = from_pretrained(folder)
    assert list(model.provenance["files"]) == [str(folder / "model.safetensors")]
    with torch.no_grad():
        assert torch.equal(model(IDS), random_model(seed=0)(IDS))


def test_legacy_buffers_are_skipped_and_stored_inv_freq_is_not_used(folder):
    state = load_file(folder / "model.safetensors")
    for i in range(CONFIG.num_layers):
        prefix = f"gpt_neox.layers.{i}.attention."
        state[prefix + "bias"] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.bool))
        state[prefix + "masked_bias"] = torch.tensor(-1e9)
        # A deliberately wrong inv_freq: if it were used, the logits would change.
        state[prefix + "rotary_emb.inv_freq"] = torch.full((CONFIG.rotary_ndims // 2,), 0.123, dtype=torch.float16)
    save_file(state, folder / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(IDS), random_model()(IDS))


def test_truncated_safetensors(folder):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = load_error(folder)
    assert "model.safetensors" in message and "not a valid safetensors file" in message
    assert "truncated or corrupt" in message


def test_garbage_safetensors_header(folder):
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    assert "not a valid safetensors file" in load_error(folder)


def test_wrong_shape_names_the_tensor_and_both_shapes(folder):
    state = load_file(folder / "model.safetensors")
    state["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"] = torch.zeros(100, 32)
    save_file(state, folder / "model.safetensors")
    message = load_error(folder)
    assert "gpt_neox.layers.1.mlp.dense_h_to_4h.weight: checkpoint has [100, 32], the config needs [128, 32]" in message
    assert "missing" not in message  # a misshaped tensor is reported once, as misshaped


def test_missing_tensor_is_named(folder):
    state = load_file(folder / "model.safetensors")
    del state["gpt_neox.layers.0.attention.dense.bias"]
    save_file(state, folder / "model.safetensors")
    assert "missing tensor(s): gpt_neox.layers.0.attention.dense.bias" in load_error(folder)


def test_unexpected_tensor_is_named(folder):
    state = load_file(folder / "model.safetensors")
    state["gpt_neox.layers.2.attention.dense.weight"] = torch.zeros(32, 32)
    save_file(state, folder / "model.safetensors")
    assert "unexpected tensor(s): gpt_neox.layers.2.attention.dense.weight (in model.safetensors)" in load_error(folder)


def test_folder_with_no_weights(folder):
    (folder / "model.safetensors").unlink()
    message = load_error(folder)
    assert message.startswith(f"no weights in {folder}: expected one of model.safetensors.index.json")
    assert "found ['config.json']" in message


def test_index_naming_a_missing_shard(tmp_path):
    save_checkpoint(random_model(), tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    assert f"lists shard(s) that are not in {tmp_path}: {shard.name}" in load_error(tmp_path)


def test_unsupported_config_value(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert "unsupported hidden_act='relu'" in load_error(folder, ConfigError)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"model folder .*nope does not exist"):
        from_pretrained(tmp_path / "nope")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_is_not_plain_weights_is_refused_not_run(folder, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embed_out.weight": RunsCode()}, f)
    message = load_error(folder)
    assert "not a plain-weights checkpoint" in message and "nothing in it was run" in message
    assert "weights_only=False" not in message and "likely succeed" not in message  # never advise running it
    assert not (folder / "pwned").exists()


def test_bin_holding_something_other_than_a_state_dict(folder):
    (folder / "model.safetensors").unlink()
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    assert "is not a state dict of named tensors (got list)" in load_error(folder)


def test_truncated_bin(folder):
    (folder / "model.safetensors").unlink()
    torch.save(random_model().state_dict(), folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert "could not be read as a PyTorch checkpoint" in load_error(folder)


def test_token_ids_out_of_range_and_too_long(folder):
    model = from_pretrained(folder)
    with pytest.raises(ValueError, match=r"token id 128 is out of range: this model has ids 0..127"):
        model(torch.tensor([[1, 128]]))
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"sequence of 65 tokens is longer than the context length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_random_model_has_real_rotary_tables():
    """random_model materialises a meta-device model with to_empty, which empties every buffer:
    the derived rotary tables must be rebuilt, or a model used without a save/load round trip
    would compute garbage."""
    model = random_model()
    reference = GPTNeoX(CONFIG).rotary
    assert torch.equal(model.rotary.cos, reference.cos) and torch.equal(model.rotary.sin, reference.sin)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "want"), [(True, False, "bfloat16"), (False, True, "bfloat16"), (False, False, "float32")]
)
def test_auto_dtype_is_bf16_only_where_the_cpu_computes_it(tmp_path, monkeypatch, amx, avx512_bf16, want):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert auto_dtype("cpu") == getattr(torch, want) and auto_dtype("cuda") is None
    folder = write_random_checkpoint(tmp_path / "m", tiny())
    assert load_folder(folder, dtype="auto").provenance["dtype"] == want
