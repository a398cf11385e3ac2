"""Bad input, as a corrupted download, a hand-edited config, a malicious folder, a confused user and
a fuzzer would produce it. Every case runs offline and must be refused with one line that names the
problem (the file, key or tensor), with no traceback, and leave every file under the input folder
and the Hugging Face cache byte-identical.

CLI cases run `main(argv)` in-process, exactly what the console script runs; a warning would be an
extra stderr line there, so none may be raised. API cases expect the exception type.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from fake_hub import add_to_cache, folder_files, tree_state
from safetensors.torch import load_file, save_file

from neox_mini import (
    CheckpointError,
    ConfigError,
    NeoXConfig,
    NonFiniteError,
    ResolveError,
    UnknownModelError,
    from_pretrained,
    generate,
)
from neox_mini.cli import main
from neox_mini.synthetic import write_random_checkpoint

# The real vocabulary (so real text tokenizes) at a tiny width; sharded so that index cases apply.
CONFIG = NeoXConfig(vocab_size=50304, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize 1234567\n" % (b"0" * 64)


@pytest.fixture(scope="module")
def good(tmp_path_factory, tokenizer_json) -> dict[str, Path]:
    """Good checkpoints to break: one single-file safetensors, one sharded (index + 3 shards)."""
    base = tmp_path_factory.mktemp("good")
    single = write_random_checkpoint(base / "single", CONFIG, tokenizer=tokenizer_json)
    sharded = write_random_checkpoint(base / "sharded", CONFIG, max_shard_bytes=2_500_000, tokenizer=tokenizer_json)
    assert len(list(sharded.glob("model-*.safetensors"))) >= 3
    return {"single": single, "sharded": sharded}


# ----------------------------------------------------------------------------- ways to break a folder


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)  # in place
        (folder / name).write_text(json.dumps(data))

    return apply


def set_config(**values) -> Callable[[Path], None]:
    return edit_json("config.json", lambda c: c.update(values))


def write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def truncate(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return apply


def remove(*names: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for name in names:
            (folder / name).unlink()

    return apply


def edit_tensors(change: Callable[[dict], None], name: str = "model.safetensors") -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        state = load_file(folder / name)
        change(state)
        save_file(state, folder / name, metadata={"format": "pt"})

    return apply


def as_bin(then: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """The weights as pytorch_model.bin (old Pythia revisions), then `then`."""

    def apply(folder: Path) -> None:
        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")
        if then:
            then(folder)

    return apply


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for step in steps:
            step(folder)

    return apply


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def shard(folder: Path, i: int) -> str:
    return sorted(p.name for p in folder.glob("model-*.safetensors"))[i]


def index_entry(tensor: str, value) -> Callable[[Path], None]:
    return edit_json("model.safetensors.index.json", lambda d: d["weight_map"].__setitem__(tensor, value))


def duplicate_tensor(folder: Path) -> None:
    """A tensor of shard 1 also stored in shard 2 (with other values)."""
    first, second = folder / shard(folder, 0), folder / shard(folder, 1)
    name = sorted(load_file(first))[0]
    state = load_file(second)
    state[name] = torch.ones_like(load_file(first)[name])
    save_file(state, second, metadata={"format": "pt"})


def misplace_tensor(folder: Path) -> None:
    """The index says a tensor of the shard that holds the most is in another shard."""
    fullest = max(range(3), key=lambda i: len(load_file(folder / shard(folder, i))))
    name = sorted(load_file(folder / shard(folder, fullest)))[0]
    index_entry(name, shard(folder, (fullest + 1) % 3))(folder)


def outside_shard(folder: Path) -> None:
    """An index entry pointing at a real, valid shard outside the model folder."""
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    shutil.copyfile(folder / shard(folder, 0), outside / "x.safetensors")
    name = sorted(load_file(folder / shard(folder, 0)))[0]
    index_entry(name, "../elsewhere/x.safetensors")(folder)


def link_outside(folder: Path, name: str) -> None:
    """The file replaced by a link to a copy of it outside the model folder."""
    outside = folder.parent / f"outside-{name}"
    shutil.move(folder / name, outside)
    (folder / name).symlink_to(outside)


def nan_weights(folder: Path) -> None:
    edit_tensors(lambda s: s["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"].fill_(float("nan")))(folder)


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    break_it: Callable[[Path], None] | None  # applied to a copy of the good checkpoint
    argv: list[str] | None = None  # CLI: "{model}" / "{folder}" are replaced; None: an API case
    expect: tuple[str, ...] = ()  # fragments of the one error line ("{model}" replaced too)
    api: Callable[[Path], object] | None = None  # API: called with the model folder
    error: type[Exception] = Exception
    base: str = "single"
    exit: int = 1
    extra: Callable[[Path], None] | None = field(default=None)  # more checks on the folder afterwards
    stdin: bytes | None = None


INFO = ["info", "--model", "{model}"]
GREEDY = ["generate", "--greedy", "-n", "4", "--model", "{model}", "Hello"]
SHARDED = "model.safetensors.index.json"

CASES = [
    # corrupted downloads
    Case(
        "truncated-safetensors", truncate("model.safetensors"), INFO, ("model.safetensors", "not a valid safetensors")
    ),
    Case(
        "garbage-header",
        write("model.safetensors", b"\x10" + b"\x00" * 7 + b"{not a header"),
        INFO,
        ("model.safetensors", "not a valid safetensors"),
    ),
    Case("empty-safetensors", write("model.safetensors", b""), INFO, ("model.safetensors", "not a valid safetensors")),
    Case(
        "lfs-pointer-safetensors",
        write("model.safetensors", LFS_POINTER),
        INFO,
        ("model.safetensors is a Git LFS pointer", "not the weights"),
    ),
    Case(
        "lfs-pointer-bin",
        as_bin(write("pytorch_model.bin", LFS_POINTER)),
        INFO,
        ("pytorch_model.bin is a Git LFS pointer",),
    ),
    Case(
        "bin-not-a-pickle",
        as_bin(write("pytorch_model.bin", bytes(range(256)) * 40)),
        INFO,
        ("pytorch_model.bin", "not a plain-weights checkpoint"),
    ),
    Case(
        "bin-random-text",
        as_bin(write("pytorch_model.bin", b"hello, this is not a checkpoint\n" * 10)),
        INFO,
        ("pytorch_model.bin",),
    ),
    Case("bin-empty", as_bin(write("pytorch_model.bin", b"")), INFO, ("pytorch_model.bin", "could not be read")),
    Case("bin-truncated", as_bin(truncate("pytorch_model.bin")), INFO, ("pytorch_model.bin", "could not be read")),
    Case(
        "index-missing-shard",
        lambda f: (f / shard(f, 1)).unlink(),
        INFO,
        ("lists shard(s) that are not in",),
        base="sharded",
    ),
    Case(
        "index-not-json",
        write(SHARDED, b"{weight_map: oops"),
        INFO,
        (SHARDED, "not a valid shard index"),
        base="sharded",
    ),
    # a malicious folder
    Case(
        "bin-pickle-that-runs-code",
        as_bin(lambda f: pickle.dump({"x": RunsCode()}, open(f / "pytorch_model.bin", "wb"))),
        INFO,
        ("pytorch_model.bin", "not a plain-weights checkpoint", "nothing in it was run"),
        extra=lambda f: not (f / "pwned").exists() or pytest.fail("the pickle ran"),
    ),
    Case(
        "weights-link-outside",
        lambda f: link_outside(f, "model.safetensors"),
        INFO,
        ("model.safetensors links to", "outside the model folder"),
    ),
    Case(
        "config-link-outside",
        lambda f: link_outside(f, "config.json"),
        INFO,
        ("config.json links to", "outside the model folder"),
    ),
    Case(
        "shard-link-outside",
        lambda f: link_outside(f, shard(f, 1)),
        INFO,
        ("outside the model folder",),
        base="sharded",
    ),
    Case(
        "index-parent-path",
        outside_shard,
        INFO,
        (SHARDED, "'../elsewhere/x.safetensors' is not a file name"),
        base="sharded",
    ),
    Case(
        "index-absolute-path",
        index_entry("embed_out.weight", "/etc/passwd"),
        INFO,
        (SHARDED, "weight_map['embed_out.weight'] = '/etc/passwd'"),
        base="sharded",
    ),
    Case(
        "index-subfolder-path",
        index_entry("embed_out.weight", "sub/x.safetensors"),
        INFO,
        ("'sub/x.safetensors' is not a file name",),
        base="sharded",
    ),
    Case(
        "index-backslash-path",
        index_entry("embed_out.weight", "..\\x.safetensors"),
        INFO,
        ("is not a file name",),
        base="sharded",
    ),
    Case(
        "index-value-not-a-string",
        index_entry("embed_out.weight", 3),
        INFO,
        ("weight_map['embed_out.weight'] must be a file name, got 3",),
        base="sharded",
    ),
    Case(
        "index-weight-map-a-list",
        edit_json(SHARDED, lambda d: d.__setitem__("weight_map", ["a"])),
        INFO,
        ("'weight_map' must map tensor names to file names",),
        base="sharded",
    ),
    Case(
        "index-without-weight-map",
        edit_json(SHARDED, lambda d: d.pop("weight_map")),
        INFO,
        ("needs a 'weight_map'",),
        base="sharded",
    ),
    Case("tensor-in-two-shards", duplicate_tensor, INFO, ("stored twice",), base="sharded"),
    Case("index-points-to-another-shard", misplace_tensor, INFO, ("but the index maps it to",), base="sharded"),
    Case(
        "bin-holding-a-list",
        as_bin(lambda f: torch.save([torch.zeros(2)], f / "pytorch_model.bin")),
        INFO,
        ("not a state dict of named tensors",),
    ),
    # tensors that do not fit the config
    Case(
        "missing-tensor",
        edit_tensors(lambda s: s.pop("gpt_neox.layers.1.attention.dense.bias")),
        INFO,
        ("missing tensor(s): gpt_neox.layers.1.attention.dense.bias",),
    ),
    Case(
        "unexpected-tensor",
        edit_tensors(lambda s: s.__setitem__("gpt_neox.layers.7.x", torch.zeros(1))),
        INFO,
        ("unexpected tensor(s): gpt_neox.layers.7.x",),
    ),
    Case(
        "wrong-shape",
        edit_tensors(lambda s: s.__setitem__("embed_out.weight", torch.zeros(50304, 31))),
        INFO,
        ("embed_out.weight: checkpoint has [50304, 31], the config needs [50304, 32]",),
    ),
    Case(
        "int64-weights",
        edit_tensors(lambda s: s.__setitem__("embed_out.weight", torch.zeros(50304, 32, dtype=torch.int64))),
        INFO,
        ("embed_out.weight is int64, not floating point", "wrong dtype"),
    ),
    Case("no-weights", remove("model.safetensors"), INFO, ("no weights in",)),
    # hand-edited configs
    Case("no-config", remove("config.json"), INFO, ("no config.json at",)),
    Case("config-not-json", write("config.json", b"{'hidden_size': 32,"), INFO, ("config.json is not valid JSON",)),
    Case(
        "config-key-twice",
        lambda f: (f / "config.json").write_text(
            (f / "config.json").read_text().replace("{", '{"hidden_size": 64, ', 1)
        ),
        INFO,
        ("config.json: 'hidden_size' is listed twice",),
    ),
    Case("config-a-list", write("config.json", b"[1, 2]"), INFO, ("config.json: expected a JSON object",)),
    Case("config-not-utf8", write("config.json", b'{"hidden_size": "\xff"}'), INFO, ("config.json is not valid JSON",)),
    Case(
        "hidden-size-negative",
        set_config(hidden_size=-32),
        INFO,
        ("config.json: hidden_size must be a whole number >= 1, got -32",),
    ),
    Case(
        "heads-zero",
        set_config(num_attention_heads=0),
        INFO,
        ("num_attention_heads must be a whole number >= 1, got 0",),
    ),
    Case("size-as-string", set_config(hidden_size="32"), INFO, ("hidden_size must be a whole number >= 1, got '32'",)),
    Case("size-as-float", set_config(intermediate_size=64.5), INFO, ("intermediate_size must be a whole number",)),
    Case(
        "layers-negative",
        set_config(num_hidden_layers=-2),
        INFO,
        ("num_hidden_layers must be a whole number >= 1, got -2",),
    ),
    Case("vocab-zero", set_config(vocab_size=0), INFO, ("vocab_size must be a whole number >= 1, got 0",)),
    Case(
        "context-zero",
        set_config(max_position_embeddings=0),
        INFO,
        ("max_position_embeddings must be a whole number >= 1",),
    ),
    Case("eps-as-string", set_config(layer_norm_eps="1e-5"), INFO, ("layer_norm_eps must be a finite number > 0",)),
    Case("rotary-pct-two", set_config(rotary_pct=2.0), INFO, ("rotary_pct must be a number in (0, 1], got 2.0",)),
    Case(
        "eos-beyond-vocab", set_config(eos_token_id=60000), INFO, ("eos_token_id 60000 is not below vocab_size 50304",)
    ),
    Case(
        "parallel-residual-string",
        set_config(use_parallel_residual="yes"),
        INFO,
        ("use_parallel_residual must be true or false",),
    ),
    Case(
        "heads-do-not-divide",
        set_config(num_attention_heads=5),
        INFO,
        ("hidden_size 32 is not divisible by num_heads 5",),
    ),
    Case("activation-relu", set_config(hidden_act="relu"), INFO, ("unsupported hidden_act='relu'",)),
    Case("activation-a-list", set_config(hidden_act=["gelu"]), INFO, ("unsupported hidden_act=['gelu']",)),
    Case("dtype-int8", set_config(torch_dtype="int8"), INFO, ("unsupported dtype='int8'",)),
    Case("dtype-a-dict", set_config(torch_dtype={"a": 1}), INFO, ("unsupported dtype=",)),
    Case(
        "missing-key",
        edit_json("config.json", lambda c: c.pop("vocab_size")),
        INFO,
        ("missing required key 'vocab_size'",),
    ),
    Case("tied-embeddings", set_config(tie_word_embeddings=True), INFO, ("unsupported tie_word_embeddings=True",)),
    # weights that load but compute garbage: caught where the numbers are used
    Case("nan-weights-greedy", nan_weights, GREEDY, ("NaN or infinite logits",)),
    Case(
        "nan-weights-score", nan_weights, ["score", "--model", "{model}", "{model}/config.json"], ("NaN or infinite",)
    ),
    # tokenizers
    Case("tokenizer-missing", remove("tokenizer.json"), GREEDY, ("no tokenizer.json: looked for",)),
    Case(
        "tokenizer-corrupt",
        write("tokenizer.json", b'{"version": "1.0", "model": 7}'),
        GREEDY,
        ("tokenizer.json is not a valid tokenizer.json",),
    ),
    # a confused user
    Case("model-folder-missing", None, ["info", "--model", "{folder}/nope"], ("nope does not exist",)),
    Case("model-is-a-file", None, ["info", "--model", "{model}/config.json"], ("is not a folder",)),
    Case("unknown-pythia-size", None, ["info", "--model", "pythia-999m"], ("'pythia-999m' is not a Pythia model",)),
    Case("old-pythia-name", None, ["info", "--model", "pythia-1.3b"], ("pre-2023 name of pythia-1.4b",)),
    Case("seed-run-that-does-not-exist", None, ["info", "--model", "pythia-1b-seed3"], ("seed runs of pythia-1b",)),
    Case(
        "step-never-published",
        None,
        ["info", "--model", "pythia-70m", "--revision", "step3001"],
        ("step 3,001 is not a published checkpoint", "nearest: step3000"),
    ),
    Case(
        "revision-a-path",
        None,
        ["info", "--model", "pythia-70m", "--revision", "../../etc"],
        ("is not a revision name",),
    ),
    Case(
        "revision-with-a-folder",
        None,
        ["info", "--model", "{model}", "--revision", "step1000"],
        ("applies to Hub names only",),
    ),
    Case(
        "offline-not-cached",
        None,
        ["info", "--model", "pythia-70m", "--revision", "step2000"],
        ("HF_HUB_OFFLINE=1 forbids downloading it", "cached revisions of EleutherAI/pythia-70m"),
    ),
    Case(
        "cached-snapshot-without-weights",
        None,
        ["info", "--model", "pythia-70m", "--revision", "step4000"],
        ("cannot be loaded", "no weights in"),
    ),
    Case(
        "score-file-not-utf8",
        write("latin1.txt", "café".encode("latin-1")),
        ["score", "--model", "{model}", "{model}/latin1.txt"],
        ("latin1.txt is not UTF-8 text: byte 0xe9 at offset 3",),
    ),
    Case("score-file-missing", None, ["score", "--model", "{model}", "{folder}/none.txt"], ("none.txt: no such file",)),
    Case(
        "score-file-empty", write("empty.txt", b""), ["score", "--model", "{model}", "{model}/empty.txt"], ("is empty",)
    ),
    Case(
        "prompt-on-stdin-not-utf8",
        None,
        ["generate", "--model", "{model}", "-"],
        ("the prompt on stdin is not UTF-8 text: byte 0xff at offset 6",),
        stdin=b"Hello \xff\xfe",
    ),
    Case(
        "prompt-argument-not-utf8",
        None,
        ["generate", "--model", "{model}", "Hi \udcff"],
        ("the prompt is not UTF-8 text",),
    ),
    Case("prompt-empty", None, ["generate", "--model", "{model}", ""], ("the prompt is empty",)),
    Case(
        "top-p-out-of-range",
        None,
        ["generate", "--top-p", "1.5", "--model", "{model}", "Hi"],
        ("top_p must be in (0, 1]",),
    ),
    Case(
        "stop-empty", None, ["generate", "--stop", "", "--model", "{model}", "Hi"], ("--stop needs a non-empty text",)
    ),
    Case(
        "parity-save-onto-a-folder",
        None,
        ["parity", "--model", "{model}", "--save-reference", "{folder}"],
        ("--save-reference", "is a folder"),
        exit=2,
    ),
    Case(
        "parity-garbage-reference",
        write("ref.safetensors", b"\x00" * 64),
        ["parity", "--model", "{model}", "--reference", "{model}/ref.safetensors"],
        ("ref.safetensors", "not a readable safetensors file"),
        exit=2,
    ),
    # the API
    Case(
        "api-3d-input-ids",
        None,
        api=lambda f: from_pretrained(f)(torch.zeros(1, 2, 3, dtype=torch.long)),
        error=ValueError,
        expect=("input_ids must be [batch, tokens] (2-D), got shape [1, 2, 3]",),
    ),
    Case(
        "api-float-input-ids",
        None,
        api=lambda f: from_pretrained(f)(torch.zeros(1, 3)),
        error=TypeError,
        expect=("input_ids must be an integer tensor",),
    ),
    Case(
        "api-list-input-ids",
        None,
        api=lambda f: from_pretrained(f)([[1, 2]]),
        error=TypeError,
        expect=("must be a torch tensor",),
    ),
    Case(
        "api-generate-3d",
        None,
        api=lambda f: generate(from_pretrained(f), torch.zeros(1, 1, 3, dtype=torch.long), 2),
        error=ValueError,
        expect=("2-D",),
    ),
    Case(
        "api-id-out-of-range",
        None,
        api=lambda f: from_pretrained(f)(torch.tensor([[50304]])),
        error=ValueError,
        expect=("token id 50304 is out of range",),
    ),
    Case(
        "api-nan-generate",
        nan_weights,
        api=lambda f: generate(from_pretrained(f), torch.tensor([[1, 2, 3]]), 3),
        error=NonFiniteError,
        expect=("NaN or infinite logits",),
    ),
    Case(
        "api-unknown-name",
        None,
        api=lambda f: from_pretrained("pythia-5m"),
        error=UnknownModelError,
        expect=("'pythia-5m' is not a Pythia model",),
    ),
    Case(
        "api-bad-config",
        set_config(num_attention_heads=0),
        api=from_pretrained,
        error=ConfigError,
        expect=("num_attention_heads must be a whole number >= 1",),
    ),
    Case(
        "api-bad-index",
        index_entry("embed_out.weight", "../x.safetensors"),
        api=from_pretrained,
        error=CheckpointError,
        expect=("is not a file name",),
        base="sharded",
    ),
    Case(
        "api-offline-revision",
        None,
        api=lambda f: from_pretrained("pythia-70m", revision="step5000"),
        error=ResolveError,
        expect=("is not in the cache",),
    ),
]


@pytest.fixture
def cache(offline_hub, good) -> Path:
    """An offline Hugging Face cache holding EleutherAI/pythia-70m at step1000 (complete) and
    step4000 (its weights missing): every case checks that the cache is left as it was."""
    files = folder_files(good["single"])
    add_to_cache(offline_hub, "EleutherAI/pythia-70m", files, ["step1000"])
    add_to_cache(offline_hub, "EleutherAI/pythia-70m", {"config.json": files["config.json"]}, ["step4000"])
    return offline_hub


def test_the_corpus_is_large_and_varied():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.argv is not None for c in CASES) >= 40 and sum(c.argv is None for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(case, good, cache, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "input"
    model = shutil.copytree(good[case.base], folder / "model", symlinks=True)
    if case.break_it:
        case.break_it(model)
    before = (tree_state(folder), tree_state(cache))

    def fill(text: str) -> str:
        return text.replace("{model}", str(model)).replace("{folder}", str(folder))

    expect = [fill(e) for e in case.expect]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case.argv is not None:
            if case.stdin is not None:
                monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(case.stdin), encoding="utf-8"))
            capsys.readouterr()
            code = main([fill(a) for a in case.argv])
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert code == case.exit, (code, err)
            assert len(lines) == 1 and "Traceback" not in err, err
            assert all(e in lines[0] for e in expect), (expect, lines[0])
        else:
            with pytest.raises(case.error) as info:
                case.api(model)
            message = str(info.value)
            assert "\n" not in message and all(e in message for e in expect), message
    assert [str(w.message) for w in caught] == [], "a warning is an extra stderr line for the CLI"
    assert (tree_state(folder), tree_state(cache)) == before, "a refused input changed files on disk"
    if case.extra:
        case.extra(model)


def test_an_index_outside_the_folder_is_refused_whether_or_not_the_file_exists(good, tmp_path):
    """No read and no existence oracle: the message is the same when the named file exists."""
    messages = []
    for exists in (True, False):
        model = shutil.copytree(good["sharded"], tmp_path / str(exists) / "model")
        if exists:
            outside_shard(model)
        else:
            index_entry(sorted(load_file(model / shard(model, 0)))[0], "../elsewhere/x.safetensors")(model)
        with pytest.raises(CheckpointError) as info:
            from_pretrained(model)
        messages.append(str(info.value).replace(str(tmp_path / str(exists)), "ROOT"))
    assert messages[0] == messages[1]
