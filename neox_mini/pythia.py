"""Every Pythia fact in one place: the size table, model names, the checkpoint schedule, the known
bad checkpoints and the tokenizer's size. Standard library only (no torch), so the CLI's
`configs` and `revisions` commands start instantly.

    table()                 rows of pythia.toml by canonical name ("pythia-160m")
    parse_name(name)        any accepted spelling -> PythiaName(row, repo_id); the one name parser
    REVISIONS, STEPS        the 154 checkpoints; check_revision, revision_step, step_to_tokens ...
    known_issues()          known_issues.toml; known_issues_for(repo_id, revisions)

The schedule: every model of the suite (14m ... 12b, standard, deduped and the PolyPythias seed
runs) was trained for 143,000 steps of 1,024 sequences x 2,048 tokens = 2,097,152 tokens, and a
checkpoint was published as a git branch of the Hugging Face repo at

    step0                               the initialisation
    step1, step2, step4 ... step512     10 log-spaced early steps (powers of two)
    step1000, step2000 ... step143000   every 1,000 steps

154 in all; `main` holds the final weights (the same training step as step143000; see
known_issues.toml for a repo where the two files differ). Source: the EleutherAI/pythia README
("Models" and "Quickstart") and the Pythia paper (Biderman et al. 2023, section 2.3). The old
"v0" repos have other schedules: `check_revision` leaves their step names alone.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import RevisionError, UnknownModelError

ORG = "EleutherAI"  # the Hub organisation of every Pythia repo

# The GPT-NeoX-20B tokenizer has 50,277 ids; every Pythia embedding has more rows (50,304 / 50,432 /
# 50,688), padded for tensor-parallel training. The extra rows were never a training target.
TOKENIZER_VOCAB_SIZE = 50277

# ----------------------------------------------------------------------------- the size table


@lru_cache(maxsize=1)
def table() -> dict[str, dict[str, Any]]:
    """The rows of pythia.toml, keyed by canonical name ("pythia-160m"), smallest first."""
    return tomllib.loads(_package_text("pythia.toml"))


def _package_text(name: str) -> str:
    # A data file inside the package: found the same way from a source checkout and an install.
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")


def row_with_architecture(**shape: int) -> str | None:
    """The table row whose vocab_size, hidden_size, num_layers, num_heads and intermediate_size
    are exactly these, if any."""
    for name, row in table().items():
        if all(row[k] == shape[k] for k in ARCHITECTURE_KEYS):
            return name
    return None


# ----------------------------------------------------------------------------- names


@dataclass(frozen=True)
class PythiaName:
    row: str  # the table row: "pythia-160m"
    repo_id: str  # the Hub repo: "EleutherAI/pythia-160m-deduped", "EleutherAI/pythia-70m-seed3"
    has_schedule: bool  # whether the repo carries the 154 step branches (not the v0 repos)


# "pythia-160m", "160m", "pythia-1.4b-deduped", "410m-deduped-v0", "pythia-70m-seed3",
# "pythia-160m-data-seed2"; the "EleutherAI/" prefix is stripped before matching.
_NAME = re.compile(r"(?:pythia-)?(?P<size>[0-9.]+[mb])(?P<run>-deduped|-(?:data-|weight-)?seed[0-9]+)?(?P<v0>-v0)?")


def looks_like_pythia(name: str) -> bool:
    """Whether a name is meant as a Pythia model (so an unknown one is an error, not a path)."""
    short = _strip_org(name)
    return short is not None and (short.lower().startswith("pythia-") or _NAME.fullmatch(short.lower()) is not None)


def _strip_org(name: str) -> str | None:
    """The name without an "EleutherAI/" prefix; None for another organisation's repo id."""
    name = name.strip()
    if "/" not in name:
        return name
    org, _, short = name.partition("/")
    return short if org.lower() == ORG.lower() and "/" not in short else None


def parse_name(name: str) -> PythiaName:
    """Any accepted spelling of a Pythia model -> its table row and Hub repo id.

    Accepted: "pythia-160m", "160m", "EleutherAI/pythia-160m", "-deduped", "-v0" (also
    "-deduped-v0"), and the seed runs "pythia-<size>-seed<k>", "pythia-160m-data-seed<k>",
    "pythia-160m-weight-seed<k>" where they exist; any letter case. An UnknownModelError names the
    sizes, and for a pre-2023 name ("pythia-1.3b") the two models it may mean."""
    short = _strip_org(name)
    m = _NAME.fullmatch(short.lower()) if short is not None else None
    rows = table()
    sizes = ", ".join(r.removeprefix("pythia-") for r in rows)
    if m is None or f"pythia-{m['size']}" not in rows:
        size = m["size"] if m else None
        for row_name, row in rows.items():
            if f"pythia-{size}" in row["old_names"]:
                new = row_name.removeprefix("pythia-")
                raise UnknownModelError(
                    f"{name!r} is the pre-2023 name of pythia-{new}: use pythia-{new} (the retrained suite) "
                    f"or pythia-{new}-v0 (the original run that carried the old name)"
                )
        raise UnknownModelError(
            f"{name!r} is not a Pythia model; sizes are: {sizes}, each also as -deduped "
            f"(and -v0); seed runs: `neox-mini configs` lists them"
        )
    row_name, run, v0 = f"pythia-{m['size']}", m["run"] or "", m["v0"] or ""
    seed_runs = rows[row_name]["seed_runs"]
    if run not in ("", "-deduped") and (run[1:] not in seed_runs or v0):
        have = ", ".join(f"{row_name}-{r}" for r in seed_runs) or "none"
        raise UnknownModelError(f"{name!r} is not a Pythia model: the seed runs of {row_name} are: {have}")
    return PythiaName(row_name, f"{ORG}/{row_name}{run}{v0}", has_schedule=not v0)


# ----------------------------------------------------------------------------- the schedule

TOKENS_PER_STEP = 2_097_152  # 1,024 sequences x 2,048 tokens, the same for every Pythia size
FINAL_STEP = 143_000

STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, FINAL_STEP + 1, 1000))
REVISIONS: tuple[str, ...] = tuple(f"step{s}" for s in STEPS)
assert len(REVISIONS) == 154, len(REVISIONS)

_STEP_SET = frozenset(STEPS)
# A well-formed step branch name: "step" and a number without leading zeros.
_STEP_NAME = re.compile(r"step(0|[1-9][0-9]*)")
# Anything a person might have meant as a step name: "step 3000", "Step3000", "3000", "step03000", "step-5".
_STEP_LIKE = re.compile(r"(?i)\s*(step.*|[0-9][0-9_,]*\s*)")


def step_to_tokens(step: int) -> int:
    """Tokens seen by the end of training step `step` (step 0 = the initialisation: 0 tokens)."""
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"a step is a whole number >= 0, not {step!r}")
    return step * TOKENS_PER_STEP


def tokens_to_step(tokens: int) -> int:
    """The step after which exactly `tokens` tokens were seen; an error names the steps around it
    when `tokens` is not a whole number of steps."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"a token count is a whole number >= 0, not {tokens!r}")
    step, rest = divmod(tokens, TOKENS_PER_STEP)
    if rest:
        raise ValueError(
            f"{tokens:,} tokens is not a whole number of steps ({TOKENS_PER_STEP:,} tokens each): "
            f"it falls between step {step} ({step * TOKENS_PER_STEP:,}) and step {step + 1} "
            f"({(step + 1) * TOKENS_PER_STEP:,})"
        )
    return step


def revision_step(revision: str) -> int | None:
    """The training step of a checkpoint name: "step3000" -> 3000, "main" -> 143000; None for any
    other revision (a commit sha, another branch). Does not check that the step was published."""
    if revision == "main":
        return FINAL_STEP
    m = _STEP_NAME.fullmatch(revision)
    return int(m.group(1)) if m else None


def nearest_revisions(step: int, k: int = 3) -> list[str]:
    """k published checkpoints near `step`: the ones just below and just above it first, then the
    next closest (ties: the earlier step first)."""
    below = max((s for s in STEPS if s <= step), default=None)
    above = min((s for s in STEPS if s >= step), default=None)
    bracket = sorted({s for s in (below, above) if s is not None}, key=lambda s: (abs(s - step), s))
    rest = sorted((s for s in STEPS if s not in bracket), key=lambda s: (abs(s - step), s))
    return [f"step{s}" for s in (bracket + rest)[:k]]


def has_schedule(repo_id: str) -> bool:
    """Whether a repo carries the 154-branch schedule: EleutherAI/pythia-<size>[-deduped], and the
    seed runs; not the v0 repos, not another organisation's."""
    if "/" not in repo_id:
        return False
    try:
        return parse_name(repo_id).has_schedule
    except UnknownModelError:
        return False


def check_revision(revision: str, repo_id: str | None = None) -> str:
    """Return `revision` if it can be a checkpoint of `repo_id`; raise RevisionError, with the
    nearest valid names, for a malformed step name or a step that was never published.

    Only step-like names ("step…" or a bare number) are checked, and only for repos that have the
    schedule (all repos when repo_id is None): "main", commit shas and other branch names pass."""
    if repo_id is not None and not has_schedule(repo_id):
        return revision
    if not _STEP_LIKE.fullmatch(revision):
        return revision
    m = _STEP_NAME.fullmatch(revision)
    if m and int(m.group(1)) in _STEP_SET:
        return revision
    digits = re.sub(r"[^0-9]", "", revision)
    where = f" of {repo_id}" if repo_id else ""
    if m:
        problem = f"step {int(m.group(1)):,} is not a published checkpoint{where}"
    else:
        problem = f"{revision!r} is not a checkpoint name{where}"
    if digits:
        hint = "nearest: " + ", ".join(nearest_revisions(int(digits)))
    else:
        hint = "e.g. step0, step1000, step143000 (= main)"
    raise RevisionError(
        f"{problem}; {hint} (the {len(REVISIONS)} checkpoints: step0, step1, step2, step4 ... "
        f"step512, then every 1,000 steps from step1000 to step{FINAL_STEP}; "
        f"`neox-mini revisions` lists them)"
    )


# ----------------------------------------------------------------------------- known issues


@lru_cache(maxsize=1)
def known_issues() -> list[dict]:
    """The entries of known_issues.toml (id, repos, revisions, summary, sources)."""
    return tomllib.loads(_package_text("known_issues.toml"))["issue"]


def known_issues_for(repo_id: str, revisions) -> list[dict]:
    """The known issues that affect repo_id at any of the given revision names."""
    revisions = set(revisions)
    repo = repo_id.lower()
    return [
        i
        for i in known_issues()
        if any(fnmatch.fnmatchcase(repo, pattern.lower()) for pattern in i["repos"]) and revisions & set(i["revisions"])
    ]
