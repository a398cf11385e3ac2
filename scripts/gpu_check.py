#!/usr/bin/env python
"""The checks that need a GPU, in one script (never part of the test suite, which runs on CPUs):

    python scripts/gpu_check.py                 # on a machine with CUDA
    python scripts/gpu_check.py --device cpu    # the same steps on the CPU (to check the script)

1. One device: a random checkpoint in a real Pythia shape (--size, default 160m), loaded in fp32
   and bf16 on the device. Logits against the fp32 model on the CPU, within parity.TOLERANCES of
   the dtype; greedy 32 tokens identical in fp32; decode tok/s (batch 1, 128 tokens) and prefill
   tok/s (512 tokens).
2. More than one GPU: the same checkpoint tensor-parallel over min(4, GPUs) ranks with torchrun
   (NCCL; gloo with --device cpu --ranks N): logits against the one-device fp32 model, greedy
   tokens identical, decode tok/s.

Prints one line per check and writes everything to OUT/gpu_check.json (default ./gpu_check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from neox_mini import NeoXConfig, distributed, fast
from neox_mini.generation import generate
from neox_mini.loading import load_folder
from neox_mini.parity import TOLERANCES, difference
from neox_mini.synthetic import write_random_checkpoint


def inputs(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, 64), generator=g), torch.randint(0, vocab, (1, 16), generator=g)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rates(model, prompt: torch.Tensor, device: str) -> dict:
    prompt = prompt.to(device)
    generate(model, prompt, 8)  # warm-up (and matvec's choices on a CPU)
    synchronize(device)
    start = time.perf_counter()
    generate(model, prompt, 128)
    synchronize(device)
    decode = 128 / (time.perf_counter() - start)
    long = torch.arange(512, device=device)[None] % model.config.vocab_size
    with torch.inference_mode():
        fast.forward(model, long, last_token_only=True)
        synchronize(device)
        start = time.perf_counter()
        fast.forward(model, long, last_token_only=True)
        synchronize(device)
    return {"decode_tok_s": decode, "prefill_512_tok_s": 512 / (time.perf_counter() - start)}


def worker(out: Path, folder: Path) -> None:
    """Under torchrun: the tensor-parallel model's logits, greedy tokens and decode speed."""
    model = distributed.load(folder, dtype="fp32", device="cuda" if torch.cuda.is_available() else "cpu")
    device = str(model.gpt_neox.final_layer_norm.weight.device)
    ids, prompt = inputs(model.config.vocab_size)
    with torch.inference_mode():
        logits = fast.forward(model, ids.to(device)).cpu()
    greedy = generate(model, prompt.to(device), 32).cpu()
    speed = rates(model, prompt, device)
    if distributed.rank() == 0:
        torch.save({"logits": logits, "greedy": greedy, **speed}, out / "tp.pt")
    torch.distributed.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="160m")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("gpu_check"))
    p.add_argument("--ranks", type=int, help="tensor-parallel ranks (default: min(4, GPUs); on the CPU: none)")
    p.add_argument("--worker", nargs=2, metavar=("OUT", "FOLDER"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(Path(a.worker[0]), Path(a.worker[1]))
        return 0
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here (use --device cpu to run the steps on the CPU)")
    a.out.mkdir(parents=True, exist_ok=True)
    folder = a.out / f"pythia-{a.size}-random"
    if not (folder / "config.json").is_file():
        write_random_checkpoint(folder, NeoXConfig.from_pythia(a.size), max_shard_bytes=400_000_000)
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "size": a.size,
        "checks": [],
    }
    ok = True

    def check(name: str, passed: bool, detail: str, **numbers) -> None:
        nonlocal ok
        ok &= passed
        report["checks"].append({"name": name, "passed": passed, "detail": detail, **numbers})
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", flush=True)

    reference = load_folder(folder)  # fp32 on the CPU
    ids, prompt = inputs(reference.config.vocab_size)
    with torch.inference_mode():
        ref_logits = reference(ids)
    ref_greedy = generate(reference, prompt, 32)
    for dtype in ("fp32", "bf16"):
        model = load_folder(folder, dtype=dtype, device=a.device)
        with torch.inference_mode():
            d = difference(f"{dtype} logits", fast.forward(model, ids.to(a.device)).float().cpu(), ref_logits)
        tolerance = TOLERANCES[str(model.gpt_neox.final_layer_norm.weight.dtype).removeprefix("torch.")]
        check(f"one device {dtype} logits", not d.over(tolerance), f"{d} (tolerance {tolerance:g})")
        if dtype == "fp32":
            same = torch.equal(generate(model, prompt.to(a.device), 32).cpu(), ref_greedy)
            check("one device fp32 greedy 32 tokens", same, "identical" if same else "differ")
        speed = rates(model, prompt, a.device)
        check(f"one device {dtype} speed", True, ", ".join(f"{k} {v:.1f}" for k, v in speed.items()), **speed)
        del model

    gpus = torch.cuda.device_count() if a.device.startswith("cuda") else 0
    ranks = a.ranks or min(4, gpus)
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        subprocess.run([*command, __file__, "--worker", str(a.out), str(folder)], check=True)
        tp = torch.load(a.out / "tp.pt")
        d = difference(f"{ranks} ranks logits", tp["logits"], ref_logits)
        check(f"tensor parallel x{ranks} fp32 logits", not d.over(TOLERANCES["float32"]), str(d))
        check(f"tensor parallel x{ranks} greedy 32 tokens", torch.equal(tp["greedy"], ref_greedy), "vs one device")
        check(f"tensor parallel x{ranks} speed", True, f"decode {tp['decode_tok_s']:.1f} tok/s")
    else:
        print("(one GPU or none, and no --ranks: no tensor-parallel check)")
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
