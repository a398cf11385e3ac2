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
