"""The lm-evaluation-harness adapter against lm-eval's own `--model hf` on the same checkpoint:
per request (log-likelihoods, is_greedy, generated strings) and per metric, on four local JSONL
tasks, one of each request type, with documents longer than the context; and `neox-mini eval`
over three cached revisions against three separate runs. Offline throughout."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'neox_mini[eval]')")
pytest.importorskip("accelerate", reason="lm-eval's --model hf needs accelerate (part of the [eval] extra)")

import lm_eval  # noqa: E402
from fake_hub import add_to_cache, folder_files  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import handle_non_serializable  # noqa: E402

from neox_mini import NeoXConfig  # noqa: E402
from neox_mini.cli import main  # noqa: E402
from neox_mini.lm_eval import EXAMPLE_TASKS, NeoXMiniLM, evaluate, example_tasks  # noqa: E402
from neox_mini.synthetic import write_random_checkpoint  # noqa: E402

TASKS = list(EXAMPLE_TASKS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_json):
    base = tmp_path_factory.mktemp("lm_eval")
    config = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
    checkpoint = write_random_checkpoint(base / "ckpt", config, tokenizer=tokenizer_json)
    return checkpoint, TaskManager(include_path=str(example_tasks(base / "tasks"))), base


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def responses(results, task):
    return [[r[0] for r in sample["resps"]] for sample in results["samples"][task]]


@pytest.mark.parametrize("max_length", [2048, 16])
def test_every_request_equals_lm_eval_hf(setup, max_length):
    checkpoint, tasks, _ = setup
    ours = lm_eval.simple_evaluate(
        model=NeoXMiniLM(pretrained=str(checkpoint), max_length=max_length),
        tasks=TASKS,
        task_manager=tasks,
        log_samples=True,
        batch_size=8,
    )
    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},dtype=float32,max_length={max_length}",
        tasks=TASKS,
        task_manager=tasks,
        log_samples=True,
        batch_size=8,
        device="cpu",
    )
    worst = 0.0
    for task in TASKS:
        a, b = responses(ours, task), responses(hf, task)
        assert len(a) == len(b) >= 20
        for x, y in zip(a, b, strict=True):
            for p, q in zip(x, y, strict=True):
                if isinstance(q, str):
                    assert p == q, (task, p, q)
                    continue
                (p_ll, p_greedy), (q_ll, q_greedy) = (
                    (p, None) if isinstance(p, float) else p,
                    (q, None) if isinstance(q, float) else q,
                )
                worst = max(worst, abs(p_ll - q_ll) / abs(q_ll))
                assert p_greedy == q_greedy, task
        for metric, value in hf["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert abs(ours["results"][task][metric] - value) <= 1e-6 * abs(value), (task, metric)
    assert worst <= 1e-6, f"worst relative difference of a log-likelihood: {worst:.3e}"


def test_eval_over_cached_revisions_equals_separate_runs(setup, tmp_path, monkeypatch, capsys):
    checkpoint, _, base = setup
    root = tmp_path / "hub"
    config = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)
    for seed, revision in enumerate(["step1000", "step2000", "step3000"]):
        folder = write_random_checkpoint(
            tmp_path / revision, config, seed=seed, tokenizer=checkpoint / "tokenizer.json"
        )
        add_to_cache(root, "EleutherAI/pythia-14m", folder_files(folder), [revision])
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    args = [
        "eval",
        "--model",
        "pythia-14m",
        "--tasks",
        "nm_ll,nm_gen",
        "--include-path",
        str(base / "tasks"),
        "--limit",
        "8",
    ]
    assert main(args + ["--revisions", "step1000:step3000:1000", "--out", str(tmp_path / "sweep")]) == 0
    printed = capsys.readouterr().out  # lm-eval prints notes of its own too
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert summary.splitlines()[0] == "| task | metric | step1000 | step2000 | step3000 |" and summary in printed
    _, tasks, _ = setup
    for revision in ["step1000", "step2000", "step3000"]:  # each alone: a fresh from_pretrained
        alone = evaluate("pythia-14m", ["nm_ll", "nm_gen"], [revision], limit=8, task_manager=tasks)[revision]
        swept = json.loads((tmp_path / "sweep" / f"{revision}.json").read_text())
        assert swept["results"] == json.loads(json.dumps(alone["results"], default=handle_non_serializable))
        assert swept["neox_mini"]["revision"] == revision and len(swept["neox_mini"]["commit_sha"]) == 40
