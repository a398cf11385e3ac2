"""The `neox-mini` command line: a thin argparse layer over plain functions.

Each subcommand is a `cmd_<name>(args) -> int` function plus an `add_<name>_parser(sub)` builder;
SUBCOMMANDS near the end lists them in `--help` order. Heavy imports (torch, tokenizers) happen
inside the commands, so `--help`, `configs` and `revisions` start without torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from .text_input import read_text_file, utf8_text

DEFAULT_MODEL = "EleutherAI/pythia-14m"

# Options every subcommand accepts after its name. `--debug` is also accepted before the subcommand
# (build_parser); SUPPRESS keeps a subparser's default from overwriting the value given there.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors")


def add_model_options(
    p: argparse.ArgumentParser,
    dtype_help: str,
    *,
    model_default: str | None = DEFAULT_MODEL,
    model_help: str = f"(default {DEFAULT_MODEL})",
    dtype_default: str | None = None,
    device_default: str | None = None,
    device_help: str = "(default: cuda when available, else cpu)",
    tokenizer: bool = True,
) -> None:
    """--model, --revision, --dtype, --device (and --tokenizer): the options of every model command."""
    p.add_argument(
        "--model",
        default=model_default,
        help=f"checkpoint folder, or a Hub name such as EleutherAI/pythia-160m {model_help}",
    )
    p.add_argument("--revision", help="Hub revision: branch, tag such as step3000, or commit sha")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16", "auto"],
        default=dtype_default,
        help=f"{dtype_help}; auto: bf16 on a CPU with native bf16 (AMX, AVX-512 BF16), else fp32",
    )
    p.add_argument("--device", default=device_default, help=f"cpu, cuda, cuda:1, ... {device_help}")
    if tokenizer:
        p.add_argument(
            "--tokenizer",
            metavar="PATH",
            help="tokenizer.json, or a folder holding it (default: the one in the model folder)",
        )


def add_quantize_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="weight-only int8 after loading (per-row scales; see docs/performance.md for its accuracy); "
        "`neox-mini quantize` saves it once",
    )


def add_command(sub, name: str, func, **parser_options) -> argparse.ArgumentParser:
    """The subcommand `name`, run by func(args); it accepts --debug after its name, and its examples
    (the epilog) print as written."""
    p = sub.add_parser(name, parents=[COMMON], formatter_class=argparse.RawDescriptionHelpFormatter, **parser_options)
    p.set_defaults(func=func)
    return p


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def model_from_args(args, default_dtype: str | None = "fp32"):
    """from_pretrained with the CLI's model options. dtype: --dtype, else default_dtype on CPU
    (fp16 matmuls are slow there) and the stored dtype on a GPU; default_dtype None = stored."""
    import torch

    from . import distributed

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or (default_dtype if torch.device(device).type == "cpu" else None)
    # Under torchrun, the model split over its ranks (tensor parallelism); else all of it here.
    model = distributed.load(args.model, revision=args.revision, dtype=dtype, device=device)
    if getattr(args, "quantize", None):
        if model.shards > 1:
            raise ValueError("--quantize with tensor parallelism is not supported: use one or the other")
        model.quantize(args.quantize)
    return model


def tokenizer_from_args(args, model):
    """--tokenizer, else tokenizer.json in the folder the model was loaded from."""
    from pathlib import Path

    from .tokenizer import Tokenizer

    return Tokenizer(args.tokenizer or Path(model.provenance["path"]))


GENERATE_EXAMPLES = """\
The prompt is printed, then the continuation as it is produced. Generation stops after -n tokens,
at <|endoftext|> (unless --ignore-eos) or at a --stop string (neither is printed).

examples:
  neox-mini generate --model /tmp/pythia-70m-random -n 40 "Hello, I am"
  neox-mini generate --model EleutherAI/pythia-160m --greedy "The capital of France is"
  neox-mini generate --seed 7 --temperature 0.8 --top-k 50 "Once upon a time"   # reproducible
  neox-mini generate --top-p 0.9 --repetition-penalty 1.2 --stop "\\n\\n" "Q: Why? A:"
  echo "a long prompt" | neox-mini generate --truncate -
"""


def add_generate_parser(sub) -> None:
    p = add_command(
        sub,
        "generate",
        cmd_generate,
        help="generate text from a prompt (streamed)",
        description="Generate a continuation of PROMPT and stream it to stdout.",
        epilog=GENERATE_EXAMPLES,
    )
    p.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads it from stdin)")
    add_model_options(p, "fp32, bf16 or fp16 (default: fp32 on CPU, the stored dtype on a GPU)")
    add_quantize_option(p)
    p.add_argument(
        "--compile",
        action="store_const",
        const="default",
        help="decode through torch.compile: tens of seconds to compile the first time (cached after), "
        "faster per token after; see docs/performance.md",
    )
    p.add_argument(
        "--compile-mode",
        dest="compile",
        choices=("default", "max-autotune"),  # fast.COMPILE_MODES, which would import torch here
        help="--compile in this mode. max-autotune (CPU): weights frozen into the compiled step and "
        "a kernel built for each: faster still, for half a minute to two of compiling at every start and "
        "the weights' size again in memory",
    )
    p.add_argument(
        "-n",
        "--max-new-tokens",
        type=non_negative_int,
        default=100,
        metavar="N",
        help="tokens to generate at most (default 100)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=200, help="sample from the k likeliest tokens (default 200)")
    p.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this much probability")
    p.add_argument("--seed", type=int, help="seed for sampling: the same seed gives the same text")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (temperature 0)")
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 discourages tokens already in the text (CTRL-style; default 1 = off)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when this text is produced (repeatable; backslash escapes such as \\n work)",
    )
    p.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|>")
    p.add_argument(
        "--bos", action="store_true", help="prepend <|endoftext|> (id 0) to the prompt; Pythia adds none by default"
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="if prompt + N exceeds the context, keep the prompt's last tokens instead of failing",
    )


def unescape(text: str) -> str:
    """A stop string as typed on a shell: backslash-n, backslash-t and double backslash -> the characters."""
    import re

    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def cmd_generate(args) -> int:
    from . import distributed
    from .generation import check_sampling_args, stream_text
    from .tokenizer import EOS_ID

    # Everything that can be checked without the model is checked first: bad input fails fast.
    prompt = utf8_text(sys.stdin.buffer.read(), "the prompt on stdin") if args.prompt == "-" else args.prompt
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # an argument with bytes that are not UTF-8 arrives with surrogates
        raise ValueError("the prompt is not UTF-8 text (it holds bytes that are not UTF-8)") from None
    if prompt == "" and not args.bos:
        raise ValueError("the prompt is empty: give some text, or --bos to start from <|endoftext|>")
    sampling = dict(
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
    )
    check_sampling_args(args.max_new_tokens, sampling["temperature"], args.top_k, args.top_p, args.repetition_penalty)
    stops = [unescape(s) for s in args.stop]
    if "" in stops:
        raise ValueError("--stop needs a non-empty text")
    if args.compile and distributed.world_size() > 1:
        raise ValueError("--compile with tensor parallelism is not supported: use one or the other")
    model = model_from_args(args)
    tokenizer = tokenizer_from_args(args, model)
    ids = tokenizer.encode(prompt, bos=args.bos)
    echo_from = 1 if args.bos else 0  # the --bos token is not echoed
    if model.quantization:  # here rather than as a silent pause inside the first generation
        from .fast import choose_int8_decode_kernels

        if seconds := choose_int8_decode_kernels(model, batch_size=1):
            print(f"timed this machine's int8 decode kernels in {seconds:.1f} s (once)", file=sys.stderr)
    if args.compile:
        from .fast import compile_decode

        seconds = compile_decode(model, mode=args.compile)
        print(f"compiled the decode step in {seconds:.1f} s", file=sys.stderr)

    context, n = model.config.max_position_embeddings, args.max_new_tokens
    if len(ids) + n > context:
        if not args.truncate:
            raise ValueError(
                f"the prompt is {len(ids)} tokens; with -n {n} that is {len(ids) + n} > the "
                f"context length {context}: shorten the prompt, lower -n, or pass --truncate"
            )
        if n >= context:
            raise ValueError(f"-n {n} leaves no room for the prompt in the context length {context}")
        print(f"note: prompt truncated from {len(ids)} to its last {context - n} tokens", file=sys.stderr)
        ids = ids[len(ids) - (context - n) :]
        echo_from = 0  # a --bos token was cut off with the start of the prompt

    # Echo the prompt as the tokenizer reads it (what a one-shot decode of prompt + output shows),
    # without a --bos token.
    print(tokenizer.decode(ids[echo_from:]), end="", flush=True)
    for piece in stream_text(
        model, tokenizer, ids, n, stop=stops, eos_id=None if args.ignore_eos else EOS_ID, **sampling
    ):
        print(piece, end="", flush=True)
    print()
    return 0


SCORE_EXAMPLES = """\
Every token of FILE is scored, the first one conditioned on <|endoftext|> (as documents began in
Pythia's training). Texts longer than the window are scored with a sliding window: each window
advances by --stride tokens, and each token is scored once, with the tokens before it in its
window as context.

examples:
  neox-mini score --model EleutherAI/pythia-160m book.txt
  neox-mini score --model /tmp/pythia-70m-random --stride 512 --json notes.txt
"""


def add_score_parser(sub) -> None:
    p = add_command(
        sub,
        "score",
        cmd_score,
        help="perplexity and bits per byte of a text file",
        description="Perplexity, tokens scored and bits per byte of a UTF-8 text file.",
        epilog=SCORE_EXAMPLES,
    )
    p.add_argument("file", metavar="FILE", help="a UTF-8 text file")
    add_model_options(p, "fp32, bf16 or fp16 (default: fp32 on CPU, the stored dtype on a GPU)")
    add_quantize_option(p)
    p.add_argument("--window", type=positive_int, help="tokens per forward pass (default: the context length)")
    p.add_argument("--stride", type=positive_int, help="tokens the window advances by (default: half the window)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")


def cmd_score(args) -> int:
    import json

    from .scoring import score_text

    text = read_text_file(args.file)  # before loading the model: a bad file fails fast
    model = model_from_args(args)
    tokenizer = tokenizer_from_args(args, model)
    s = score_text(model, tokenizer, text, window=args.window, stride=args.stride)
    numbers = {
        "file": args.file,
        "tokens": s.tokens,
        "bytes": s.bytes,
        "nll_per_token": s.mean_nll,
        "perplexity": s.perplexity,
        "bits_per_byte": s.bits_per_byte,
        "window": s.window,
        "stride": s.stride,
        "windows": s.windows,
    }
    if args.json:
        print(json.dumps(numbers))
        return 0
    print(f"file            {args.file} ({s.bytes:,} bytes)")
    print(f"tokens scored   {s.tokens:,} ({s.windows} windows of <= {s.window} tokens, stride {s.stride})")
    print(f"loss            {s.mean_nll:.6f} nats/token")
    print(f"perplexity      {s.perplexity:.6g}")
    print(f"bits per byte   {s.bits_per_byte:.6f}")
    return 0


INFO_EXAMPLES = """\
examples:
  neox-mini info --model /tmp/pythia-70m-random
  neox-mini info --model EleutherAI/pythia-1b --revision step143000
"""


def add_info_parser(sub) -> None:
    p = add_command(
        sub,
        "info",
        cmd_info,
        help="what a checkpoint holds: config, params, dtypes, files, memory",
        description="Where the model came from, its config, total and non-embedding parameters "
        "(checked against the Pythia table), stored dtypes, files and bytes, and "
        "the memory it needs per dtype.",
        epilog=INFO_EXAMPLES,
    )
    add_model_options(p, "dtype to load in (default: the stored one)")


def cmd_info(args) -> int:
    import dataclasses
    from pathlib import Path

    from . import pythia
    from .checkpoint import stored_dtypes

    model = model_from_args(args, default_dtype=None)
    cfg = model.config
    print("provenance")
    for key, value in model.provenance.items():
        if key != "files":
            print(f"  {key:<24} {value}")

    print("config")
    for field in dataclasses.fields(cfg):
        print(f"  {field.name:<24} {getattr(cfg, field.name)}")

    total = cfg.num_params()  # counted from the config: int8 weights (quantize.py) are buffers
    embedding = 2 * cfg.vocab_size * cfg.hidden_size  # embed_in and the untied embed_out
    print("parameters")
    print(f"  total                    {total:,}")
    print(f"  non-embedding            {total - embedding:,}  (without embed_in and the untied embed_out)")
    row = pythia.row_with_architecture(**dataclasses.asdict(cfg))
    if row is None:
        print("  Pythia table             no row has this architecture")
    else:
        want = pythia.table()[row]
        ok = total == want["params_total"] and total - embedding == want["params_non_embedding"]
        print(
            f"  Pythia table             {row}: {want['params_total']:,} total, "
            f"{want['params_non_embedding']:,} non-embedding: {'match' if ok else 'MISMATCH'}"
        )

    files = model.provenance["files"]
    print("stored dtypes (tensors)  " + ", ".join(f"{d}: {n}" for d, n in stored_dtypes(list(files)).items()))
    print("files")
    folder = Path(model.provenance["path"])
    for f in sorted(folder.iterdir()):
        if f.is_file():
            print(f"  {f.name:<40} {f.stat().st_size:>16,} bytes{'  (weights)' if str(f) in files else ''}")
    print(f"  {'weights total':<40} {sum(files.values()):>16,} bytes")

    # Weights, plus the KV cache for one full-context sequence: 2 (k and v) x layers x context x C.
    kv = 2 * cfg.num_layers * cfg.max_position_embeddings * cfg.hidden_size
    print(f"memory (weights + KV cache of one {cfg.max_position_embeddings}-token sequence)")
    for name, nbytes in (("fp32", 4), ("bf16", 2), ("fp16", 2)):
        print(f"  {name:<6} {total * nbytes / 2**20:>12,.1f} MiB + {kv * nbytes / 2**20:,.1f} MiB")
    return 0


def add_configs_parser(sub) -> None:
    add_command(
        sub,
        "configs",
        cmd_configs,
        help="the Pythia table (sizes, params, training hyper-parameters)",
        description="The Pythia suite as in neox_mini/pythia.toml (batch size and learning "
        "rate as in the model card) and the seed runs of each size.",
        epilog="example:\n  neox-mini configs",
    )


def cmd_configs(args) -> int:
    from . import pythia  # stdlib only: no torch import for this command

    header = (
        "name",
        "layers",
        "d_model",
        "heads",
        "non-embedding",
        "total",
        "vocab",
        "batch (tokens)",
        "lr",
        "seed runs",
    )
    rows = [
        (
            name,
            r["num_layers"],
            r["hidden_size"],
            r["num_heads"],
            f"{r['params_non_embedding']:,}",
            f"{r['params_total']:,}",
            r["vocab_size"],
            f"{r['batch_size_tokens']:,}",
            f"{r['learning_rate']:.1e}",
            seed_runs_summary(r["seed_runs"]),
        )
        for name, r in pythia.table().items()
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        print(
            "  ".join(
                str(x).ljust(w) if i == 0 else str(x).rjust(w)
                for i, (x, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    return 0


def seed_runs_summary(runs: list[str]) -> str:
    """["seed1", ..., "seed9", "data-seed1", ...] -> "seed1-9, data-seed1-3" (the name suffixes)."""
    groups: dict[str, list[int]] = {}
    for run in runs:
        stem = run.rstrip("0123456789")
        groups.setdefault(stem, []).append(int(run[len(stem) :]))
    return ", ".join(f"{stem}{min(n)}-{max(n)}" if len(n) > 1 else f"{stem}{n[0]}" for stem, n in groups.items()) or "-"


REVISIONS_EPILOG = """\
examples:
  neox-mini revisions                              all 154: name, step, tokens seen
  neox-mini revisions --cached pythia-160m         the revisions of EleutherAI/pythia-160m on disk
  neox-mini generate --model pythia-160m --revision step3000 "Hello"

Each step is 1,024 sequences x 2,048 tokens = 2,097,152 tokens; main is step143000.
Short names: pythia-160m, 160m, pythia-160m-deduped, 160m-deduped, pythia-70m-seed3 -> EleutherAI/pythia-...
"""


def add_revisions_parser(sub) -> None:
    p = add_command(
        sub,
        "revisions",
        cmd_revisions,
        help="the 154 Pythia training checkpoints (step <-> tokens)",
        description="List the checkpoints every Pythia model has as a Hub branch, or, with "
        "--cached, the revisions of one model already in the Hugging Face cache.",
        epilog=REVISIONS_EPILOG,
    )
    p.add_argument(
        "--cached",
        metavar="MODEL",
        help="a Hub name (EleutherAI/pythia-160m, pythia-160m): list its revisions in the cache, "
        "with commit, state and known issues",
    )


def cmd_revisions(args) -> int:
    from .pythia import FINAL_STEP, REVISIONS, known_issues_for, revision_step, step_to_tokens  # stdlib only

    if args.cached is None:
        lines = [
            f"{name:<11} {revision_step(name):>8,} {step_to_tokens(revision_step(name)):>16,} tokens"
            + ("  (= main)" if revision_step(name) == FINAL_STEP else "")
            for name in REVISIONS
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        return 0

    from .errors import ResolveError
    from .hub import cache_root, cached_revisions, hub_repo_id

    repo_id = hub_repo_id(args.cached)
    if repo_id is None:
        raise ResolveError(
            f"--cached takes a Hub name such as EleutherAI/pythia-160m or pythia-160m, not {args.cached!r}"
        )
    revisions = cached_revisions(repo_id)
    for r in revisions:
        step = revision_step(r.ref) if r.ref else None
        tokens = f"{step_to_tokens(step):,} tokens" if step is not None else ""
        issues = [i["id"] for i in known_issues_for(repo_id, [r.ref])] if r.ref else []
        state = "complete" if r.problem is None else f"INCOMPLETE: {r.problem}"
        print(
            f"{r.ref or '(no ref)':<11} {'' if step is None else f'{step:,}':>8} {tokens:>23}  {r.commit[:12]}  "
            f"{state}" + (f"  KNOWN ISSUE: {', '.join(issues)}" if issues else "")
        )
    print(f"{len(revisions)} revision(s) of {repo_id} in {cache_root()}", file=sys.stderr)
    return 0


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
    p = add_command(
        sub,
        "parity",
        cmd_parity,
        help="check neox_mini layer by layer against transformers or a reference file",
        description="Run neox_mini and a reference on the same inputs and report, for the "
        "embeddings, every layer's residual stream, the final layer norm and the "
        "logits: max abs / relative error and NMSE; for the next token: KL "
        "divergence and top-1 / top-5 agreement; and the first layer over the "
        "tolerance.",
        epilog=PARITY_EXAMPLES,
    )
    add_model_options(
        p,
        "neox_mini's dtype (default fp32); the tolerance is chosen by it",
        model_default=None,
        model_help=f"(default: the one a --reference file records, else {DEFAULT_MODEL})",
        dtype_default="fp32",
        device_default="cpu",
        device_help="(default cpu)",
        tokenizer=False,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--against",
        choices=["transformers"],
        help="compare with transformers' GPTNeoXForCausalLM (the default; needs the parity extra)",
    )
    which.add_argument("--reference", metavar="FILE", help="compare with a golden file from --save-reference")
    p.add_argument("--save-reference", metavar="OUT", help="also write transformers' outputs to OUT (safetensors)")
    p.add_argument(
        "--reference-dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="transformers' dtype (default fp32)"
    )
    p.add_argument("--prompts", metavar="FILE", help="UTF-8 file, one prompt per line, instead of the built-in texts")
    p.add_argument(
        "--gelu",
        choices=["erf", "tanh"],
        help="override neox_mini's GELU (transformers keeps the checkpoint's, exact erf for Pythia)",
    )
    p.add_argument("--top-k", type=int, default=64, help="logits kept per position in a saved reference (default 64)")
    p.add_argument(
        "--channels",
        type=int,
        default=64,
        help="residual-stream channels kept per layer in a saved reference (default 64)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_parity(args) -> int:
    from .golden import load_reference
    from .parity import EXIT_DIVERGED, EXIT_ERROR, run_parity

    try:
        model, revision = args.model, args.revision
        if model is None and args.reference:
            # The file records what it was made from: check that model (at the recorded commit).
            meta = load_reference(args.reference).metadata
            model = meta.get("repo_id") or meta.get("path") or None
            revision = revision or meta.get("commit_sha") or meta.get("revision") or None
            if model is None:
                raise ValueError(f"{args.reference} does not record its model: give --model")
        report = run_parity(
            model or DEFAULT_MODEL,
            revision=revision,
            dtype=args.dtype,
            against=None if args.reference else "transformers",
            reference=args.reference,
            save_reference_to=args.save_reference,
            reference_dtype=args.reference_dtype,
            prompts=args.prompts,
            gelu=args.gelu,
            device=args.device,
            top_k=args.top_k,
            max_channels=args.channels,
        )
    except Exception as e:  # exit 2, distinct from "ran, but diverged" (1); one line unless --debug
        if args.debug:
            raise
        print(f"neox-mini parity: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    print(report.to_json() if args.json else report.format_table())
    return 0 if report.passed else EXIT_DIVERGED


LENS_EXAMPLES = """\
For each position of the text, each layer's residual stream (the embedding first, the model's
real output last) is read through the final layer norm and unembedding: the tokens it would
predict next, with their probabilities.

examples:
  neox-mini lens --model EleutherAI/pythia-160m "The Eiffel Tower is in the city of"
  neox-mini lens --model /tmp/pythia-70m-random --top 3 --plot lens.png "Hello, I am"
"""


def add_lens_parser(sub) -> None:
    p = add_command(
        sub,
        "lens",
        cmd_lens,
        help="the logit lens: what each layer predicts at each position",
        description="The logit lens: each layer's top next-token predictions at each position.",
        epilog=LENS_EXAMPLES,
    )
    p.add_argument("text", metavar="TEXT", help="the text to read ('-' reads it from stdin)")
    add_model_options(p, "fp32, bf16 or fp16 (default: fp32 on CPU, the stored dtype on a GPU)")
    p.add_argument("--top", type=positive_int, default=3, help="tokens shown per layer and position (default 3)")
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw the probability of the final prediction per layer "
        "and position (needs matplotlib: pip install 'neox_mini[plot]')",
    )


def text_ids(args, tokenizer, model):
    """The TEXT argument (or stdin) as a [1, T] tensor of ids on the model's device."""
    import torch

    text = utf8_text(sys.stdin.buffer.read(), "the text on stdin") if args.text == "-" else args.text
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: nothing to read")
    if len(ids) > model.config.max_position_embeddings:
        raise ValueError(
            f"the text is {len(ids)} tokens, longer than the context {model.config.max_position_embeddings}"
        )
    return torch.tensor([ids], device=model.embed_out.weight.device)


def cmd_lens(args) -> int:
    from .analysis import logit_lens, plot_lens

    model = model_from_args(args)
    tokenizer = tokenizer_from_args(args, model)
    ids = text_ids(args, tokenizer, model)
    probs, top = logit_lens(model, ids, args.top)  # each [L + 1, T, top]
    labels = [tokenizer.decode([i]) for i in ids[0].tolist()]
    names = ["embed"] + [f"layer {i}" for i in range(model.config.num_layers)]
    width = max(len(n) for n in names)
    for pos, label in enumerate(labels):
        print(f"position {pos} {label!r}: next token")
        for layer, name in enumerate(names):
            guesses = ", ".join(
                f"{tokenizer.decode([i]) if i < tokenizer.vocab_size else f'<row {i}>'!r} {p:.3g}"
                for p, i in zip(probs[layer, pos].tolist(), top[layer, pos].tolist(), strict=True)
            )
            print(f"  {name:<{width}}  {guesses}")
    if args.plot:
        print(f"wrote {plot_lens(model, ids, labels, args.plot)}", file=sys.stderr)
    return 0


ATTENTION_EXAMPLES = """\
examples:
  neox-mini attention --model EleutherAI/pythia-160m --layer 3 "When Mary and John went to the store"
  neox-mini attention --model /tmp/pythia-70m-random --layer 0 --head 2 --plot heads.png "Hello, I am"
"""


def add_attention_parser(sub) -> None:
    p = add_command(
        sub,
        "attention",
        cmd_attention,
        help="attention patterns of one layer: where each head looks",
        description="For each head of one layer and each position: the positions it attends to most.",
        epilog=ATTENTION_EXAMPLES,
    )
    p.add_argument("text", metavar="TEXT", help="the text to read ('-' reads it from stdin)")
    add_model_options(p, "fp32, bf16 or fp16 (default: fp32 on CPU, the stored dtype on a GPU)")
    p.add_argument("--layer", type=int, required=True, help="the layer (0 = first)")
    p.add_argument("--head", type=int, help="only this head (default: every head)")
    p.add_argument("--top", type=positive_int, default=2, help="key positions shown per query (default 2)")
    p.add_argument("--plot", metavar="PNG", help="also draw each head's pattern as a heat map (needs matplotlib)")


def cmd_attention(args) -> int:
    from .analysis import attention_patterns, plot_attention

    model = model_from_args(args)
    tokenizer = tokenizer_from_args(args, model)
    ids = text_ids(args, tokenizer, model)
    pattern = attention_patterns(model, ids, args.layer)  # [heads, T, T]
    heads = range(pattern.shape[0]) if args.head is None else [args.head]
    if args.head is not None and not 0 <= args.head < pattern.shape[0]:
        raise ValueError(f"head {args.head} does not exist: layer {args.layer} has heads 0..{pattern.shape[0] - 1}")
    labels = [tokenizer.decode([i]) for i in ids[0].tolist()]
    for h in heads:
        print(f"layer {args.layer} head {h}")
        for q, label in enumerate(labels):
            top = pattern[h, q].topk(min(args.top, q + 1))
            looks = ", ".join(
                f"{k} {labels[k]!r} {p:.2f}" for p, k in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            )
            print(f"  {q:>4} {label!r:<16} -> {looks}")
    if args.plot:
        print(f"wrote {plot_attention(pattern[list(heads)], args.plot, args.layer)}", file=sys.stderr)
    return 0


SWEEP_EXAMPLES = """\
what each kind writes (OUT is a path without extension):
  logprobs      OUT.npy  float32 [revisions, sequences, tokens - 1]; OUT.csv mean log-prob per revision
  memorization  OUT.safetensors exact / matched / correct; OUT.csv memorized fraction per revision
  weights       OUT.safetensors relative_change / cosine / identical [pairs, tensors];
                OUT.csv per pair of consecutive revisions
and OUT.json: the provenance of every revision (commit sha, step, tokens seen, known issues) and
what was skipped. Revisions: names, ranges "step1000:step143000:1000", "all", "every=N".
Under `torchrun --nproc-per-node N -m neox_mini sweep ...` the revisions are split over the ranks
(gloo on CPU, NCCL on GPU) and rank 0 writes the same files as one process.

examples:
  neox-mini sweep logprobs --model pythia-160m --revisions every=10000 --text book.txt --out lp
  neox-mini sweep memorization --model pythia-70m --revisions step0:step143000:13000 --tokens seqs.npy --out mem
  neox-mini sweep weights --model runs/ --revisions all --out diffs
"""


def add_sweep_parser(sub) -> None:
    p = add_command(
        sub,
        "sweep",
        cmd_sweep,
        help="per-token log-probs, memorization or weight changes across training checkpoints",
        description="Run one measurement over many revisions of a model, with one model object whose "
        "weights are swapped in place.",
        epilog=SWEEP_EXAMPLES,
    )
    p.add_argument("kind", choices=["logprobs", "memorization", "weights"])
    p.add_argument("--model", required=True, help="a Hub name, or a folder whose subfolders are revisions")
    p.add_argument("--revisions", required=True, help="names, stepA:stepB:by ranges, all, every=N (comma-separated)")
    p.add_argument("--out", required=True, help="output path without extension")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--text", metavar="FILE", help="a UTF-8 text, cut into sequences of --length tokens")
    which.add_argument("--tokens", metavar="FILE.npy", help="an [N, T] integer array of token ids")
    which.add_argument("--jsonl", metavar="FILE", help='one {"text": ...} or {"tokens": [...]} per line')
    p.add_argument(
        "--length", type=positive_int, default=64, help="tokens per sequence for --text/--jsonl (default 64)"
    )
    p.add_argument("--prefix", type=positive_int, default=32, help="memorization prefix (default 32)")
    p.add_argument("--continuation", type=positive_int, default=32, help="memorization continuation (default 32)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: the stored dtype")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json (default: the first revision's)")
    p.add_argument(
        "--offline", action="store_true", help="only what is cached (as HF_HUB_OFFLINE=1); say what is skipped"
    )
    p.add_argument("--plot", metavar="PNG", help="draw the summary against tokens seen (needs matplotlib)")
    p.add_argument(
        "--tensor-parallel",
        action="store_true",
        help="under torchrun: split each revision's model over the ranks (for models too big for one device) "
        "instead of giving each rank whole revisions",
    )


def cmd_sweep(args) -> int:
    import os

    from . import sweep_cli

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if args.kind != "weights" and not (args.text or args.tokens or args.jsonl):
        raise ValueError(f"sweep {args.kind} needs sequences: --text, --tokens or --jsonl")
    return sweep_cli.run(args)


EVAL_EXAMPLES = """\
Runs lm-evaluation-harness (pip install 'neox_mini[eval]') with neox_mini as the model, over one
revision or several (one model object, weights swapped in place), and writes OUT/<revision>.json
(lm-eval's results, plus the revision's provenance under "neox_mini") and OUT/summary.md.

examples:
  neox-mini eval --model pythia-70m --tasks lambada_openai --out results
  neox-mini eval --model pythia-160m --revisions every=20000 --tasks piqa,arc_easy --out sweep
  neox-mini eval --model /tmp/pythia-70m-random --tasks my_task --include-path tasks/ --limit 20 --out r
"""


def add_eval_parser(sub) -> None:
    p = add_command(
        sub,
        "eval",
        cmd_eval,
        help="lm-evaluation-harness tasks over one or more revisions",
        description="Evaluate with lm-evaluation-harness, as the Pythia paper did.",
        epilog=EVAL_EXAMPLES,
    )
    p.add_argument("--model", required=True, help="checkpoint folder or Hub name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--revision", help="one Hub revision")
    which.add_argument("--revisions", help="several: names, stepA:stepB:by, all, every=N (comma-separated)")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated")
    p.add_argument("--include-path", metavar="DIR", help="a folder of task YAML files (lm-eval's --include_path)")
    p.add_argument("--out", required=True, help="folder for the results")
    p.add_argument("--limit", type=positive_int, help="documents per task (for a quick look)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-length", type=positive_int, help="context length (default: the model's)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")


def cmd_eval(args) -> int:
    try:
        from .lm_eval import evaluate
    except ImportError as e:
        raise ImportError(f"neox-mini eval needs lm-evaluation-harness: pip install 'neox_mini[eval]' ({e})") from None
    from .sweep import parse_revisions, revision_folders

    if args.revisions:
        revisions = parse_revisions(args.revisions, revision_folders(args.model))
    else:
        revisions = [args.revision] if args.revision else [None]
    results = evaluate(
        args.model,
        args.tasks.split(","),
        revisions,
        include_path=args.include_path,
        out=args.out,
        max_length=args.max_length,
        batch_size=args.batch_size,
        limit=args.limit,
        dtype=args.dtype,
    )
    from .lm_eval import summary_table

    print(summary_table(results), end="")
    return 0


PLAN_EXAMPLES = """\
Weights are exact (every tensor's bytes, split as tensor parallelism over N devices splits them);
the KV cache, activations and workspace are estimates whose formulas neox_mini/plan.py states.
Nothing is downloaded: a Pythia name uses the table, a folder its config.json.

examples:
  neox-mini plan --model pythia-12b --dtype bf16
  neox-mini plan --model pythia-12b --dtype bf16 --devices 2 --context 2048 --batch 8
"""


def add_plan_parser(sub) -> None:
    p = add_command(
        sub,
        "plan",
        cmd_plan,
        help="memory per device from the config alone: weights, KV cache, activations",
        description="The memory each device needs for a model, and whether it fits.",
        epilog=PLAN_EXAMPLES,
    )
    p.add_argument("--model", required=True, help="a Pythia name or a checkpoint folder")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16")
    p.add_argument("--devices", type=positive_int, default=1, help="tensor-parallel devices (default 1)")
    p.add_argument("--context", type=positive_int, help="tokens per sequence (default: the model's context)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--device", default="cpu", help="where it would run, for the memory available (default cpu)")


def cmd_plan(args) -> int:
    from pathlib import Path

    from .config import NeoXConfig
    from .plan import available_memory, plan

    folder = Path(args.model).expanduser()
    config = NeoXConfig.from_hf(folder) if folder.is_dir() else NeoXConfig.from_pythia(args.model)
    p = plan(config, args.dtype, devices=args.devices, context=args.context, batch=args.batch)
    have = available_memory(args.device)
    gib = 2**30
    print(
        f"{args.model}: {config.num_params():,} parameters, {args.dtype}, {args.devices} device(s), "
        f"batch {p.batch} x {p.context} tokens; per device:"
    )
    for name, value in (
        ("weights", p.weights),
        ("KV cache", p.kv_cache),
        ("activations", p.activations),
        ("workspace", p.workspace),
        ("total", p.total),
    ):
        print(f"  {name:<12} {value / gib:>10.2f} GiB  ({value:,} bytes)")
    # On the CPU the ranks share one machine's memory; a GPU each has its own.
    need = p.total * (args.devices if args.device == "cpu" else 1)
    fits = need <= have
    where = (
        f"{args.devices} ranks on this machine need {need / gib:.2f} GiB; "
        if args.device == "cpu" and args.devices > 1
        else ""
    )
    print(f"  {where}{args.device} has {have / gib:.2f} GiB: {'fits' if fits else 'does NOT fit'}")
    return 0 if fits else 1


QUANTIZE_EXAMPLES = """\
examples:
  neox-mini quantize --model EleutherAI/pythia-410m --out ~/models/pythia-410m-int8
  neox-mini generate --model ~/models/pythia-410m-int8 "The capital of France is"
"""


def add_quantize_parser(sub) -> None:
    p = add_command(
        sub,
        "quantize",
        cmd_quantize,
        help="save a weight-only int8 copy of a model",
        description="Quantize every linear layer's weights to int8 (one scale per output row) and save the "
        "model as a checkpoint folder (config.json, model.safetensors, and tokenizer.json when the source "
        "has one) that loads like any other.",
        epilog=QUANTIZE_EXAMPLES,
    )
    add_model_options(
        p, "dtype of the scales and the float weights (default: as stored)", model_default=None, tokenizer=False
    )
    p.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")


def cmd_quantize(args) -> int:
    import shutil
    from pathlib import Path

    from .checkpoint import save_checkpoint

    if not args.model:
        raise ValueError("--model is required")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder: nothing was written")
    model = model_from_args(args, default_dtype=None).quantize("int8")
    written = save_checkpoint(model, out)
    source = Path(model.provenance["path"]) / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, out / "tokenizer.json")
        written.append(out / "tokenizer.json")
    for f in written:
        print(f"wrote {f} ({f.stat().st_size:,} bytes)")
    return 0


SUBCOMMANDS = [
    add_generate_parser,
    add_score_parser,
    add_info_parser,
    add_configs_parser,
    add_revisions_parser,
    add_parity_parser,
    add_lens_parser,
    add_attention_parser,
    add_sweep_parser,
    add_eval_parser,
    add_plan_parser,
    add_quantize_parser,
]


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
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: every rank runs this, rank 0 prints
    if rank > 0 and args.command != "sweep":  # (sweep's ranks print their own progress)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    try:
        code = args.func(args)
        sys.stdout.flush()
        end_distributed()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `neox-mini revisions | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush is silent
        return 0
    except Exception as e:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        where = f" (rank {rank})" if rank > 0 else ""
        print(f"neox-mini {args.command}: error{where}: {e}", file=sys.stderr)
        return 1


def end_distributed() -> None:
    """Leave the process group, if a command joined one (torch is imported by then)."""
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
