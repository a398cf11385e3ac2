"""The `neox-mini` command line, checked against transformers and the Python API.

Most tests call `main(argv)` in-process (what the console script runs, without a torch start-up
per test); a few smoke tests run the installed console script in a real subprocess: end-to-end
generation and a reader that closes the pipe early.

Padded vocabulary and the comparison with transformers: our generation never emits ids >= 50,277
(the padded embedding rows), transformers' argmax looks at all 50,304 rows. On these random weights
transformers never picks a padded row (asserted below), so the plain `generate(do_sample=False)`
output is the fair reference and no masking is needed on its side.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from neox_mini import NeoXConfig, from_pretrained, generate
from neox_mini.cli import main
from neox_mini.scoring import window_spans
from neox_mini.synthetic import write_random_checkpoint
from neox_mini.tokenizer import EOS_ID, Tokenizer


def console_script() -> str:
    """The installed `neox-mini` entry point next to this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).parent / "neox-mini"
    found = str(beside) if beside.is_file() else shutil.which("neox-mini")
    assert found, "the neox-mini console script is not installed: run `pip install -e .`"
    return found


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, encoding="utf-8", env=env, timeout=600
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys, monkeypatch):
    """Run `neox-mini ARGS` in-process: main(argv) as the console script calls it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args: str, stdin: str | bytes | None = None) -> Result:
        capsys.readouterr()  # drop anything printed before
        if stdin is not None:
            data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: usage errors (2) and --help (0)
            code = e.code
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_json) -> Path:
    """Real vocabulary and context length (2048), tiny width: cheap, but real prompts and files."""
    config = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), config, tokenizer=tokenizer_json)


@pytest.fixture(scope="module")
def hf_greedy(tiny) -> str:
    """What transformers' generate(do_sample=False) decodes for "Hello, I am" + 40 tokens."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
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


def test_greedy_prints_what_transformers_decodes(tiny, hf_greedy):
    """End to end, through the installed console script in a real process."""
    result = run_script("generate", "--greedy", "-n", "40", "--model", str(tiny), "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy + "\n"
    assert len(hf_greedy) > len("Hello, I am") + 40  # 40 tokens really were generated


def test_greedy_in_process_and_stop_string(run, tiny, hf_greedy):
    result = run("generate", "--greedy", "-n", "40", "--model", str(tiny), "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy + "\n"
    stop = hf_greedy[30:34]  # four characters well inside the greedy continuation
    result = run("generate", "--greedy", "-n", "40", "--model", str(tiny), "--stop", stop, "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy[: hf_greedy.index(stop)] + "\n"


def test_compiled_greedy_prints_the_same(run, tiny, hf_greedy, monkeypatch):
    """--compile: the same text, and the compile time on stderr. In-process, so the compiled graph
    of this tiny model is the only one; refused before loading under torchrun."""
    import torch

    torch._dynamo.reset()
    result = run("generate", "--greedy", "--compile", "-n", "40", "--model", str(tiny), "Hello, I am")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy + "\n"
    assert "compiled the decode step in" in result.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run("generate", "--compile", "--model", str(tiny / "missing"), "Hello")
    assert_error(result, "--compile with tensor parallelism is not supported")
    result = run("generate", "--compile-mode", "max-autotune", "--model", str(tiny / "missing"), "Hello")
    assert_error(result, "--compile with tensor parallelism is not supported")


def test_seeded_sampling_is_reproducible(run, tiny):
    args = [
        "generate",
        "--model",
        str(tiny),
        "--seed",
        "7",
        "--temperature",
        "0.8",
        "--top-k",
        "50",
        "-n",
        "20",
        "Hello, I am",
    ]
    first, second = run(*args), run(*args)
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    # ... and it is the Python API's output for the same seed.
    model = from_pretrained(tiny)
    tok = Tokenizer(tiny)
    ids = generate(model, torch.tensor([tok.encode("Hello, I am")]), 20, temperature=0.8, top_k=50, seed=7)[0]
    new = ids[4:].tolist()
    if EOS_ID in new:
        new = new[: new.index(EOS_ID)]
    assert first.stdout == tok.decode(ids[:4].tolist() + new) + "\n"
    other = generate(model, ids[None, :4], 20, temperature=0.8, top_k=50, seed=8)[0]
    assert not torch.equal(other, ids)  # the seed matters


def test_prompt_from_stdin(run, tiny):
    piped = run("generate", "--greedy", "-n", "8", "--model", str(tiny), "-", stdin="Hello, I am")
    assert piped.returncode == 0, piped.stderr
    model, tok = from_pretrained(tiny), Tokenizer(tiny)
    ids = generate(model, torch.tensor([tok.encode("Hello, I am")]), 8)[0].tolist()
    assert EOS_ID not in ids and piped.stdout == tok.decode(ids) + "\n"


def test_prompt_longer_than_the_context(run, tiny, tokenizer):
    prompt = "word " * 2100  # 2100 tokens + the trailing space
    n_tokens = len(tokenizer.encode(prompt))
    result = run("generate", "--greedy", "-n", "5", "--model", str(tiny), prompt)
    assert_error(
        result,
        f"the prompt is {n_tokens} tokens; with -n 5 that is {n_tokens + 5} > the context length 2048",
        "--truncate",
    )
    result = run("generate", "--greedy", "-n", "5", "--truncate", "--model", str(tiny), prompt)
    assert result.returncode == 0, result.stderr
    assert f"prompt truncated from {n_tokens} to its last 2043 tokens" in result.stderr
    # The echo starts at the first kept token (" word"), and fewer than the 2100 words remain.
    assert result.stdout.startswith(" word word") and result.stdout.count("word") < 2100


# ----------------------------------------------------------------------------- score


def test_score_matches_transformers_loss(run, tiny, tmp_path):
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
        labels[:, : first - begin] = -100  # context only
        with torch.no_grad():
            nll += reference(window, labels=labels).loss.double().item() * (end - first)
        count += end - first
    assert got["tokens"] == count == len(ids) - 1
    assert got["windows"] == len(spans) >= 2
    assert got["bytes"] == len(text.encode("utf-8"))
    assert abs(got["nll_per_token"] - nll / count) <= 1e-4 * nll / count
    assert got["bits_per_byte"] == pytest.approx(nll / 0.6931471805599453 / got["bytes"], rel=1e-4)


# ----------------------------------------------------------------------------- info, configs, help


def test_info(run, tmp_path, tokenizer_json):
    """On a random checkpoint in the real pythia-14m shape: the table row is recognised."""
    folder = write_random_checkpoint(tmp_path / "14m", NeoXConfig.from_pythia("14m"), tokenizer=tokenizer_json)
    result = run("info", "--model", str(folder))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"path                     {folder.resolve()}" in out
    assert "pythia-14m: 14,067,712 total, 1,189,888 non-embedding: match" in out
    assert "total                    14,067,712" in out
    assert "float32: 76" in out  # 6 layers x 12 tensors + 4
    assert f"{(folder / 'model.safetensors').stat().st_size:,} bytes  (weights)" in out
    assert "tokenizer.json" in out
    assert "fp32" in out and "bf16" in out and "fp16" in out


def test_configs(run):
    result = run("configs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "name",
        "layers",
        "d_model",
        "heads",
        "non-embedding",
        "total",
        "vocab",
        "batch",
        "(tokens)",
        "lr",
        "seed",
        "runs",
    ]
    assert lines[1].split() == [
        "pythia-14m",
        "6",
        "128",
        "4",
        "1,189,888",
        "14,067,712",
        "50304",
        "2,097,152",
        "1.0e-03",
        "seed1-9",
    ]
    assert lines[4].split()[-3:] == ["seed1-9,", "data-seed1-3,", "weight-seed1-3"]  # pythia-160m
    assert lines[-1].split() == [
        "pythia-12b",
        "36",
        "5120",
        "40",
        "11,327,027,200",
        "11,846,072,320",
        "50688",
        "2,097,152",
        "1.2e-04",
        "-",
    ]
    assert len(lines) == 11


def test_help(run):
    for command in ("generate", "score", "info", "configs", "revisions", "parity"):
        result = run(command, "--help")
        assert result.returncode == 0 and "example" in result.stdout, command


# ----------------------------------------------------------------------------- bad input


def test_model_folder_that_does_not_exist(run, tmp_path):
    assert_error(
        run("generate", "--model", str(tmp_path / "nowhere"), "Hi"),
        "neox-mini generate: error:",
        f"{tmp_path / 'nowhere'}",
        "does not exist",
    )


def test_missing_tokenizer_says_where_it_looked(run, tiny, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny / name, tmp_path / name)
    assert_error(
        run("generate", "--model", str(tmp_path), "Hi"),
        f"no tokenizer.json: looked for {tmp_path.resolve() / 'tokenizer.json'}",
    )


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["generate", ""], ["the prompt is empty"]),
        (["generate", "--top-p", "1.5", "Hi"], ["top_p must be in (0, 1]"]),
    ],
)
def test_bad_generate_arguments(run, tiny, args, fragments):
    assert_error(run(args[0], "--model", str(tiny), *args[1:]), *fragments)


def test_bad_files_to_score(run, tiny, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    assert_error(run("score", "--model", str(tiny), str(latin1)), f"{latin1} is not UTF-8 text: byte 0xe9 at offset 3")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_error(run("score", "--model", str(tiny), str(empty)), f"{empty} is empty")


def test_more_bad_input(tiny, tmp_path, capsys):
    cases = [
        (["score", "--model", str(tiny), str(tmp_path / "missing.txt")], "missing.txt: no such file"),
        (["generate", "--model", str(tiny), "--temperature", "-1", "Hi"], "temperature must be >= 0"),
        (["generate", "--model", str(tiny), "--stop", "", "Hi"], "--stop needs a non-empty text"),
        (
            ["generate", "--model", str(tiny), "-n", "2048", "--truncate", "Hi"],
            "-n 2048 leaves no room for the prompt in the context length 2048",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_usage_errors_exit_2(run, tiny):
    result = run("generate", "--dtype", "fp64", "--model", str(tiny), "Hi")
    assert result.returncode == 2 and "invalid choice: 'fp64'" in result.stderr


def test_debug_before_or_after_any_subcommand_raises_instead_of_one_line(tmp_path, monkeypatch):
    """--debug lets the exception through (the console script then prints its traceback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nowhere = str(tmp_path / "nowhere")
    for argv in (
        ["generate", "--debug", "--model", nowhere, "Hi"],
        ["--debug", "generate", "--model", nowhere, "Hi"],
        ["info", "--debug", "--model", nowhere],
        ["parity", "--debug", "--model", nowhere],
        ["score", "--debug", "--model", nowhere, str(tmp_path / "file.txt")],
    ):
        with pytest.raises(Exception, match="does not exist|no such file"):
            main(argv)


def test_a_reader_that_leaves_early_is_not_an_error():
    """`neox-mini revisions | head -1`: the pipe closes before the output is written."""
    proc = subprocess.Popen([console_script(), "revisions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the program writes a byte
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr


# ----------------------------------------------------------------------------- lens, attention


def test_lens_prints_every_layer_at_every_position(run, tiny):
    result = run("lens", "--model", str(tiny), "--top", "2", "Hello, I am")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("position")] == [
        "position 0 'Hello': next token",
        "position 1 ',': next token",
        "position 2 ' I': next token",
        "position 3 ' am': next token",
    ]
    assert len(lines) == 4 * (1 + 3)  # per position: the header, the embedding, 2 layers
    assert lines[1].split()[0] == "embed" and lines[3].split()[:2] == ["layer", "1"]


def test_attention_prints_where_each_head_looks(run, tiny):
    result = run("attention", "--model", str(tiny), "--layer", "1", "--head", "3", "Hello, I am")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "layer 1 head 3" and len(lines) == 5
    assert lines[1].split("->")[1].strip().startswith("0 'Hello' 1.00")  # the first token sees only itself
    bad = run("attention", "--model", str(tiny), "--layer", "2", "Hi")
    assert bad.returncode == 1 and "layer 2 does not exist: this model has layers 0..1" in bad.stderr


def test_plots_are_written_or_refused_in_one_line(run, tiny, tmp_path):
    lens = run("lens", "--model", str(tiny), "--plot", str(tmp_path / "lens.png"), "Hello, I am")
    heads = run("attention", "--model", str(tiny), "--layer", "0", "--plot", str(tmp_path / "a.png"), "Hi there")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        for result in (lens, heads):
            assert result.returncode == 1 and "plots need matplotlib" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        return
    assert lens.returncode == heads.returncode == 0
    for name in ("lens.png", "a.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
