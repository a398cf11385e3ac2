"""neox_mini as an lm-evaluation-harness model (`neox_mini`), as the Pythia paper evaluated.

    pip install 'neox_mini[eval]'
    neox-mini eval --model pythia-160m --tasks lambada_openai          # or, from Python:
    lm_eval.simple_evaluate(model=NeoXMiniLM(pretrained="pythia-160m"), tasks=[...])

It computes what lm-eval's `--model hf` computes for a GPT-NeoX checkpoint, request by request:
  * no BOS is added; an empty context is conditioned on <|endoftext|> (id 0, lm-eval's prefix token);
  * the input is (context + continuation)[-(max_length + 1):][:-1], right-padded in a batch (causal
    attention: padding after a row cannot change it);
  * log-softmax over all (padded) vocabulary rows, in fp32 for an fp32 model;
  * loglikelihood_rolling uses lm-eval's own rolling windows (get_rolling_token_windows);
  * generate_until: greedy over every row of the vocabulary, the context left-truncated to
    max_length - max_gen_toks, <|endoftext|> added to the stop strings, ids that no token has
    (the padded rows) dropped and special tokens skipped before decoding, cut at the first stop.
This module imports lm_eval; nothing else in neox_mini imports this module but `neox-mini eval`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from . import fast
from .generation import generate_batch
from .loading import from_pretrained
from .tokenizer import EOS_ID, Tokenizer


@register_model("neox_mini")
class NeoXMiniLM(TemplateLM):
    def __init__(
        self,
        pretrained: str = "EleutherAI/pythia-14m",
        revision: str | None = None,
        dtype: str | None = "float32",
        device: str = "cpu",
        max_length: int | None = None,
        batch_size: int | str = 8,
        tokenizer: str | None = None,
        model=None,
        **kwargs,
    ):
        super().__init__()
        self.model = (
            model
            if model is not None
            else from_pretrained(
                pretrained, revision=revision, dtype=None if dtype in (None, "auto") else dtype, device=device
            )
        )
        self.tokenizer = Tokenizer(tokenizer or self.model.provenance["path"])
        self._max_length = int(max_length) if max_length else self.model.config.max_position_embeddings
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._device = self.model.embed_out.weight.device

    @property
    def device(self):
        return self._device

    # -- what lm-eval asks of a model ------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return EOS_ID

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return 256

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)  # GPT-NeoX adds no BOS

    def tok_decode(self, tokens) -> str:
        ids = [int(t) for t in tokens if 0 <= int(t) < self.tokenizer.vocab_size]  # no padded rows
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy picks every continuation token)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1) :][:-1] for i in chunk]
            width = max(len(x) for x in inputs)
            batch = torch.tensor([x + [0] * (width - len(x)) for x in inputs], device=self.device)  # right padding
            logprobs = F.log_softmax(fast.forward(self.model, batch).float(), dim=-1)  # [b, width, V]
            for row, i in enumerate(chunk):
                request_str, _, continuation = requests[i]
                n = len(inputs[row])
                scored = logprobs[row, n - len(continuation) : n]  # [contlen, V]
                target = torch.tensor(continuation, device=self.device)
                greedy = bool((scored.argmax(-1) == target).all())
                answer = (float(scored.gather(-1, target[:, None]).sum()), greedy)
                results[i] = answer
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in [req.args for req in requests]:
            windows = [
                (None,) + make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tokenizer.decode([self.eot_token_id])
        out = []
        for context, gen_kwargs in [req.args for req in requests]:
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            if kwargs.get("do_sample"):
                raise ValueError("neox_mini's lm-eval adapter generates greedily only (do_sample=False)")
            context_ids = self.tok_encode(context)[-(self.max_length - max_gen_toks) :]
            new = generate_batch(
                self.model, [context_ids], max_gen_toks, eos_id=EOS_ID, vocab_limit=self.model.config.vocab_size
            )[0]
            text = postprocess_generated_text(self.tok_decode(new), stop=until, think_end_token=None)
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out


def evaluate(
    model: str,
    tasks: list[str],
    revisions: list[str | None],
    *,
    include_path: str | None = None,
    out: str | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    dtype: str | None = "float32",
    log_samples: bool = False,
    task_manager=None,
) -> dict[str, dict]:
    """lm-eval's simple_evaluate for each revision of `model` (None: the model as given), with one
    model object whose weights are swapped in place between revisions (see sweep.py). Returns
    {revision: lm-eval results, with the revision's provenance under "neox_mini"}; with `out`,
    writes OUT/<revision>.json per revision and OUT/summary.md (task x revision)."""
    import json

    import lm_eval as harness
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from . import sweep

    if task_manager is None:  # indexing lm-eval's own tasks takes seconds: pass one to reuse it
        task_manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    if revisions == [None]:  # the model as given: one folder, or a Hub name at main
        net = from_pretrained(model, dtype=dtype)
        pairs = [(sweep.Revision("model", Path(net.provenance["path"]), dict(net.provenance)), net)]
    else:
        pairs = sweep.each_revision(sweep.locate(model, revisions), dtype=dtype)
    results = {}
    for revision, net in pairs:
        lm = NeoXMiniLM(model=net, tokenizer=str(revision.folder), max_length=max_length, batch_size=batch_size)
        r = harness.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=task_manager,
            limit=limit,
            log_samples=log_samples,
            batch_size=batch_size,
        )
        r["neox_mini"] = {k: v for k, v in revision.provenance.items() if k != "files"}
        r.pop("config", None)  # holds the model object
        results[revision.name] = r
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            text = json.dumps({k: v for k, v in r.items() if k != "samples"}, indent=1, default=handle_non_serializable)
            (Path(out) / f"{revision.name}.json").write_text(text + "\n", encoding="utf-8")
    if out:
        (Path(out) / "summary.md").write_text(summary_table(results), encoding="utf-8")
    return results


def summary_table(results: dict[str, dict]) -> str:
    """Markdown: one row per task and metric, one column per revision."""
    revisions = list(results)
    rows = {}
    for revision, r in results.items():
        for task, metrics in r["results"].items():
            for key, value in metrics.items():
                if isinstance(value, int | float) and "stderr" not in key and key != "sample_len":
                    rows.setdefault((task, key.split(",")[0]), {})[revision] = value
    lines = ["| task | metric | " + " | ".join(revisions) + " |", "|---|---|" + "---|" * len(revisions)]
    for (task, metric), values in sorted(rows.items()):
        cells = [f"{values[r]:.6g}" if r in values else "" for r in revisions]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- example tasks

WORDS = "the of and a to in is was model Pythia token layer attention rotary 2048 café 東京 river stone light".split()

EXAMPLE_TASKS = {
    "nm_ll": """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{' ' + target}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "nm_roll": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "nm_mc": """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "nm_gen": """output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


def example_tasks(folder) -> Path:
    """Write four small tasks over local JSONL files into `folder`, one per request type, each with
    20+ documents of random words, some longer than a short context: nm_ll (loglikelihood), nm_roll
    (loglikelihood_rolling), nm_mc (multiple_choice), nm_gen (generate_until). For trying the
    harness offline, and for the tests and the benchmark; use the folder as include_path."""
    import json
    import random

    rng = random.Random(0)

    def words(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    docs = {
        "nm_ll": [
            {"context": words(rng.randint(3, 60 if i % 4 == 0 else 25)), "target": rng.choice(WORDS)} for i in range(22)
        ],
        "nm_roll": [{"text": words(rng.randint(5, 900 if i % 3 == 0 else 120))} for i in range(21)],
        "nm_mc": [
            {
                "question": words(rng.randint(3, 40)) + " ?",
                "choices": [words(2), words(3), words(1)],
                "label": rng.randint(0, 2),
            }
            for i in range(20)
        ],
        "nm_gen": [
            {"prompt": words(rng.randint(3, 50 if i % 4 == 0 else 20)) + ":", "answer": rng.choice(WORDS)}
            for i in range(20)
        ],
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in docs.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        header = (
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        )
        (folder / f"{name}.yaml").write_text(header + EXAMPLE_TASKS[name], encoding="utf-8")
    return folder
