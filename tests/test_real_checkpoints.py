"""Checks on the real Pythia weights: run when they are on this machine, skipped (with the reason)
when they are not. Nothing here downloads anything.

Where real weights are looked for:
  * NEOX_MINI_PYTHIA_DIR: a folder of checkpoint folders named like the Hub repos
    (pythia-70m/, pythia-410m-deduped/, ...; each config.json + weights + tokenizer.json),
    or one such checkpoint folder itself;
  * the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub):
    the snapshot that refs/main points to in models--EleutherAI--pythia-*.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from neox_mini import NeoXConfig, from_pretrained, generate
from neox_mini.checkpoint import WEIGHT_FILES
from neox_mini.parity import TOLERANCES, run_parity
from neox_mini.tokenizer import Tokenizer

# transformers' own integration test (tests/models/gpt_neox/test_modeling_gpt_neox.py,
# GPTNeoXLanguageGenerationTest.test_lm_generate_gptneox): EleutherAI/pythia-410m-deduped at main,
# greedy, max_new_tokens=20, batch_decode of prompt + continuation.
PROMPT = "My favorite food is"
EXPECTED = "My favorite food is a good old-fashioned, old-fashioned, old-fashioned.\n\nI'm not sure"


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in WEIGHT_FILES)


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def find_pythia() -> dict[str, Path]:
    """{repo name ("pythia-410m-deduped"): checkpoint folder} of every real Pythia found."""
    found: dict[str, Path] = {}
    env = os.environ.get("NEOX_MINI_PYTHIA_DIR")
    if env:
        root = Path(env)
        candidates = [root] if _is_checkpoint(root) else sorted(root.iterdir()) if root.is_dir() else []
        found.update({c.name: c for c in candidates if c.name.startswith("pythia-") and _is_checkpoint(c)})
    cache = _hub_cache()
    for repo in sorted(cache.glob("models--EleutherAI--pythia-*")) if cache.is_dir() else []:
        ref = repo / "refs" / "main"
        if ref.is_file():
            snapshot = repo / "snapshots" / ref.read_text().strip()
            if _is_checkpoint(snapshot):
                found.setdefault(repo.name.split("--")[-1], snapshot)
    return found


MODELS = find_pythia()
NOT_FOUND = (
    "no real Pythia weights on this machine: set NEOX_MINI_PYTHIA_DIR to a folder of checkpoint "
    f"folders (pythia-70m/, ...), or put EleutherAI/pythia-* snapshots in the Hugging Face cache "
    f"({_hub_cache()})"
)


def models_or_skip(names):
    names = sorted(names, key=lambda n: NeoXConfig.from_hf(MODELS[n]).num_params())
    return names or [pytest.param(None, marks=pytest.mark.skip(reason=NOT_FOUND))]


def skip_if_too_big(folder: Path, copies: int) -> None:
    """Two fp32 copies of pythia-12b need ~96 GB: skip, saying so, where memory is short."""
    need = NeoXConfig.from_hf(folder).num_params() * 4 * copies
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.8 * have:
        pytest.skip(
            f"{folder.name}: {copies} fp32 copies need ~{need / 2**30:.0f} GiB, this machine has {have / 2**30:.0f} GiB"
        )


@pytest.mark.parametrize("name", models_or_skip(MODELS))
def test_parity_against_transformers(name):
    pytest.importorskip("transformers", reason="the parity extra (transformers) is not installed")
    folder = MODELS[name]
    skip_if_too_big(folder, copies=2)
    report = run_parity(folder, dtype="fp32")
    print(report.format_table())
    assert report.tolerance == TOLERANCES["float32"]
    assert report.passed, f"{name}: first divergence at {report.first_divergence}"
    assert report.next_token["top1_agreement"] == 1.0


@pytest.mark.parametrize("name", models_or_skip(MODELS)[:1])
def test_gelu_tanh_vs_erf_on_real_weights(name):
    """The known NeoX/HF discrepancy, measured on the smallest real model found (see README)."""
    pytest.importorskip("transformers", reason="the parity extra (transformers) is not installed")
    folder = MODELS[name]
    skip_if_too_big(folder, copies=2)
    report = run_parity(folder, dtype="fp32", gelu="tanh")
    print(report.format_table())
    stats = {s.name: s for s in report.stats}
    assert stats["gpt_neox.embed_in"].max_abs == 0.0
    assert stats["logits"].max_abs > 0.0  # training's tanh GELU is not what transformers computes
    assert report.next_token["kl_mean"] < 1e-2  # ... but it is a small difference


@pytest.mark.skipif(
    "pythia-410m-deduped" not in MODELS, reason="EleutherAI/pythia-410m-deduped (main) not found: " + NOT_FOUND
)
def test_pythia_410m_deduped_greedy_generation_matches_transformers_integration_test():
    folder = MODELS["pythia-410m-deduped"]
    model = from_pretrained(folder, dtype="fp32")  # transformers' test runs in fp32
    tokenizer = Tokenizer(folder)
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    assert ids.tolist() == [[3220, 7583, 2739, 310]]
    out = generate(model, ids, max_new_tokens=20)
    assert tokenizer.decode(out[0].tolist()) == EXPECTED


# The Pythia numbers to expect from lm-evaluation-harness on real weights: pythia-70m (main)
# lambada_openai, as reported in lm-evaluation-harness PR #658. The task downloads its dataset,
# so this runs only where both the weights and the dataset are at hand.
LAMBADA_PYTHIA_70M = {"perplexity": 141.28, "acc": 0.1842}


@pytest.mark.skipif("pythia-70m" not in MODELS, reason=NOT_FOUND)
def test_pythia_70m_lambada_as_published():
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'neox_mini[eval]')")
    import lm_eval

    from neox_mini.lm_eval import NeoXMiniLM

    try:  # the task's dataset comes from the Hub: without it (offline, nothing cached) there is no test
        import datasets

        datasets.load_dataset("EleutherAI/lambada_openai", "default", split="test")
    except Exception as e:
        pytest.skip(f"the lambada_openai dataset is not available here: {type(e).__name__}")
    results = lm_eval.simple_evaluate(
        model=NeoXMiniLM(pretrained=str(MODELS["pythia-70m"])), tasks=["lambada_openai"], batch_size=16
    )
    got = results["results"]["lambada_openai"]
    assert got["perplexity,none"] == pytest.approx(LAMBADA_PYTHIA_70M["perplexity"], abs=0.01)
    assert got["acc,none"] == pytest.approx(LAMBADA_PYTHIA_70M["acc"], abs=1e-4)
