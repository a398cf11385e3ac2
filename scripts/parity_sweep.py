#!/usr/bin/env python
"""Run the parity check (neox_mini vs transformers) over many models, revisions, dtypes and GELUs,
and write one report: REPORT.json (every full report) and REPORT.md (one table row per run).

    # real checkpoints (Hub names resolve in the Hugging Face cache, see neox_mini/hub.py):
    python scripts/parity_sweep.py --models EleutherAI/pythia-14m EleutherAI/pythia-160m-deduped \\
        --revisions main step3000 --dtypes fp32 bf16 --out sweep
    # random-weight checkpoints of given shapes (no Hub access needed):
    python scripts/parity_sweep.py --synthetic tiny 14m 70m --dtypes fp32 bf16 --gelus erf tanh --out sweep

A run that cannot be done (model not cached, bad file, ...) becomes an ERROR row; the sweep goes on.
Exit status 0 when every run passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from neox_mini import NeoXConfig
from neox_mini.parity import run_parity
from neox_mini.synthetic import write_random_checkpoint

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"
# "tiny": a 2-layer model with the full vocabulary (so real text tokenizes into it), seconds to check.
TINY = NeoXConfig(vocab_size=50304, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256)


def make_synthetic(size: str, folder: Path, tokenizer: Path | None) -> Path:
    """A random-weight checkpoint of a Pythia size ("14m", "70m", ...) or "tiny", seed 0."""
    config = TINY if size == "tiny" else NeoXConfig.from_pythia(size)
    return write_random_checkpoint(
        folder / f"synthetic-{size}",
        config,
        dtype="fp32",
        seed=0,
        tokenizer=tokenizer if tokenizer and tokenizer.is_file() else None,
    )


def run_one(model: str, revision: str | None, dtype: str, gelu: str | None, label: str) -> dict:
    row = {"model": label, "revision": revision or "", "dtype": dtype, "gelu": gelu or "checkpoint's"}
    start = time.perf_counter()
    try:
        report = run_parity(model, revision=revision, dtype=dtype, gelu=gelu)
    except Exception as e:  # one bad run must not end the sweep: record it
        row.update(status="ERROR", error=" ".join(str(e).split()) or type(e).__name__)
    else:
        first = report.first_divergence
        layers = [s for s in report.stats if s.name != "logits"]
        worst = max(layers, key=lambda s: s.rel_error)
        row.update(
            status="PASS" if report.passed else "FAIL",
            tolerance=report.tolerance,
            logits_rel_error=report.stats[-1].rel_error,
            worst_layer=worst.name,
            worst_layer_rel_error=worst.rel_error,
            first_divergence=first.name if first else None,
            **report.next_token,
            report=report.to_dict(),
        )
    row["seconds"] = round(time.perf_counter() - start, 2)
    print(
        f"{row['status']:5}  {label} {revision or ''} {dtype} gelu={row['gelu']}  ({row['seconds']} s)"
        + (f"  {row['error']}" if "error" in row else ""),
        flush=True,
    )
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# neox_mini parity sweep, {meta['date']}",
        "",
        f"torch {meta['torch']}, transformers {meta['transformers']}, device cpu. "
        "rel error = max |ours - transformers| / max |transformers| (see neox_mini/parity.py).",
        "",
        "| model | revision | dtype | gelu | status | tolerance | logits rel error | worst layer (rel error) "
        "| KL mean (nats) | top-1 | top-5 | first divergence | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] == "ERROR":
            lines.append(
                f"| {r['model']} | {r['revision']} | {r['dtype']} | {r['gelu']} | ERROR | "
                f"{r['error'].replace('|', '/')} | | | | | | | {r['seconds']} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['revision']} | {r['dtype']} | {r['gelu']} | {r['status']} | "
            f"{r['tolerance']:g} | {r['logits_rel_error']:.2e} | {r['worst_layer']} "
            f"({r['worst_layer_rel_error']:.2e}) | {r['kl_mean']:.2e} | {100 * r['top1_agreement']:.1f}% | "
            f"{100 * r['top5_agreement']:.1f}% | {r['first_divergence'] or '-'} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[], help="checkpoint folders or Hub names")
    p.add_argument("--revisions", nargs="*", default=[None], help="revisions of each Hub model (default: main)")
    p.add_argument("--synthetic", nargs="*", default=[], help="random-weight checkpoints: tiny, 14m, 70m, ...")
    p.add_argument("--dtypes", nargs="*", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    p.add_argument(
        "--gelus",
        nargs="*",
        default=[None],
        choices=["erf", "tanh"],
        help="override neox_mini's GELU (default: the checkpoint's)",
    )
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer.json for synthetic checkpoints")
    p.add_argument("--out", required=True, help="report path without extension: writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    if not a.models and not a.synthetic:
        p.error("give --models and/or --synthetic")

    import transformers  # the sweep compares with transformers: fail here, before any work, if missing

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.synthetic:
            try:
                folder = make_synthetic(size, Path(tmp), Path(a.tokenizer))
            except Exception as e:
                rows.append(
                    {
                        "model": f"synthetic {size}",
                        "revision": "",
                        "dtype": "",
                        "gelu": "",
                        "status": "ERROR",
                        "error": " ".join(str(e).split()),
                        "seconds": 0,
                    }
                )
                continue
            for dtype in a.dtypes:
                for gelu in a.gelus:
                    rows.append(run_one(str(folder), None, dtype, gelu, f"synthetic {size}"))
            shutil.rmtree(folder)
        for model in a.models:
            for revision in a.revisions:
                for dtype in a.dtypes:
                    for gelu in a.gelus:
                        rows.append(run_one(model, revision, dtype, gelu, model))

    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({**meta, "runs": rows}, indent=2, default=str) + "\n", encoding="utf-8"
    )
    out.with_suffix(".md").write_text(markdown(rows, meta), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0 if all(r["status"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
