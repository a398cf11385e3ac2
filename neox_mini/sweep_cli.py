"""`neox-mini sweep`: reading the sequences, splitting the revisions over torchrun's ranks, and
writing the result files (see the command's --help for what each kind writes).

Launched by `torchrun --nproc-per-node N` (WORLD_SIZE > 1), each rank takes every N-th revision
(every N-th pair of consecutive revisions for `weights`), computes it with the same API a single
process uses, and rank 0 gathers the pieces (torch.distributed.gather_object, gloo on CPU, NCCL
on GPU) back into revision order: the files are byte for byte those of one process. With
--tensor-parallel every revision is instead loaded split over the N ranks (distributed.py), for a
model that does not fit one device; rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import pythia, sweep
from .text_input import read_text_file


def read_sequences(args, first_folder: Path) -> torch.Tensor:
    """The [N, T] ids the sweep reads, from --tokens, --text or --jsonl."""
    if args.tokens:
        array = np.load(args.tokens, allow_pickle=False)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{args.tokens}: expected an [N, T] integer array, got {array.dtype} {list(array.shape)}")
        return torch.from_numpy(array.astype(np.int64))
    from .tokenizer import Tokenizer

    tokenizer = Tokenizer(args.tokenizer or first_folder)
    T = args.length if args.kind == "logprobs" else max(args.length, args.prefix + args.continuation)
    if args.text:
        ids = tokenizer.encode(read_text_file(args.text), bos=True)
        rows = [ids[i : i + T] for i in range(0, len(ids) - T + 1, T)]
        if not rows:
            raise ValueError(f"{args.text} has {len(ids)} tokens, fewer than one sequence of {T}")
        return torch.tensor(rows)
    rows, short = [], 0
    for number, line in enumerate(Path(args.jsonl).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ids = record["tokens"] if "tokens" in record else tokenizer.encode(record["text"], bos=True)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f'{args.jsonl} line {number}: expected {{"text": ...}} or {{"tokens": [...]}} ({e})'
            ) from None
        if len(ids) < T:
            short += 1
            continue
        rows.append(list(ids[:T]))
    if short:
        print(f"note: {short} line(s) of {args.jsonl} are shorter than {T} tokens and were left out", file=sys.stderr)
    if not rows:
        raise ValueError(f"{args.jsonl}: no line has {T} tokens")
    return torch.tensor(rows)


def tensor_parallel_mesh(args):
    """--tensor-parallel under torchrun: the mesh every revision is split over (else None)."""
    if not args.tensor_parallel:
        return None
    if args.kind == "weights":
        raise ValueError("--tensor-parallel: the weights sweep loads no model (its ranks split the pairs)")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise ValueError("--tensor-parallel splits each model over torchrun's ranks: start the sweep with torchrun")
    from . import distributed

    return distributed.init_mesh("cuda" if torch.cuda.is_available() else "cpu")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks; sets up torch.distributed under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def gather(piece, rank: int, world: int) -> list | None:
    """Every rank's piece on rank 0 (in rank order); None on the other ranks."""
    if world == 1:
        return [piece]
    import torch.distributed as dist

    pieces = [None] * world if rank == 0 else None
    dist.gather_object(piece, pieces, dst=0)
    return pieces


def run(args) -> int:
    mesh = tensor_parallel_mesh(args)
    rank, world = rank_and_world()
    split = 1 if mesh is not None else world  # revisions per rank: all of them when each model is split
    names = sweep.parse_revisions(args.revisions, sweep.revision_folders(args.model))
    skipped: list[str] = []

    def progress(i: int, n: int, name: str) -> None:
        prefix = f"[rank {rank}] " if world > 1 else ""
        print(f"\r{prefix}{i + 1}/{n} {name}   ", end="", file=sys.stderr, flush=True)

    pieces = []  # one dict per revision (per pair for weights): its index, values, provenance
    if args.kind == "weights":
        names = [r.name for r in sweep.locate(args.model, names, skipped=skipped)]  # offline: what is cached
        pairs = list(zip(names, names[1:], strict=False))
        for i, pair in enumerate(pairs):
            if i % world == rank:
                r = sweep.weight_diffs(args.model, list(pair), progress=progress)
                pieces.append(
                    {
                        "index": i,
                        "values": {k: v[0] for k, v in r.values.items()},
                        "names": r.names,
                        "provenance": r.provenance(),
                    }
                )
    else:
        ids = read_sequences(args, sweep.locate(args.model, names[:1])[0].folder)
        mine = [name for i, name in enumerate(names) if i % split == rank % split]
        fn = sweep.token_logprobs if args.kind == "logprobs" else sweep.memorization
        extra = {} if args.kind == "logprobs" else {"prefix": args.prefix, "continuation": args.continuation}
        if mine:
            r = fn(
                args.model,
                mine,
                ids,
                batch_size=args.batch_size,
                dtype=args.dtype,
                progress=progress,
                mesh=mesh,
                **extra,
            )
            skipped = r.skipped
            for j, revision in enumerate(r.revisions):
                pieces.append(
                    {
                        "index": names.index(revision.name),
                        "values": {k: v[j] for k, v in r.values.items()},
                        "provenance": [r.provenance()[j]],
                    }
                )
    print(file=sys.stderr)
    if mesh is not None:  # every rank computed every revision, the same numbers: rank 0 writes them
        pieces = pieces if rank == 0 else []
    gathered = gather({"pieces": pieces, "skipped": skipped}, rank, world)
    if rank == 0:
        merged = _merge(args.kind, [p for g in gathered for p in g["pieces"]])
        order = {name: i for i, name in enumerate(names)}
        merged["skipped"] = sorted({s for g in gathered for s in g["skipped"]}, key=lambda n: order.get(n, len(order)))
        _write(args, merged)
    return 0


def _merge(kind: str, pieces: list[dict]) -> dict:
    if not pieces:
        raise ValueError("no revision to write: every one was skipped")
    pieces = sorted(pieces, key=lambda p: p["index"])
    merged = {
        "values": {k: torch.stack([p["values"][k] for p in pieces]) for k in pieces[0]["values"]},
        "names": pieces[0].get("names"),
    }
    if kind == "weights":
        merged["pairs"] = [p["provenance"] for p in pieces]
        merged["provenance"] = [p["provenance"][0] for p in pieces] + [pieces[-1]["provenance"][1]]
    else:
        merged["provenance"] = [p["provenance"][0] for p in pieces]
    return merged


def _write(args, merged: dict) -> None:
    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    values, prov = merged["values"], merged["provenance"]
    rows = []
    if args.kind == "logprobs":
        np.save(out.with_suffix(".npy"), values["logprobs"].numpy())
        for p, lp in zip(prov, values["logprobs"], strict=True):
            rows.append({**_summary(p), "mean_logprob": f"{float(lp.double().mean()):.6f}"})
    elif args.kind == "memorization":
        save_file({k: v.contiguous() for k, v in values.items()}, str(out.with_suffix(".safetensors")))
        for p, exact, matched in zip(prov, values["exact"], values["matched"], strict=True):
            rows.append(
                {
                    **_summary(p),
                    "memorized_fraction": f"{float(exact.double().mean()):.6f}",
                    "mean_matched_tokens": f"{float(matched.double().mean()):.4f}",
                }
            )
    else:
        tensors = {k: v.contiguous() for k, v in values.items()}
        save_file(tensors, str(out.with_suffix(".safetensors")), metadata={"names": json.dumps(merged["names"])})
        for (a, b), change, identical in zip(
            merged["pairs"], values["relative_change"], values["identical"], strict=True
        ):
            summary = {k: v for k, v in _summary(b).items() if k != "revision"}
            rows.append(
                {
                    "from": a["revision"],
                    "to": b["revision"],
                    **summary,
                    "identical_tensors": int(identical.sum()),
                    "tensors": identical.numel(),
                    "mean_relative_change": f"{float(change.mean()):.6g}",
                }
            )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.with_suffix(".csv").write_text(buffer.getvalue(), encoding="utf-8")
    meta = {"kind": args.kind, "model": str(args.model), "revisions": prov, "skipped": merged["skipped"]}
    out.with_suffix(".json").write_text(
        json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    if merged["skipped"]:
        print(f"note: not in the cache, skipped (offline): {', '.join(merged['skipped'])}", file=sys.stderr)
    if args.plot:
        _plot(args, rows)


def _summary(p: dict) -> dict:
    step = p.get("step")
    return {
        "revision": p.get("revision", ""),
        "step": "" if step is None else step,
        "tokens": "" if step is None else pythia.step_to_tokens(step),
        "commit_sha": p.get("commit_sha", ""),
        "known_issues": " ".join(p.get("known_issues", [])),
    }


def _plot(args, rows: list[dict]) -> None:
    from .analysis import pyplot

    plt = pyplot()
    column = {"logprobs": "mean_logprob", "memorization": "memorized_fraction", "weights": "mean_relative_change"}
    points = [(int(r["tokens"]), float(r[column[args.kind]])) for r in rows if r["tokens"] not in ("", 0)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(column[args.kind])
    ax.set_title(f"{args.model}: {args.kind}")
    fig.tight_layout()
    fig.savefig(args.plot)
    plt.close(fig)
