#!/usr/bin/env python
"""Write a random-weight GPT-NeoX checkpoint in the exact Hugging Face folder layout.

For demos, tests and benchmarks on machines without the real Pythia weights: the shapes are those
of the real model, the weights are random (seeded), the layout is what the Hub serves.

    python scripts/make_checkpoint.py --size 70m --out /tmp/pythia-70m-random \\
        --tokenizer ../shared/tokenizer/gpt-neox-20b/tokenizer.json
    python scripts/make_checkpoint.py --hidden-size 64 --num-layers 2 --num-heads 4 --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import sys

from neox_mini import NeoXConfig
from neox_mini.synthetic import write_random_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument(
        "--size", help="a Pythia size (14m, 70m, 160m, ...); default 14m unless custom shape flags are given"
    )
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--intermediate-size", type=int, help="default 4 x hidden size")
    p.add_argument("--vocab-size", type=int, default=50304)
    p.add_argument("--rotary-pct", type=float, default=0.25)
    p.add_argument("--max-position-embeddings", type=int, default=2048, help="context length (default 2048)")
    p.add_argument("--sequential-residual", action="store_true", help="use_parallel_residual=false")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default="safetensors", choices=["safetensors", "bin"])
    p.add_argument("--max-shard-mb", type=float, help="shard the weights (writes an index.json)")
    p.add_argument("--tokenizer", help="a tokenizer.json to copy into the folder")
    a = p.parse_args(argv)
    custom = [a.hidden_size, a.num_layers, a.num_heads]
    config = None
    if any(v is not None for v in custom):
        if a.size or not all(v is not None for v in custom):
            p.error("give either --size or all of --hidden-size, --num-layers, --num-heads")
        config = NeoXConfig(
            vocab_size=a.vocab_size,
            hidden_size=a.hidden_size,
            num_layers=a.num_layers,
            num_heads=a.num_heads,
            intermediate_size=a.intermediate_size or 4 * a.hidden_size,
            rotary_pct=a.rotary_pct,
            use_parallel_residual=not a.sequential_residual,
            max_position_embeddings=a.max_position_embeddings,
        )
    shard = int(a.max_shard_mb * 2**20) if a.max_shard_mb else None
    config = config or NeoXConfig.from_pythia(a.size or "14m")
    out = write_random_checkpoint(
        a.out, config, dtype=a.dtype, seed=a.seed, weights=a.weights, max_shard_bytes=shard, tokenizer=a.tokenizer
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
