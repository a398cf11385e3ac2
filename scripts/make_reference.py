#!/usr/bin/env python
"""Write golden parity reference files with transformers (the `parity` extra must be installed).

A reference file holds the inputs, transformers' outputs on them (top-k logits + logsumexp per
position, a subset of every layer's residual stream + its norm) and where they came from; later,
`neox-mini parity --reference FILE` checks neox_mini against it with no transformers installed.

    # a reference for any checkpoint (a folder or a Hub name):
    python scripts/make_reference.py --model EleutherAI/pythia-160m --revision step3000 --out ref.safetensors

    # regenerate the golden fixtures in tests/golden/ (run once; the files are committed):
    python scripts/make_reference.py --golden

The golden fixtures are made on synthetic checkpoints that the tests rebuild from a seed (no
weights are stored): the recipe (config, seed, dtype) and a checksum of the weights are written
into each file's metadata, so a test can rebuild the checkpoint and prove it is the same one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path

from neox_mini import GPTNeoX, NeoXConfig
from neox_mini.checkpoint import save_checkpoint
from neox_mini.errors import ParityError
from neox_mini.golden import tensors_sha256
from neox_mini.parity import run_parity
from neox_mini.synthetic import random_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "golden"
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"

# The golden fixtures. Tiny shapes keep the files small (about 100 KB each); the full 50,304-row
# vocabulary keeps the real tokenizer's ids valid, so the inputs include real text. Together the
# two cover both residual forms, both GELUs (hidden_act "gelu" = erf, "gelu_new" = tanh), two
# rotary fractions and bases, a stored channel subset (16 of 32, + norms) and a whole stream.
GOLDEN = {
    "tiny-parallel": dict(
        config=NeoXConfig(vocab_size=50304, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=128),
        seed=1,
        texts=None,
        top_k=32,
        channels=16,
    ),
    "tiny-sequential": dict(
        config=NeoXConfig(
            vocab_size=50304,
            hidden_size=32,
            num_layers=4,
            num_heads=2,
            intermediate_size=96,
            rotary_pct=0.5,
            rotary_base=500.0,
            use_parallel_residual=False,
            gelu="tanh",
        ),
        seed=2,
        texts=["Hello, I am", "My favorite food is"],
        top_k=16,
        channels=32,
    ),
}


def build_synthetic(folder: Path, config: NeoXConfig, seed: int) -> GPTNeoX:
    """A random fp32 checkpoint from (config, seed): torch.Generator only, so it is the same in every
    process (tests/test_parity_tool.py rebuilds it the same way and checks the checksum)."""
    model = random_model(config, seed=seed)
    save_checkpoint(model, folder)
    return model


def make_golden(name: str, tokenizer: Path, out_dir: Path = GOLDEN_DIR) -> Path:
    recipe = GOLDEN[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        model = build_synthetic(folder, recipe["config"], recipe["seed"])
        shutil.copyfile(tokenizer, folder / "tokenizer.json")
        extra = {
            "synthetic_recipe": json.dumps(
                {"config": dataclasses.asdict(recipe["config"]), "seed": recipe["seed"], "dtype": "float32"}
            ),
            "weights_sha256": tensors_sha256(model.state_dict()),
            "made_by": "scripts/make_reference.py --golden",
        }
        report = run_parity(
            folder,
            texts=recipe["texts"],
            save_reference_to=out_dir / f"{name}.safetensors",
            top_k=recipe["top_k"],
            max_channels=recipe["channels"],
            extra_metadata=extra,
        )
    print(report.format_table(), end="\n\n")
    if not report.passed:  # a golden file must come from a checkpoint where both implementations agree
        raise SystemExit(f"{name}: neox_mini and transformers disagree; not writing a golden file")
    return Path(report.saved_reference)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="checkpoint folder or Hub name")
    what.add_argument("--golden", action="store_true", help=f"regenerate the fixtures in {GOLDEN_DIR}")
    p.add_argument("--revision")
    p.add_argument("--out", help="the reference file to write (with --model)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="transformers' dtype")
    p.add_argument("--prompts", help="UTF-8 file, one prompt per line, instead of the built-in texts")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer.json for --golden")
    a = p.parse_args(argv)
    try:
        if a.golden:
            tokenizer = Path(a.tokenizer)
            if not tokenizer.is_file():
                p.error(f"no tokenizer at {tokenizer}: pass --tokenizer PATH/tokenizer.json")
            for name in GOLDEN:
                print(f"wrote {make_golden(name, tokenizer)}")
            return 0
        if not a.out:
            p.error("--model needs --out FILE")
        report = run_parity(
            a.model,
            revision=a.revision,
            reference_dtype=a.dtype,
            prompts=a.prompts,
            save_reference_to=a.out,
            top_k=a.top_k,
            max_channels=a.channels,
        )
    except ParityError as e:
        print(f"make_reference: error: {e}", file=sys.stderr)
        return 2
    print(report.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
