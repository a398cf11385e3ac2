"""The `neox-mini` console script, run for real in a subprocess, checked against transformers.

Padded vocabulary and the comparison with transformers: our generation never emits ids >= 50,277
(the padded embedding rows), transformers' argmax looks at all 50,304 rows. On these random weights
transformers never picks a padded row (asserted below), so the plain `generate(do_sample=False)`
output is the fair reference and no masking is needed on its side.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neox_mini import GPTNeoX, NeoXConfig, generate
from neox_mini.cli import main
from neox_mini.scoring import window_spans
from neox_mini.tokenizer import EOS_ID, Tokenizer
from reference import TOKENIZER_JSON

ROOT = Path(__file__).resolve().parents[1]


def console_script() -> str:
    """The installed `neox-mini` entry point next to this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).parent / "neox-mini"
    found = str(beside) if beside.is_file() else shutil.which("neox-mini")
    assert found, "the neox-mini console script is not installed: run `pip install -e .`"
    return found


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([console_script(), *args], input=stdin, capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=600)


def make_checkpoint(*args, **kwargs) -> Path:
    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "scripts" / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_checkpoint(*args, **kwargs)


@pytest.fixture(scope="module")
def ckpt70m(tmp_path_factory) -> Path:
    """A random pythia-70m-shape checkpoint with the real tokenizer, as the README's main job makes it."""
    return make_checkpoint(tmp_path_factory.mktemp("pythia-70m-random"), size="70m", tokenizer=TOKENIZER_JSON)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Real vocabulary and context length (2048), tiny width: cheap, but real prompts and files."""
    config = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), config=config, tokenizer=TOKENIZER_JSON)


@pytest.fixture(scope="module")
def hf_greedy(ckpt70m) -> str:
    """What transformers' generate(do_sample=False) decodes for "Hello, I am" + 40 tokens."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(ckpt70m)
    tokenizer = AutoTokenizer.from_pretrained(ckpt70m)
    prompt = tokenizer("Hello, I am", return_tensors="pt").input_ids
    assert prompt.tolist() == [[12092, 13, 309, 717]]
    out = model.generate(prompt, do_sample=False, max_new_tokens=40)[0].tolist()
    assert max(out) < 50277, "transformers picked a padded-vocab row: the comparison would not be fair"
    if out[-1] == EOS_ID:  # transformers stops at <|endoftext|> and keeps it; the CLI does not print it
        out = out[:-1]
    return tokenizer.decode(out)


def assert_error(result, *fragments):
    """A one-line error naming the problem, no traceback, exit status 1."""
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ----------------------------------------------------------------------------- generate


def test_greedy_prints_what_transformers_decodes(ckpt70m, hf_greedy):
    result = run("generate", "--greedy", "-n", "40", "--model", str(ckpt70m), "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy + "\n"
    assert len(hf_greedy) > len("Hello, I am") + 40  # 40 tokens really were generated


def test_stop_string(ckpt70m, hf_greedy):
    stop = hf_greedy[30:34]  # four characters well inside the greedy continuation
    result = run("generate", "--greedy", "-n", "40", "--model", str(ckpt70m), "--stop", stop, "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy[:hf_greedy.index(stop)] + "\n"


def test_seeded_sampling_is_reproducible(ckpt70m):
    args = ["generate", "--model", str(ckpt70m), "--seed", "7", "--temperature", "0.8", "--top-k", "50",
            "-n", "20", "Hello, I am"]
    first, second = run(*args), run(*args)
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    # ... and it is the Python API's output for the same seed.
    model = GPTNeoX.from_pretrained(ckpt70m)
    tok = Tokenizer(ckpt70m)
    ids = generate(model, torch.tensor([tok.encode("Hello, I am")]), 20, temperature=0.8, top_k=50, seed=7)[0]
    new = ids[4:].tolist()
    if EOS_ID in new:
        new = new[:new.index(EOS_ID)]
    assert first.stdout == tok.decode(ids[:4].tolist() + new) + "\n"
    other = generate(model, ids[None, :4], 20, temperature=0.8, top_k=50, seed=8)[0]
    assert not torch.equal(other, ids)  # the seed matters


def test_prompt_from_stdin(tiny):
    piped = run("generate", "--greedy", "-n", "8", "--model", str(tiny), "-", stdin="Hello, I am")
    assert piped.returncode == 0, piped.stderr
    model, tok = GPTNeoX.from_pretrained(tiny), Tokenizer(tiny)
    ids = generate(model, torch.tensor([tok.encode("Hello, I am")]), 8)[0].tolist()
    assert EOS_ID not in ids and piped.stdout == tok.decode(ids) + "\n"


def test_prompt_longer_than_the_context(tiny):
    prompt = "word " * 2100  # 2100 tokens + the trailing space
    n_tokens = len(Tokenizer(TOKENIZER_JSON).encode(prompt))
    result = run("generate", "--greedy", "-n", "5", "--model", str(tiny), prompt)
    assert_error(result, f"the prompt is {n_tokens} tokens; with -n 5 that is {n_tokens + 5} > the context "
                         "length 2048", "--truncate")
    result = run("generate", "--greedy", "-n", "5", "--truncate", "--model", str(tiny), prompt)
    assert result.returncode == 0, result.stderr
    assert f"prompt truncated from {n_tokens} to its last 2043 tokens" in result.stderr
    # The echo starts at the first kept token (" word"), and fewer than the 2100 words remain.
    assert result.stdout.startswith(" word word") and result.stdout.count("word") < 2100


# ----------------------------------------------------------------------------- score


def test_score_matches_transformers_loss(tiny, tmp_path):
    from transformers import GPTNeoXForCausalLM

    tok = Tokenizer(tiny)
    rng = torch.Generator().manual_seed(0)
    words = "the of and a to in is was Pythia model 東京 café naïve , . \n 2048".split(" ")
    text = " ".join(words[i] for i in torch.randint(len(words), (2600,), generator=rng).tolist())
    ids = tok.encode(text, bos=True)
    assert len(ids) > 2048 + 500  # longer than the context: several windows
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")

    result = run("score", "--model", str(tiny), "--stride", "1024", "--json", str(path))
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)

    reference = GPTNeoXForCausalLM.from_pretrained(tiny)
    spans = window_spans(len(ids), 2048, 1024)
    nll, count = 0.0, 0
    for begin, end, first in spans:
        window = torch.tensor([ids[begin:end]])
        labels = window.clone()
        labels[:, :first - begin] = -100  # context only
        with torch.no_grad():
            nll += reference(window, labels=labels).loss.double().item() * (end - first)
        count += end - first
    assert got["tokens"] == count == len(ids) - 1
    assert got["windows"] == len(spans) >= 2
    assert got["bytes"] == len(text.encode("utf-8"))
    assert abs(got["nll_per_token"] - nll / count) <= 1e-4 * nll / count
    assert got["bits_per_byte"] == pytest.approx(nll / 0.6931471805599453 / got["bytes"], rel=1e-4)


# ----------------------------------------------------------------------------- info, configs, help


def test_info(ckpt70m):
    result = run("info", "--model", str(ckpt70m))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"path                     {ckpt70m.resolve()}" in out
    assert "pythia-70m: 70,426,624 total, 18,915,328 non-embedding: match" in out
    assert "total                    70,426,624" in out
    assert "float32: 76" in out  # 6 layers x 12 tensors + 4
    assert f"{(ckpt70m / 'model.safetensors').stat().st_size:,} bytes  (weights)" in out
    assert "tokenizer.json" in out
    assert "fp32" in out and "bf16" in out and "fp16" in out


def test_configs():
    result = run("configs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "layers", "d_model", "heads", "non-embedding", "total", "vocab",
                                "batch", "(tokens)", "lr"]
    assert lines[1].split() == ["pythia-14m", "6", "128", "4", "1,189,888", "14,067,712", "50304", "2,097,152", "1.0e-03"]
    assert lines[-1].split() == ["pythia-12b", "36", "5120", "40", "11,327,027,200", "11,846,072,320", "50688",
                                 "2,097,152", "1.2e-04"]
    assert len(lines) == 11


def test_help(capsys):
    result = subprocess.run([sys.executable, "-m", "neox_mini", "generate", "--help"], capture_output=True,
                            text=True, encoding="utf-8")
    assert result.returncode == 0 and "examples:" in result.stdout and "--model" in result.stdout
    for command in ("score", "info", "configs"):  # the same parser, in-process (no subprocess each)
        with pytest.raises(SystemExit) as exit:
            main([command, "--help"])
        assert exit.value.code == 0 and "example" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input


def test_model_folder_that_does_not_exist(tmp_path):
    assert_error(run("generate", "--model", str(tmp_path / "nowhere"), "Hi"),
                 "neox-mini generate: error:", f"{tmp_path / 'nowhere'}", "does not exist")


def test_missing_tokenizer_says_where_it_looked(tiny, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny / name, tmp_path / name)
    assert_error(run("generate", "--model", str(tmp_path), "Hi"),
                 f"no tokenizer.json: looked for {tmp_path.resolve() / 'tokenizer.json'}")


@pytest.mark.parametrize("args, fragments", [
    (["generate", ""], ["the prompt is empty"]),
    (["generate", "--top-p", "1.5", "Hi"], ["top_p must be in (0, 1]"]),
])
def test_bad_generate_arguments(tiny, args, fragments):
    assert_error(run(args[0], "--model", str(tiny), *args[1:]), *fragments)


def test_bad_files_to_score(tiny, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    assert_error(run("score", "--model", str(tiny), str(latin1)),
                 f"{latin1} is not UTF-8 text: byte 0xe9 at offset 3")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_error(run("score", "--model", str(tiny), str(empty)), f"{empty} is empty")


def test_bad_input_in_process(tiny, tmp_path, capsys):
    """More bad input through the same main() (in-process, to keep the suite fast)."""
    cases = [(["score", "--model", str(tiny), str(tmp_path / "missing.txt")], "missing.txt: no such file"),
             (["generate", "--model", str(tiny), "--temperature", "-1", "Hi"], "temperature must be >= 0"),
             (["generate", "--model", str(tiny), "--stop", "", "Hi"], "--stop needs a non-empty text"),
             (["generate", "--model", str(tiny), "-n", "2048", "--truncate", "Hi"],
              "-n 2048 leaves no room for the prompt in the context length 2048")]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_usage_errors_exit_2(tiny):
    result = run("generate", "--dtype", "fp64", "--model", str(tiny), "Hi")
    assert result.returncode == 2 and "invalid choice: 'fp64'" in result.stderr


def test_debug_after_or_before_the_subcommand_shows_the_traceback(tmp_path):
    for args in (["generate", "--debug"], ["--debug", "generate"]):
        result = run(*args, "--model", str(tmp_path / "nowhere"), "Hi")
        assert result.returncode != 0 and "Traceback" in result.stderr, args


@pytest.mark.parametrize("command", [["info"], ["parity"], ["score", "file.txt"]])
def test_every_model_command_accepts_debug_after_the_subcommand(tmp_path, command):
    result = run(*command[:1], "--debug", "--model", str(tmp_path / "nowhere"), *command[1:])
    assert result.returncode != 0 and "Traceback" in result.stderr, command


@pytest.mark.parametrize("command", [["revisions"], ["configs"]])
def test_a_reader_that_leaves_early_is_not_an_error(command):
    """`neox-mini revisions | head -1`: the pipe closes before the output is written."""
    proc = subprocess.Popen([console_script(), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the program (seconds to start) writes a byte
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr
