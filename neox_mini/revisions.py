"""The Pythia checkpoint schedule: the 154 training-step branches every Pythia repo carries.

Every model of the suite (14m ... 12b, standard and deduped) was trained for 143,000 steps of
1,024 sequences x 2,048 tokens = 2,097,152 tokens, and EleutherAI published a checkpoint as a git
branch of the Hugging Face repo at

    step0                          the initialisation
    step1, step2, step4 ... step512  10 log-spaced early steps (powers of two)
    step1000, step2000 ... step143000  every 1,000 steps

154 in all; `main` holds the final weights (the same training step as step143000; see
known_issues.toml for a repo where the two files differ). Source: the EleutherAI/pythia README
("Models" and "Quickstart" sections) and the Pythia paper (Biderman et al. 2023, section 2.3).

The old "v0" models (`pythia-1.4b-v0`, ...) and the seed/weight-seed variants have other schedules:
`check_revision` only validates step names for the standard and deduped repos (see `has_schedule`).
"""

from __future__ import annotations

import re

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
# The repos that carry the 154 branches: EleutherAI/pythia-<size>[-deduped], sizes as in configs/pythia.toml.
_SCHEDULED_REPO = re.compile(r"(?i)eleutherai/pythia-(14m|31m|70m|160m|410m|1b|1\.4b|2\.8b|6\.9b|12b)(-deduped)?")


class RevisionError(ValueError):
    """A step name that is malformed or not one of the 154 published checkpoints."""


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
        raise ValueError(f"{tokens:,} tokens is not a whole number of steps ({TOKENS_PER_STEP:,} tokens each): "
                         f"it falls between step {step} ({step * TOKENS_PER_STEP:,}) and step {step + 1} "
                         f"({(step + 1) * TOKENS_PER_STEP:,})")
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
    """Whether a repo carries the 154-branch schedule (EleutherAI/pythia-<size>[-deduped])."""
    return _SCHEDULED_REPO.fullmatch(repo_id) is not None


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
    raise RevisionError(f"{problem}; {hint} (the {len(REVISIONS)} checkpoints: step0, step1, step2, step4 ... "
                        f"step512, then every 1,000 steps from step1000 to step{FINAL_STEP}; "
                        f"`neox-mini revisions` lists them)")
