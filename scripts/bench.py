#!/usr/bin/env python
"""neox_mini vs transformers on the CPU, side by side, in the same run.

Both libraries run the same random-weight checkpoints (made by scripts/make_checkpoint.py, Pythia
14m / 70m / 160m shapes, cached in --cache and reused). Every measurement alternates between the
two (neox, hf, hf, neox, ...) so that a change in machine load hits both, and reports the median
of --runs runs with min-max, and the ratio neox / transformers:

  decode    tok/s generating 128 new tokens after a 16-token prompt, greedy, EOS ignored, at batch
            1 and 8 (tokens of all rows per second; the time of the whole generate call, i.e. the
            16-token prefill included). transformers: generate(do_sample=False, min_new_tokens=N).
            Batch-1 rows (here, int8 and compile) also give the GB/s of weights streamed (tok/s x
            the bytes of every weight but embed_in) next to a plain copy's, measured in the run.
  prefill   tok/s of one forward over a 512- / 2048-token prompt that fills the KV cache and returns
            only the last position's logits (transformers: use_cache=True, logits_to_keep=1).
  cold      seconds from process start to the first generated token, fresh process each time:
            `neox-mini generate --greedy -n 1` vs the equivalent transformers script (AutoTokenizer,
            from_pretrained, generate(max_new_tokens=1)); both measured as the wall time of the
            whole process, which ends right after that token.
  rss       peak resident memory (VmHWM) of a fresh process that loads the model and generates
            8 tokens (every weight used), next to the peak of a process that only imports torch
            and the budget RSS(import torch) + 1.05 x weight bytes.
  matvec    GB/s of the 50304 x C LM-head product for one token: matvec.linear (the method chosen
            on this machine) vs F.linear, with every candidate and a plain copy (read + write).
  cache     one forward over 512 / 2048 tokens that keeps activations: run_with_cache with every
            hook point vs transformers' output_hidden_states + output_attentions (eager), and
            run_with_cache of the blocks' hook_resid_post only vs output_hidden_states; seconds
            (alternating, in-process) and peak RSS of a fresh process each, next to a plain forward.
  hooks     decode tok/s of generate() inside an empty `with model.hooks({}):` block vs outside it
            (neox_mini against itself: the hooks machinery must cost nothing when unused).
  sweep     20 revisions of a 70m-shape model in a Hub-layout cache (files in the page cache): the
            log-probs of one 16-token sequence at every revision, three ways, each in a fresh
            process: neox_mini's sweep (one model, weights swapped in place), a naive loop of
            from_pretrained + scoring, and transformers' from_pretrained(revision=...) loop.
            Seconds per revision (the forward of 16 tokens is a few ms of it) and peak RSS.
  tp        tensor parallelism (neox_mini against itself): one process with --threads threads vs
            `torchrun --nproc-per-node 2` with one thread per rank, same checkpoint (sharded
            safetensors): each process's peak RSS (VmHWM), how much of it is file pages (the
            memory-mapped weights) and the weight bytes it read, and decode tok/s.
  int8      weight-only int8 (GPTNeoX.quantize): decode tok/s (batch 1) and prefill 512 tok/s of
            the int8 model vs transformers fp32, with the int8 model's error against fp32
            (parity.quantization_error). With --ct2-python, also against ctranslate2 (float32
            and int8) on the same checkpoint, converted once by ct2-transformers-converter in
            that interpreter.
  compile   decode tok/s (batch 1) with the decode step compiled (fast.compile_decode, --compile),
            fp32 (modes default and max-autotune) and int8, vs transformers fp32, next to the
            same model uncompiled (alternating, in-process), and the seconds compile_decode takes
            in a fresh process, first with an empty inductor cache, then with the cache the first
            one left (fp32 in mode max-autotune is not cached: it compiles again). With
            --ct2-python, also against ctranslate2 float32 / int8.
  eval      lm-evaluation-harness on neox_mini.lm_eval.example_tasks (one task per request type)
            with the neox_mini model vs lm-eval's own `--model hf`, on a random 70m-shape
            checkpoint: seconds of simple_evaluate (task loading included) and peak RSS, each run
            in a fresh process.

    python scripts/bench.py --quick          # < 10 minutes on a 2-core machine
    python scripts/bench.py                  # everything, 5 runs each
    python scripts/bench.py --sizes 160m --dtypes fp32 --only decode prefill

The machine's load average is recorded with every measurement: CPU timings taken while other
processes compete for the cores are not comparable (with 2 threads on 2 busy cores, OpenMP
barriers wait for descheduled threads and everything gets several times slower).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
TOKENIZER_JSON = REPO.parent / "shared" / "tokenizer" / "gpt-neox-20b" / "tokenizer.json"

PROMPT_LEN, NEW_TOKENS = 16, 128
PROMPT_TEXT = "The quick brown fox jumps over the lazy dog, and then"


# ----------------------------------------------------------------------------- helpers


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def others_running() -> int:
    """Runnable threads on the machine that are not ours (procs_running minus our running threads)."""
    ours = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        ours += stat[stat.rindex(")") + 2] == "R"
    total = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("procs_running"))
    return total - ours


WAIT_QUIET = 0.0  # --wait-quiet: seconds to wait at most, before each measured run, for a quiet machine


def wait_quiet(settle: float = 0.5) -> bool:
    """Wait (at most WAIT_QUIET s) until no other process has wanted a CPU for `settle` seconds."""
    deadline, quiet_since = time.monotonic() + WAIT_QUIET, None
    while time.monotonic() < deadline:
        if others_running() <= 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle:
                return True
        else:
            quiet_since = None
        time.sleep(0.05)
    return others_running() <= 0


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def alternate(fns: dict, runs: int, warmup: bool = True) -> dict[str, list[float]]:
    """Run each function once to warm up, then `runs` times each, alternating and flipping the
    order every round (a, b, b, a, a, b, ...). Each fn returns its measured value."""
    for fn in fns.values() if warmup else ():
        fn()
    values = {name: [] for name in fns}
    names = list(fns)
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            wait_quiet()
            values[name].append(fns[name]())
    return values


def checkpoint(cache: Path, size: str, dtype: str) -> Path:
    """A random-weight checkpoint of the given Pythia shape, made once and reused."""
    from neox_mini import NeoXConfig
    from neox_mini.synthetic import write_random_checkpoint

    folder = cache / f"pythia-{size}-{dtype}"
    if not (folder / "config.json").is_file():
        print(f"  making {folder} ...", flush=True)
        write_random_checkpoint(folder, NeoXConfig.from_pythia(size), dtype=dtype, tokenizer=TOKENIZER_JSON)
    return folder


def weight_bytes(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            t = f.get_slice(name)
            n = 1
            for d in t.get_shape():
                n *= d
            total += n * {"F32": 4, "BF16": 2, "F16": 2}[t.get_dtype()]
    return total


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_CODE = {"fp32": "torch.float32", "bf16": "torch.bfloat16"}  # the same, in a subprocess script


def load_both(folder: Path, dtype: str):
    import transformers
    from transformers import GPTNeoXForCausalLM

    from neox_mini import from_pretrained

    transformers.utils.logging.disable_progress_bar()
    neox = from_pretrained(folder)
    hf = GPTNeoXForCausalLM.from_pretrained(folder, dtype=TORCH_DTYPES[dtype]).eval()
    hf.generation_config.eos_token_id = None  # EOS ignored: always N new tokens
    hf.generation_config.pad_token_id = 1
    return neox, hf


def checkpoint_models(folder: Path, dtype: str):
    from neox_mini import from_pretrained

    return from_pretrained(folder), load_eager(folder, dtype)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- in-process benches


def bench_decode(neox, hf, batch: int, runs: int, new_tokens: int, ct2: dict | None = None) -> dict:
    """ct2: ctranslate2's runs to alternate with these (ct2_runs), batch 1 only."""
    from neox_mini import generate

    V = neox.config.vocab_size
    ids = torch.randint(0, 50000, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    outs = {}

    def run_hf():
        def go():
            with torch.inference_mode():
                outs["hf"] = hf.generate(
                    ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )

        return batch * new_tokens / timed(go)

    def run_neox():
        # vocab_limit=V: no masking of the padded vocabulary, so the tokens can equal transformers'
        def go():
            outs["neox"] = generate(neox, ids, new_tokens, vocab_limit=V)

        return batch * new_tokens / timed(go)

    ct2 = ct2 or {}
    values = alternate({"neox": run_neox, "hf": run_hf, **{name: run for name, (run, _) in ct2.items()}}, runs)
    same = torch.equal(outs["neox"], outs["hf"])
    r = {"neox": summary(values["neox"]), "hf": summary(values["hf"]), "same_tokens": same}
    return with_ct2(r, values, ct2)


COMPILE_RUN = """
import sys, torch
from neox_mini import from_pretrained, fast
torch.set_num_threads(int(sys.argv[2]))
model = from_pretrained(sys.argv[1])
if sys.argv[3] != "fp32":
    model.quantize(sys.argv[3])
print(fast.compile_decode(model, mode=sys.argv[4]))
"""


def compile_seconds(folder: Path, kind: str, mode: str, threads: int) -> tuple[float, float]:
    """Seconds of compile_decode in a fresh process with an empty inductor cache, then in a second
    fresh process that finds the first one's cache."""
    with tempfile.TemporaryDirectory() as inductor:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor}
        seconds = []
        for _ in range(2):
            wait_quiet()
            run = [sys.executable, "-c", COMPILE_RUN, str(folder), str(threads), kind, mode]
            out = subprocess.run(run, capture_output=True, text=True, check=True, env=env)
            seconds.append(float(out.stdout.strip().splitlines()[-1]))
    return seconds[0], seconds[1]


def bench_compiled(neox, hf, mode: str, runs: int, new_tokens: int, ct2: dict | None = None) -> dict:
    """Decode with the step compiled (fast.compile_decode in this mode) vs transformers (and
    ctranslate2), and vs the same model uncompiled, all alternating."""
    from neox_mini import fast, generate

    fast.compile_decode(neox, mode=mode)
    r = bench_decode(neox, hf, 1, runs, new_tokens, ct2)
    ids = torch.randint(0, 50000, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))

    def run(compiled: bool):
        def go():
            neox.compiled_decode = compiled
            generate(neox, ids, new_tokens, vocab_limit=neox.config.vocab_size)

        return new_tokens / timed(go)

    values = alternate({"compiled": lambda: run(True), "eager": lambda: run(False)}, runs)
    neox.compiled_decode = True
    r["uncompiled"] = summary(values["eager"])
    r["compiled_again"] = summary(values["compiled"])
    return r


def int8_error(fp32, int8) -> dict:
    from neox_mini import fast
    from neox_mini.parity import quantization_error

    ids = torch.randint(0, 50000, (2, 128), generator=torch.Generator().manual_seed(0))
    return quantization_error(fast.forward(fp32, ids), fast.forward(int8, ids))


CT2_SERVE = """
import sys, time, ctranslate2, tokenizers
model, compute_type, threads, tokenizer, new_tokens = sys.argv[1:6]
tok = tokenizers.Tokenizer.from_file(tokenizer)
gen = ctranslate2.Generator(model, device="cpu", compute_type=compute_type, intra_threads=int(threads))
print("ready", flush=True)
for line in sys.stdin:  # "decode N" or "prefill N": one run, answered with its seconds
    what, n = line.split()
    prompt = [tok.id_to_token(i) for i in range(1000, 1000 + int(n))]
    start = time.perf_counter()
    if what == "decode":
        gen.generate_batch([prompt], max_length=int(new_tokens), min_length=int(new_tokens), sampling_topk=1,
                           include_prompt_in_result=False, end_token=[])
    else:  # prefill: the prompt and the first next token
        gen.generate_batch([prompt], max_length=1, sampling_topk=1, include_prompt_in_result=False)
    seconds = time.perf_counter() - start
    time.sleep(0.3)  # before answering: OpenMP threads spin for a while after a run (KMP_BLOCKTIME)
    print(seconds, flush=True)
"""


def ct2_model(ct2_python: str, folder: Path, compute: str) -> Path:
    """The checkpoint converted to ctranslate2 (once; reused from the cache folder)."""
    out = folder.parent / f"{folder.name}-ct2-{compute}"
    if not (out / "model.bin").is_file():
        converter = Path(ct2_python).parent / "ct2-transformers-converter"
        subprocess.run(
            [str(converter), "--model", str(folder), "--output_dir", str(out), "--quantization", compute, "--force"],
            check=True,
            capture_output=True,
        )
    return out


class Ct2:
    """ctranslate2 in its own interpreter (--ct2-python), the model loaded once, answering one run
    at a time: its runs take turns with neox_mini's and transformers' in `alternate`, so all three
    meet the same machine load (this guest's speed drifts by 2x within minutes)."""

    def __init__(self, ct2_python: str, folder: Path, compute: str, threads: int):
        model = ct2_model(ct2_python, folder, compute)
        args = [str(model), compute, str(threads), str(TOKENIZER_JSON), str(NEW_TOKENS)]
        self.process = subprocess.Popen(
            [ct2_python, "-c", CT2_SERVE, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"ctranslate2 did not start on {model}")

    def rate(self, what: str) -> float:
        """tok/s of one run: decode NEW_TOKENS after PROMPT_LEN, or prefill 512."""
        n = PROMPT_LEN if what == "decode" else 512
        self.process.stdin.write(f"{what} {n}\n")
        self.process.stdin.flush()
        seconds = float(self.process.stdout.readline())
        return (NEW_TOKENS if what == "decode" else n) / seconds

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def ct2_runs(ct2_python: str | None, folder: Path, computes: tuple[str, ...], what: str, threads: int) -> dict:
    """{"ct2_<compute>": a function giving one run's tok/s} for `alternate`, and the workers to close."""
    if not ct2_python:
        return {}
    workers = {f"ct2_{compute}": Ct2(ct2_python, folder, compute, threads) for compute in computes}
    return {name: (lambda worker=worker: worker.rate(what), worker) for name, worker in workers.items()}


def with_ct2(r: dict, values: dict, ct2: dict) -> dict:
    """Add ctranslate2's runs (taken in the same alternation) to a result, and close its workers."""
    for name, (_, worker) in ct2.items():
        r[name] = summary(values[name])
        worker.close()
    return r


def bench_prefill(neox, hf, T: int, runs: int, ct2: dict | None = None) -> dict:
    """ct2: ctranslate2's runs to alternate with these (ct2_runs), T = 512 only."""
    from neox_mini.generation import prefill

    ids = torch.randint(0, 50000, (1, T), generator=torch.Generator().manual_seed(T))

    def run_neox():
        neox.setup_kv_cache(1, T)
        try:
            return T / timed(lambda: prefill(neox, ids))
        finally:
            neox.clear_kv_cache()

    def run_hf():
        def go():
            with torch.inference_mode():
                hf(ids, use_cache=True, logits_to_keep=1)

        return T / timed(go)

    ct2 = ct2 or {}
    values = alternate({"neox": run_neox, "hf": run_hf, **{name: run for name, (run, _) in ct2.items()}}, runs)
    return with_ct2({"neox": summary(values["neox"]), "hf": summary(values["hf"])}, values, ct2)


def load_eager(folder: Path, dtype: str):
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(folder, dtype=TORCH_DTYPES[dtype], attn_implementation="eager").eval()


def bench_cache(neox, hf_eager, T: int, runs: int, everything: bool) -> dict:
    """Seconds of one forward that keeps the activations (see the module docstring)."""
    ids = torch.randint(0, 50000, (1, T), generator=torch.Generator().manual_seed(T))
    names = None if everything else (lambda name: name.endswith("hook_resid_post"))

    def run_neox():
        with torch.inference_mode():
            return timed(lambda: neox.run_with_cache(ids, names=names))

    def run_hf():
        with torch.inference_mode():
            return timed(lambda: hf_eager(ids, output_hidden_states=True, output_attentions=everything))

    values = alternate({"neox": run_neox, "hf": run_hf}, runs)
    return {"neox": summary(values["neox"]), "hf": summary(values["hf"])}


CACHE_RSS = """
import sys, torch
torch.set_num_threads({threads})
ids = torch.randint(0, 50000, (1, {T}), generator=torch.Generator().manual_seed({T}))
if sys.argv[2].startswith("neox"):
    from neox_mini import from_pretrained
    m = from_pretrained(sys.argv[1])
    names = {{"neox-plain": [], "neox-resid": lambda n: n.endswith("hook_resid_post"), "neox-all": None}}[sys.argv[2]]
    with torch.inference_mode():
        out = m(ids) if sys.argv[2] == "neox-plain" else m.run_with_cache(ids, names=names)
else:
    from transformers import GPTNeoXForCausalLM
    m = GPTNeoXForCausalLM.from_pretrained(sys.argv[1], dtype={dtype}, attn_implementation="eager")
    kw = {{"hf-plain": {{}}, "hf-hidden": dict(output_hidden_states=True),
          "hf-all": dict(output_hidden_states=True, output_attentions=True)}}[sys.argv[2]]
    with torch.inference_mode():
        out = m(ids, **kw)
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""


def bench_cache_rss(folder: Path, dtype: str, T: int, threads: int) -> dict:
    """Peak RSS (MiB) of a fresh process per variant: deterministic to ~1 MiB, so one run each."""
    code = CACHE_RSS.format(threads=threads, T=T, dtype=DTYPE_CODE[dtype])
    variants = ("neox-plain", "neox-resid", "neox-all", "hf-plain", "hf-hidden", "hf-all")
    mib = {v: python_rss_kib(code, str(folder), v) / 1024 for v in variants}
    return {
        **{k: round(v, 1) for k, v in mib.items()},
        "resid_over_plain": mib["neox-resid"] / mib["neox-plain"],
        # the rows' neox / hf: run_with_cache(all) vs output_hidden_states + output_attentions
        "neox": summary([mib["neox-all"]]),
        "hf": summary([mib["hf-all"]]),
    }


def bench_hooks_overhead(neox, runs: int, new_tokens: int) -> dict:
    from neox_mini import generate

    ids = torch.randint(0, 50000, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))

    def plain():
        return new_tokens / timed(lambda: generate(neox, ids, new_tokens))

    def in_empty_block():
        with neox.hooks({}):
            return new_tokens / timed(lambda: generate(neox, ids, new_tokens))

    values = alternate({"neox": in_empty_block, "hf": plain}, runs)  # "hf" column: neox without the block
    return {"neox": summary(values["neox"]), "hf": summary(values["hf"])}


SWEEP_REVISIONS = [f"step{s}" for s in range(1000, 21000, 1000)]
SWEEP_SCRIPT = """
import os, sys, time, torch
torch.set_num_threads({threads})
ids = torch.randint(0, 50000, (1, 16), generator=torch.Generator().manual_seed(0))
revisions = {revisions!r}
t0 = time.perf_counter()
if sys.argv[1] == "sweep":
    from neox_mini.sweep import token_logprobs
    token_logprobs("EleutherAI/pythia-70m", revisions, ids)
elif sys.argv[1] == "naive":
    from neox_mini import from_pretrained
    from neox_mini.scoring import token_logprobs
    for r in revisions:
        token_logprobs(from_pretrained("EleutherAI/pythia-70m", revision=r), ids[0])
else:
    from transformers import GPTNeoXForCausalLM
    for r in revisions:
        m = GPTNeoXForCausalLM.from_pretrained("EleutherAI/pythia-70m", revision=r)
        with torch.inference_mode():
            m(ids).logits.log_softmax(-1)
print((time.perf_counter() - t0) / len(revisions))
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""


def sweep_cache(cache: Path) -> Path:
    """A Hub-layout cache of EleutherAI/pythia-70m at 20 revisions (random weights, seed = step),
    written once: blobs named by sha256, snapshot links, refs."""
    import hashlib

    from neox_mini import NeoXConfig
    from neox_mini.synthetic import write_random_checkpoint

    root = cache / "sweep-hub"
    repo = root / "models--EleutherAI--pythia-70m"
    for revision in SWEEP_REVISIONS:
        if (repo / "refs" / revision).is_file():
            continue
        print(f"  making {revision} ...", flush=True)
        tmp = write_random_checkpoint(cache / "sweep-tmp", NeoXConfig.from_pythia("70m"), seed=int(revision[4:]))
        sha = hashlib.sha1(revision.encode()).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / sha).mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            f.replace(repo / "blobs" / digest)
            (repo / "snapshots" / sha / f.name).symlink_to(f"../../blobs/{digest}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(sha)
    return root


def bench_sweep(cache: Path, runs: int, threads: int) -> dict:
    root = sweep_cache(cache)
    env = {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    code = SWEEP_SCRIPT.format(threads=threads, revisions=SWEEP_REVISIONS)

    def run(variant):
        out = subprocess.run(
            [sys.executable, "-c", code, variant], capture_output=True, text=True, env=env, check=True
        ).stdout.split()
        rss[variant].append(int(out[-1]) / 1024)
        return float(out[-2])

    rss = {"sweep": [], "naive": [], "hf": []}
    values = alternate({v: (lambda v=v: run(v)) for v in rss}, runs)
    return {
        "neox": summary(values["sweep"]),
        "naive": summary(values["naive"]),
        "hf": summary(values["hf"]),
        "rss_mib": {v: round(statistics.median(x), 1) for v, x in rss.items()},
    }


EVAL_SCRIPT = """
import os, sys, time, torch
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
torch.set_num_threads({threads})
import lm_eval
from lm_eval.tasks import TaskManager
tm = TaskManager(include_path=sys.argv[2])
tasks = ["nm_ll", "nm_roll", "nm_mc", "nm_gen"]
t0 = time.perf_counter()
if sys.argv[3] == "neox":
    from neox_mini.lm_eval import NeoXMiniLM
    lm_eval.simple_evaluate(model=NeoXMiniLM(pretrained=sys.argv[1]), tasks=tasks, task_manager=tm, batch_size=8)
else:
    lm_eval.simple_evaluate(model="hf", model_args="pretrained=" + sys.argv[1] + ",dtype=float32", tasks=tasks,
                            task_manager=tm, batch_size=8, device="cpu")
print(time.perf_counter() - t0)
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""


def bench_eval(folder: Path, cache: Path, runs: int, threads: int) -> dict:
    from neox_mini.lm_eval import example_tasks

    tasks = example_tasks(cache / "eval-tasks")
    code = EVAL_SCRIPT.format(threads=threads)
    rss = {"neox": [], "hf": []}

    def run(variant):
        out = subprocess.run(
            [sys.executable, "-c", code, str(folder), str(tasks), variant], capture_output=True, text=True, check=True
        ).stdout.split()
        rss[variant].append(int(out[-1]) / 1024)
        return float(out[-2])

    values = alternate({v: (lambda v=v: run(v)) for v in rss}, runs)
    return {
        "neox": summary(values["neox"]),
        "hf": summary(values["hf"]),
        "rss_mib": {v: round(statistics.median(x), 1) for v, x in rss.items()},
    }


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer but embed_in (a lookup
    reads one row of it) and the rotary tables; int8 weights count with their scales."""
    skipped = ("gpt_neox.embed_in.", "rotary.")
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return sum(t.numel() * t.element_size() for name, t in tensors if not name.startswith(skipped))


def copy_bandwidth() -> float:
    """GB/s of a plain copy of 256 MB (read + write counted), best of 3: the bound a decode step
    that streams its weights is measured against, taken in the same run."""
    src = torch.ones(64 << 20)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src)) for _ in range(3))
    return 2 * src.numel() * src.element_size() / best / 1e9


def streaming(model, r: dict, rate: dict) -> str:
    """Record and describe the weight bandwidth of a batch-1 decode rate (tok/s summary)."""
    per_token = weight_bytes_per_token(model)
    r["weights_gb_per_token"] = per_token / 1e9
    r["weights_gbps"] = rate["median"] * per_token / 1e9
    r["copy_gbps"] = copy_bandwidth()
    return f"; weights {r['weights_gbps']:.1f} GB/s, plain copy {r['copy_gbps']:.1f}"


def bench_matvec(C: int, dtype: str, runs: int) -> dict:
    """GB/s of the LM-head product for one token: matvec.linear (the method this machine chose) vs
    F.linear, with every candidate method and a plain copy of the same bytes (the bandwidth bound)."""
    import torch.nn.functional as F

    from neox_mini import matvec

    W = torch.randn(50304, C).to(TORCH_DTYPES[dtype])
    x = torch.randn(1, 1, C).to(W.dtype)
    nbytes = W.numel() * W.element_size()
    copy_to = torch.empty_like(W)

    def rate(fn, moved=nbytes):
        def run():
            with torch.inference_mode():
                fn()  # warm
                reps = 20
                t = timed(lambda: [fn() for _ in range(reps)])
            return moved * reps / t / 1e9

        return run

    with torch.inference_mode():
        matvec.linear(x, W)  # makes (or reads) this machine's choice
    chosen = matvec.load_choices()[matvec.choice_key(W.dtype, W.shape, 1)]
    fns = {"neox": rate(lambda: matvec.linear(x, W)), "hf": rate(lambda: F.linear(x, W))}
    for name in matvec.candidates(1, W.shape[0]):
        fns[name] = rate(lambda name=name: matvec.METHODS[name](x, W, None))
    fns["copy"] = rate(lambda: copy_to.copy_(W), 2 * nbytes)  # read + write
    values = alternate(fns, runs)
    return {"chosen": chosen, **{k: summary(v) for k, v in values.items()}}


# ----------------------------------------------------------------------------- fresh-process benches

NEOX_RSS = """
import torch, sys
torch.set_num_threads({threads})
from neox_mini import GPTNeoX, from_pretrained, generate
m = from_pretrained(sys.argv[1])
generate(m, torch.randint(0, 50000, (1, 16)), 8)
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""
HF_RSS = """
import torch, sys
torch.set_num_threads({threads})
from transformers import GPTNeoXForCausalLM
m = GPTNeoXForCausalLM.from_pretrained(sys.argv[1], dtype={dtype})
with torch.inference_mode():
    m.generate(torch.randint(0, 50000, (1, 16)), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=1)
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""
TORCH_RSS = """
import torch
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""
HF_COLD = """
import sys
import torch
torch.set_num_threads({threads})
from transformers import AutoTokenizer, GPTNeoXForCausalLM
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = GPTNeoXForCausalLM.from_pretrained(sys.argv[1], dtype={dtype})
ids = tok(sys.argv[2], return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=1)
print(sys.argv[2] + tok.decode(out[0, ids.shape[1]:]))
"""


def python_rss_kib(code: str, *args: str) -> int:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def bench_rss(folder: Path, dtype: str, runs: int, threads: int) -> dict:
    """Peak RSS is deterministic to ~1 MiB (unlike times), so no warm-up run."""

    def mib(code):
        return lambda: python_rss_kib(code, str(folder)) / 1024

    values = alternate(
        {
            "neox": mib(NEOX_RSS.format(threads=threads)),
            "hf": mib(HF_RSS.format(threads=threads, dtype=DTYPE_CODE[dtype])),
            "torch": mib(TORCH_RSS),
        },
        runs,
        warmup=False,
    )
    weights_mib = weight_bytes(folder) / 2**20
    torch_mib = statistics.median(values["torch"])
    return {
        "neox": summary(values["neox"]),
        "hf": summary(values["hf"]),
        "import_torch": summary(values["torch"]),
        "weights_mib": weights_mib,
        "budget_mib": torch_mib + 1.05 * weights_mib,
    }


TP_RUN = """
import sys, time, torch
from neox_mini import distributed
from neox_mini.generation import generate
torch.set_num_threads(int(sys.argv[2]))
model = distributed.load(sys.argv[1])
read = model.provenance.get("tensor_parallel", {}).get("bytes_read", sum(model.provenance["files"].values()))
ids = torch.randint(0, 50000, (1, 16), generator=torch.Generator().manual_seed(0))
generate(model, ids, 8)
start = time.perf_counter()
generate(model, ids, 64)
tok_s = 64 / (time.perf_counter() - start)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
kib = {k: int(status[k].split()[0]) for k in ("VmHWM", "RssAnon", "RssFile")}
row = dict(hwm=kib["VmHWM"], anon=kib["RssAnon"], file=kib["RssFile"], read=read, tok_s=tok_s)
open(f"{sys.argv[3]}.{distributed.rank()}", "w").write(repr(row))  # ranks' stdout lines interleave
"""


def bench_tp(folder: Path, runs: int, threads: int, cache: Path) -> dict:
    """Peak RSS per process, file pages, bytes read and decode tok/s: 1 process vs 2 ranks."""
    script = cache / "tp_run.py"
    script.write_text(TP_RUN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

    out = cache / "tp_out"

    def run(command, ranks):
        def measure():
            subprocess.run([*command, str(out)], capture_output=True, check=True)
            return [ast.literal_eval(Path(f"{out}.{r}").read_text()) for r in range(ranks)]

        return measure

    values = alternate(
        {
            "neox": run([sys.executable, str(script), str(folder), str(threads)], 1),
            "tp": run([*torchrun, str(script), str(folder), "1"], 2),
        },
        runs,
        warmup=False,
    )
    single = [rows[0] for rows in values["neox"]]
    ranks = [max(rows, key=lambda r: r["hwm"]) for rows in values["tp"]]  # the rank with the higher peak
    mib = 1 / 1024

    def stat(rows, key, scale=1.0):
        return summary([r[key] * scale for r in rows])

    return {
        # "neox" / "hf" columns of the table: 2-rank peak RSS per rank vs one process (MiB)
        "neox": stat(ranks, "hwm", mib),
        "hf": stat(single, "hwm", mib),
        "file_mib": {"single": stat(single, "file", mib), "rank": stat(ranks, "file", mib)},
        "anon_mib": {"single": stat(single, "anon", mib), "rank": stat(ranks, "anon", mib)},
        "read_bytes": {"single": single[0]["read"], "rank": ranks[0]["read"]},
        "tok_s": {"single": stat(single, "tok_s"), "rank": stat(ranks, "tok_s")},
    }


def neox_cli() -> list[str]:
    """The installed `neox-mini` command (the console script), else `python -m neox_mini`."""
    exe = Path(sys.executable).parent / "neox-mini"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "neox_mini"]


def bench_cold(folder: Path, dtype: str, runs: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    neox_cmd = [*neox_cli(), "generate", "--model", str(folder), "--dtype", dtype, "--greedy", "-n", "1", PROMPT_TEXT]
    hf_cmd = [sys.executable, "-c", HF_COLD.format(threads=threads, dtype=DTYPE_CODE[dtype]), str(folder), PROMPT_TEXT]

    def wall(cmd):
        def run():
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{out.stderr[-2000:]}")
            return dt

        return run

    values = alternate({"neox": wall(neox_cmd), "hf": wall(hf_cmd)}, runs)
    return {
        "neox": summary(values["neox"]),
        "hf": summary(values["hf"]),
        "neox_command": " ".join(neox_cmd[:2] + neox_cmd[2:-1]) + " PROMPT",
    }


# ----------------------------------------------------------------------------- report


def fmt(s: dict, digits: int = 0) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def ratio(r: dict) -> float:
    return r["neox"]["median"] / r["hf"]["median"]


def print_row(name: str, r: dict, digits: int = 0, goal: str = "") -> None:
    print(f"| {name} | {fmt(r['neox'], digits)} | {fmt(r['hf'], digits)} | {ratio(r):.2f}x | {goal} |", flush=True)


def environment(threads: int) -> dict:
    import tokenizers
    import transformers

    from neox_mini.matvec import cpu_name

    cpuinfo = open("/proc/cpuinfo").read().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8")
    return {
        "cpu": cpu_name(),
        "cpu_flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


KINDS = ["matvec", "decode", "prefill", "int8", "compile", "cold", "rss", "cache", "hooks", "sweep", "eval", "tp"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 runs, and a subset: no matvec; decode batch 8 on 14m only; start-up on 14m and "
        "160m; RSS one run (it varies by < 1 MiB); bf16 decode batch 1 and RSS only "
        "(< 10 minutes on 2 cores)",
    )
    p.add_argument("--sizes", nargs="+", default=["14m", "70m", "160m"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument(
        "--only",
        nargs="+",
        choices=KINDS,
        default=KINDS,
    )
    p.add_argument("--runs", type=int, help="measured runs per number (default 5, --quick 3; at least 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/neox_mini_bench"),
        help="folder for the random checkpoints (made once, reused)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=2.0,
        metavar="S",
        help="before each measured run, wait up to S seconds until no other process wants a "
        "CPU (default 2; 0 = never wait)",
    )
    p.add_argument(
        "--ct2-python",
        metavar="PYTHON",
        help="a Python interpreter with ctranslate2 (and transformers < 5 for its converter): the int8 "
        "measurements then also run ctranslate2 float32 and int8 on the same checkpoints",
    )
    p.add_argument("--json", type=Path, default=REPO / "bench_out" / "bench.json", help="where to write the results")
    a = p.parse_args(argv)
    runs = a.runs or (3 if a.quick else 5)
    if runs < 3:
        p.error("--runs must be at least 3 (medians of >= 3 runs)")
    torch.set_num_threads(a.threads)
    global WAIT_QUIET
    WAIT_QUIET = a.wait_quiet
    a.cache.mkdir(parents=True, exist_ok=True)

    env = environment(a.threads)
    print(
        f"# {env['cpu']}, {env['cores']} cores ({env['cpu_capability']}; {' '.join(env['cpu_flags'])}), "
        f"{a.threads} threads; torch {env['torch']}, "
        f"transformers {env['transformers']}; {runs} runs; load average {load_avg()}",
        flush=True,
    )
    results = {"environment": env, "runs": runs, "quick": a.quick, "results": []}
    started = time.perf_counter()

    last = [time.perf_counter()]

    def record(kind: str, size: str, dtype: str, params: dict, r: dict, label: str, digits: int = 0, goal: str = ""):
        seconds, last[0] = time.perf_counter() - last[0], time.perf_counter()
        r.update(
            kind=kind, size=size, dtype=dtype, **params, ratio=ratio(r), load_avg=load_avg(), seconds=round(seconds, 1)
        )
        results["results"].append(r)
        print_row(label, r, digits, goal)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1) + "\n")

    print("\n| measurement | neox_mini | transformers | ratio | goal |\n|---|---|---|---|---|", flush=True)
    for dtype in a.dtypes:
        quick_bf16 = a.quick and dtype == "bf16"
        if "matvec" in a.only and not a.quick:
            for size, C in (("14m", 128), ("70m", 512), ("160m", 768)):
                if size in a.sizes:
                    r = bench_matvec(C, dtype, runs)
                    others = ", ".join(f"{k} {r[k]['median']:.1f}" for k in r if k not in ("chosen", "neox", "hf"))
                    record(
                        "matvec",
                        size,
                        dtype,
                        {},
                        r,
                        f"{size} {dtype} LM-head matvec GB/s (chosen: {r['chosen']} vs F.linear; {others})",
                        1,
                    )
        for size in a.sizes:
            folder = checkpoint(a.cache, size, dtype)
            if {"decode", "prefill", "hooks"} & set(a.only):
                neox, hf = load_both(folder, dtype)
                if "decode" in a.only:
                    for batch in (1,) if quick_bf16 or (a.quick and size != "14m") else (1, 8):
                        goal = ">= 1.3x" if dtype == "fp32" else ">= 1.0x"
                        ct2_turns = ct2_runs(
                            a.ct2_python if dtype == "fp32" and batch == 1 else None,
                            folder,
                            ("float32",),
                            "decode",
                            a.threads,
                        )
                        r = bench_decode(neox, hf, batch, runs, NEW_TOKENS, ct2_turns)
                        ct2 = streaming(neox, r, r["neox"]) if batch == 1 else ""
                        if "ct2_float32" in r:
                            theirs = r["ct2_float32"]["median"]
                            ct2 += f"; ctranslate2 float32 {theirs:.0f} = {r['neox']['median'] / theirs:.2f}x"
                        record(
                            "decode",
                            size,
                            dtype,
                            {"batch": batch},
                            r,
                            f"{size} {dtype} decode tok/s, batch {batch}"
                            + (
                                ""
                                if r["same_tokens"]
                                else " (tokens differ!)"
                                if dtype == "fp32"
                                else " (tokens differ: bf16 rounds differently)"
                            )
                            + (f" ({ct2[2:]})" if ct2 else ""),
                            0,
                            goal,
                        )
                if "prefill" in a.only and not quick_bf16:
                    for T in (512, 2048):
                        r = bench_prefill(neox, hf, T, runs)
                        record(
                            "prefill",
                            size,
                            dtype,
                            {"tokens": T},
                            r,
                            f"{size} {dtype} prefill {T} tok/s",
                            0,
                            ">= 1.0x",
                        )
                if "hooks" in a.only and dtype == "fp32" and not (a.quick and size != "70m"):
                    r = bench_hooks_overhead(neox, runs, NEW_TOKENS)
                    record(
                        "hooks",
                        size,
                        dtype,
                        {},
                        r,
                        f"{size} {dtype} decode tok/s: in `with model.hooks({{}})` vs without (both neox_mini)",
                        0,
                        "~1.0x",
                    )
                del neox, hf
            if "int8" in a.only and dtype == "fp32":
                from neox_mini import from_pretrained
                from neox_mini.generation import generate

                neox8, hf = load_both(folder, dtype)
                neox8.quantize("int8")
                err = int8_error(from_pretrained(folder), neox8)
                generate(neox8, torch.zeros(1, 4, dtype=torch.long), 2)  # measures matvec.py's choices
                for what in ("decode", "prefill"):
                    ct2_turns = ct2_runs(a.ct2_python, folder, ("float32", "int8"), what, a.threads)
                    r = (
                        bench_decode(neox8, hf, 1, runs, NEW_TOKENS, ct2_turns)
                        if what == "decode"
                        else bench_prefill(neox8, hf, 512, runs, ct2_turns)
                    )
                    r["error"] = err
                    ct2 = streaming(neox8, r, r["neox"]) if what == "decode" else ""
                    for c in ("float32", "int8"):
                        if f"ct2_{c}" in r:
                            theirs = r[f"ct2_{c}"]["median"]
                            ct2 += f"; ctranslate2 {c} {theirs:.0f} = {r['neox']['median'] / theirs:.2f}x"
                    label = "decode tok/s, batch 1" if what == "decode" else "prefill 512 tok/s"
                    record(
                        "int8",
                        size,
                        "int8",
                        {"what": what},
                        r,
                        f"{size} int8 {label} vs transformers fp32 (error vs fp32: relative {err['rel_error']:.1e}, "
                        f"KL max {err['kl_max']:.1e}, top-1 {err['top1_agreement']:.1%}{ct2})",
                        0,
                        ">= 1.0x ctranslate2 int8",
                    )
                del neox8, hf
            if "compile" in a.only and dtype == "fp32":
                from neox_mini.fast import compile_options

                for quantization, mode in ((None, "default"), (None, "max-autotune"), ("int8", "default")):
                    neox, hf = load_both(folder, dtype)
                    if quantization:
                        neox.quantize(quantization)
                    compute = "int8" if quantization else "float32"
                    r = bench_compiled(
                        neox,
                        hf,
                        mode,
                        runs,
                        NEW_TOKENS,
                        ct2_runs(a.ct2_python, folder, (compute,), "decode", a.threads),
                    )
                    kind = quantization or dtype
                    r["compile_first"], r["compile_cached"] = compile_seconds(folder, kind, mode, a.threads)
                    ct2 = streaming(neox, r, r["neox"])
                    if f"ct2_{compute}" in r:
                        theirs = r[f"ct2_{compute}"]["median"]
                        ct2 += f"; ctranslate2 {compute} {theirs:.0f} = {r['neox']['median'] / theirs:.2f}x"
                    gain = r["compiled_again"]["median"] / r["uncompiled"]["median"]
                    cached = compile_options(neox).get("fx_graph_cache", True)  # inductor's default
                    label = kind if mode == "default" else f"{kind} {mode}"
                    record(
                        "compile",
                        size,
                        kind,
                        {"mode": mode},
                        r,
                        f"{size} {label} decode tok/s, batch 1, compiled, vs transformers fp32 (uncompiled "
                        f"{r['uncompiled']['median']:.0f}: compiled = {gain:.2f}x; compile "
                        f"{r['compile_first']:.0f} s, {r['compile_cached']:.0f} s "
                        + ("from the cache" if cached else "again (frozen: not cached)")
                        + f"{ct2})"
                        + ("" if r["same_tokens"] or quantization else " (tokens differ!)"),
                        0,
                        ">= 1.3x" if not quantization else ">= 1.0x ctranslate2 int8",
                    )
                    del neox, hf
            if "cache" in a.only and dtype == "fp32" and size in ("70m", "160m"):
                neox, hf_eager = checkpoint_models(folder, dtype)
                for T in (512, 2048):
                    for everything in (True, False):
                        what = (
                            "all hook points vs hidden states + attentions"
                            if everything
                            else ("resid_post only vs hidden states")
                        )
                        r = bench_cache(neox, hf_eager, T, runs, everything)
                        record(
                            "cache",
                            size,
                            dtype,
                            {"tokens": T, "all": everything},
                            r,
                            f"{size} {dtype} run_with_cache {T} tok, s ({what})",
                            3,
                        )
                del neox, hf_eager
                for T in (512, 2048):
                    r = bench_cache_rss(folder, dtype, T, a.threads)
                    record(
                        "cache_rss",
                        size,
                        dtype,
                        {"tokens": T},
                        r,
                        f"{size} {dtype} {T} tok peak RSS MiB, all activations (neox plain {r['neox-plain']:.0f}, "
                        f"resid_post only {r['neox-resid']:.0f} = {r['resid_over_plain']:.2f}x plain; hf plain "
                        f"{r['hf-plain']:.0f}, hidden states {r['hf-hidden']:.0f})",
                        0,
                        "resid <= 1.1x plain",
                    )
            if "cold" in a.only and not quick_bf16 and not (a.quick and size == "70m"):
                r = bench_cold(folder, dtype, runs, a.threads)
                record("cold", size, dtype, {}, r, f"{size} {dtype} start to first token, s", 2, "<= 0.5x")
            if "rss" in a.only:
                r = bench_rss(folder, dtype, 1 if a.quick else runs, a.threads)
                record(
                    "rss",
                    size,
                    dtype,
                    {},
                    r,
                    f"{size} {dtype} peak RSS MiB (budget {r['budget_mib']:.0f}: "
                    f"torch {r['import_torch']['median']:.0f} + 1.05 x {r['weights_mib']:.0f} weights)",
                    0,
                    f"neox <= {r['budget_mib']:.0f}",
                )
    if "sweep" in a.only:
        r = bench_sweep(a.cache, runs, a.threads)
        record(
            "sweep",
            "70m",
            "fp32",
            {"revisions": len(SWEEP_REVISIONS)},
            r,
            f"70m fp32 sweep, s per revision over 20 (naive from_pretrained loop {fmt(r['naive'], 3)}; "
            f"peak RSS MiB sweep {r['rss_mib']['sweep']:.0f}, naive {r['rss_mib']['naive']:.0f}, "
            f"transformers {r['rss_mib']['hf']:.0f})",
            3,
            "<= 0.15 s",
        )
    if "tp" in a.only:
        from neox_mini import NeoXConfig
        from neox_mini.synthetic import write_random_checkpoint

        config = NeoXConfig.from_pythia("160m")
        folder = a.cache / "160m-fp32-sharded"
        if not (folder / "config.json").is_file():
            write_random_checkpoint(folder, config, max_shard_bytes=200_000_000)
        r = bench_tp(folder, runs, a.threads, a.cache)
        record(
            "tp",
            "160m",
            "fp32",
            {"ranks": 2},
            r,
            f"160m fp32 peak RSS MiB per rank, 2 ranks vs 1 process (file pages {r['file_mib']['rank']['median']:.0f}"
            f" vs {r['file_mib']['single']['median']:.0f}; weight bytes read {r['read_bytes']['rank']:,.0f} vs "
            f"{r['read_bytes']['single']:,.0f}; decode tok/s {r['tok_s']['rank']['median']:.1f} vs "
            f"{r['tok_s']['single']['median']:.1f})",
            0,
            "<= 0.6x",
        )
    if "eval" in a.only:
        r = bench_eval(checkpoint(a.cache, "70m", "fp32"), a.cache, runs, a.threads)
        record(
            "eval",
            "70m",
            "fp32",
            {},
            r,
            f"70m fp32 lm-eval example tasks, s (peak RSS MiB neox "
            f"{r['rss_mib']['neox']:.0f}, hf {r['rss_mib']['hf']:.0f})",
            1,
            "",
        )
    results["seconds"] = time.perf_counter() - started
    a.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['seconds']:.0f} s; load average now {load_avg()}; JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
