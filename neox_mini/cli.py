"""The `neox-mini` command line: a thin argparse layer over plain functions.

Each subcommand is a `cmd_<name>(args) -> int` function plus an `add_<name>_parser(sub)` builder.
Heavy imports (torch, tokenizers) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

# Every subcommand's add_<name>_parser, appended by each section below, in `--help` order.
SUBCOMMANDS: list = []


# ============================================================ generate / score / info / configs (issue #3)
# ============================================================ end issue #3


# ============================================================ revisions (issue #4)
# ============================================================ end issue #4


# ============================================================ parity (issue #5)

PARITY_EXAMPLES = """\
exit status: 0 every activation within the tolerance of our dtype, 1 some activation is over it
(the first one is named), 2 the check could not run (bad or mismatched reference file, ...).

examples:
  neox-mini parity --model /tmp/pythia-70m-random                 # against transformers, fp32
  neox-mini parity --model EleutherAI/pythia-160m --revision step3000 --dtype bf16
  neox-mini parity --model DIR --save-reference ref.safetensors   # also write a golden file
  neox-mini parity --model DIR --reference ref.safetensors        # no transformers needed
  neox-mini parity --model DIR --gelu tanh --json                 # NeoX's training-time GELU
"""


def add_parity_parser(sub) -> None:
    p = sub.add_parser("parity", help="check neox_mini layer by layer against transformers or a reference file",
                       description="Run neox_mini and a reference on the same inputs and report, for the "
                                   "embeddings, every layer's residual stream, the final layer norm and the "
                                   "logits: max abs / relative error and NMSE; for the next token: KL "
                                   "divergence and top-1 / top-5 agreement; and the first layer over the "
                                   "tolerance.",
                       epilog=PARITY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint folder or Hub name (default: the one a --reference file "
                                   "records, else EleutherAI/pythia-14m)")
    p.add_argument("--revision", help="Hub revision (branch, tag such as step3000, or commit sha)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="neox_mini's dtype (default fp32); the tolerance is chosen by it")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--against", choices=["transformers"],
                       help="compare with transformers' GPTNeoXForCausalLM (the default; needs the parity extra)")
    which.add_argument("--reference", metavar="FILE", help="compare with a golden file from --save-reference")
    p.add_argument("--save-reference", metavar="OUT", help="also write transformers' outputs to OUT (safetensors)")
    p.add_argument("--reference-dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="transformers' dtype (default fp32)")
    p.add_argument("--prompts", metavar="FILE", help="UTF-8 file, one prompt per line, instead of the built-in texts")
    p.add_argument("--gelu", choices=["erf", "tanh"],
                   help="override neox_mini's GELU (transformers keeps the checkpoint's, exact erf for Pythia)")
    p.add_argument("--top-k", type=int, default=64, help="logits kept per position in a saved reference (default 64)")
    p.add_argument("--channels", type=int, default=64,
                   help="residual-stream channels kept per layer in a saved reference (default 64)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_parity)


def cmd_parity(args) -> int:
    from .parity import EXIT_DIVERGED, EXIT_ERROR, load_reference, run_parity

    try:
        model, revision = args.model, args.revision
        if model is None and args.reference:
            # The file records what it was made from: check that model (at the recorded commit).
            meta = load_reference(args.reference).metadata
            model = meta.get("repo_id") or meta.get("path") or None
            revision = revision or meta.get("commit_sha") or meta.get("revision") or None
            if model is None:
                raise ValueError(f"{args.reference} does not record its model: give --model")
        report = run_parity(model or "EleutherAI/pythia-14m", revision=revision, dtype=args.dtype,
                            against=None if args.reference else "transformers", reference=args.reference,
                            save_reference_to=args.save_reference, reference_dtype=args.reference_dtype,
                            prompts=args.prompts, gelu=args.gelu, device=args.device, top_k=args.top_k,
                            max_channels=args.channels)
    except Exception as e:  # exit 2, distinct from "ran, but diverged" (1); one line unless --debug
        if args.debug:
            raise
        print(f"neox-mini parity: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    print(report.to_json() if args.json else report.format_table())
    return 0 if report.passed else EXIT_DIVERGED


SUBCOMMANDS.append(add_parity_parser)
# ============================================================ end issue #5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neox-mini", description="GPT-NeoX / Pythia in pure PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        print(f"neox-mini {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
