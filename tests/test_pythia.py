"""Every Pythia fact (neox_mini/pythia.py): names, the 154-checkpoint schedule, step <-> tokens,
revision-name checking, the known-issues list, and `neox-mini revisions`."""

import re

import pytest

from neox_mini import ConfigError, NeoXConfig, ResolveError, UnknownModelError
from neox_mini.hub import hub_repo_id
from neox_mini.pythia import (
    FINAL_STEP,
    REVISIONS,
    STEPS,
    TOKENS_PER_STEP,
    RevisionError,
    check_revision,
    has_schedule,
    known_issues,
    nearest_revisions,
    parse_name,
    revision_step,
    step_to_tokens,
    table,
    tokens_to_step,
)

# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, row, repo_id",
    [
        ("pythia-160m", "pythia-160m", "EleutherAI/pythia-160m"),
        ("160m", "pythia-160m", "EleutherAI/pythia-160m"),
        ("EleutherAI/pythia-160m", "pythia-160m", "EleutherAI/pythia-160m"),
        ("eleutherai/Pythia-160M-Deduped", "pythia-160m", "EleutherAI/pythia-160m-deduped"),
        ("1.4B-Deduped", "pythia-1.4b", "EleutherAI/pythia-1.4b-deduped"),
        ("PYTHIA-1.4B", "pythia-1.4b", "EleutherAI/pythia-1.4b"),
        ("pythia-410m-v0", "pythia-410m", "EleutherAI/pythia-410m-v0"),
        ("pythia-160m-deduped-v0", "pythia-160m", "EleutherAI/pythia-160m-deduped-v0"),
        ("pythia-12b", "pythia-12b", "EleutherAI/pythia-12b"),
        # The PolyPythias seed runs: pythia-{14m..410m}-seed{1..9}, pythia-160m-{data,weight}-seed{1..3}
        ("pythia-14m-seed1", "pythia-14m", "EleutherAI/pythia-14m-seed1"),
        ("EleutherAI/pythia-410m-seed9", "pythia-410m", "EleutherAI/pythia-410m-seed9"),
        ("pythia-160m-data-seed3", "pythia-160m", "EleutherAI/pythia-160m-data-seed3"),
        ("pythia-160m-weight-seed2", "pythia-160m", "EleutherAI/pythia-160m-weight-seed2"),
    ],
)
def test_one_parser_for_config_and_hub_names(name, row, repo_id):
    assert parse_name(name).row == row and parse_name(name).repo_id == repo_id
    # NeoXConfig.from_pythia and from_pretrained's name resolution accept exactly these names.
    assert NeoXConfig.from_pythia(name) == NeoXConfig.from_pythia(row)
    assert hub_repo_id(name) == repo_id


@pytest.mark.parametrize(
    "name, message",
    [
        ("pythia-7b", r"'pythia-7b' is not a Pythia model; sizes are: 14m, 31m, 70m, .*, 12b"),
        ("pythia-999m", r"'pythia-999m' is not a Pythia model; sizes are: 14m, 31m, 70m"),
        ("pythia-1.3b", r"pre-2023 name of pythia-1.4b: use pythia-1.4b .* or pythia-1.4b-v0"),
        ("pythia-125m", r"pre-2023 name of pythia-160m"),
        ("13b-deduped", r"pre-2023 name of pythia-12b"),
        ("pythia-1b-seed1", r"the seed runs of pythia-1b are: none"),
        ("pythia-70m-seed10", r"the seed runs of pythia-70m are: pythia-70m-seed1, .*pythia-70m-seed9"),
        ("pythia-70m-data-seed1", r"'pythia-70m-data-seed1' is not a Pythia model"),
        ("pythia-160m-seed1-v0", r"is not a Pythia model"),
    ],
)
def test_config_and_hub_refuse_the_same_names_with_the_same_message(name, message):
    for load in (NeoXConfig.from_pythia, hub_repo_id):
        with pytest.raises(UnknownModelError, match=message):
            load(name)
    assert issubclass(UnknownModelError, ConfigError) and issubclass(UnknownModelError, ResolveError)


def test_other_repos_of_the_organisation_go_to_the_hub_as_they_are():
    """A full repo id that is not in the suite is not second-guessed (EleutherAI has fine-tunes and
    ablations too; the Hub says whether it exists), but it has no row in the Pythia table."""
    for name in ("EleutherAI/pythia-160m-alldropout", "EleutherAI/pythia-13b-deduped"):
        assert hub_repo_id(name) == name
        with pytest.raises(UnknownModelError):
            NeoXConfig.from_pythia(name)


def test_seed_runs_are_listed_where_they_exist():
    runs = {name: row["seed_runs"] for name, row in table().items()}
    for size in ("14m", "31m", "70m", "160m", "410m"):
        assert [r for r in runs[f"pythia-{size}"] if r.startswith("seed")] == [f"seed{i}" for i in range(1, 10)]
    assert [r for r in runs["pythia-160m"] if not r.startswith("seed")] == [
        "data-seed1",
        "data-seed2",
        "data-seed3",
        "weight-seed1",
        "weight-seed2",
        "weight-seed3",
    ]
    assert all(runs[f"pythia-{size}"] == [] for size in ("1b", "1.4b", "2.8b", "6.9b", "12b"))


# ----------------------------------------------------------------------------- the schedule


def test_the_schedule_has_154_checkpoints():
    assert len(REVISIONS) == len(set(REVISIONS)) == 154
    assert REVISIONS[:12] == (
        "step0",
        "step1",
        "step2",
        "step4",
        "step8",
        "step16",
        "step32",
        "step64",
        "step128",
        "step256",
        "step512",
        "step1000",
    )
    assert REVISIONS[-1] == "step143000"
    assert list(STEPS) == sorted(STEPS)
    assert [s for s in STEPS if s >= 1000] == list(range(1000, 143001, 1000))  # 143 evenly spaced
    assert all(f"step{s}" == r for s, r in zip(STEPS, REVISIONS, strict=True))


def test_step_to_tokens_matches_the_published_numbers():
    # The EleutherAI/pythia README: 2,097,152 tokens per step (1,024 x 2,048), checkpoints "every
    # 2,097,152,000 tokens", and "each model saw 299,892,736,000 tokens".
    assert TOKENS_PER_STEP == 1024 * 2048 == 2_097_152
    assert step_to_tokens(0) == 0
    assert step_to_tokens(1) == 2_097_152
    assert step_to_tokens(1000) == 2_097_152_000
    assert step_to_tokens(FINAL_STEP) == 299_892_736_000
    for step in STEPS:
        assert tokens_to_step(step_to_tokens(step)) == step


def test_tokens_to_step_rejects_a_partial_step_and_names_the_neighbours():
    with pytest.raises(ValueError, match=r"between step 3 \(6,291,456\) and step 4 \(8,388,608\)"):
        tokens_to_step(3 * TOKENS_PER_STEP + 5)
    for bad in (-1, 1.5, True, "1000"):
        with pytest.raises(ValueError):
            tokens_to_step(bad)
        with pytest.raises(ValueError):
            step_to_tokens(bad)


def test_revision_step():
    assert revision_step("main") == 143000
    assert revision_step("step0") == 0
    assert revision_step("step3000") == 3000
    assert revision_step("a" * 40) is None
    assert revision_step("step03000") is None  # not a well-formed name
    assert revision_step("refs/pr/1") is None


@pytest.mark.parametrize(
    "revision, nearest",
    [
        ("step3001", ["step3000", "step4000", "step2000"]),  # a step that was never saved
        ("step700", ["step512", "step1000", "step256"]),
        ("step143001", ["step143000", "step142000", "step141000"]),
        ("step03000", ["step3000", "step2000", "step4000"]),  # malformed: leading zero (ties: earlier first)
        ("Step3000", ["step3000", "step2000", "step4000"]),  # malformed: capital S
        ("3000", ["step3000", "step2000", "step4000"]),  # malformed: no "step"
        ("step 5", ["step4", "step8", "step2"]),
    ],
)
def test_a_bad_step_name_is_rejected_with_the_nearest_valid_ones(revision, nearest):
    with pytest.raises(RevisionError) as info:
        check_revision(revision, "EleutherAI/pythia-160m")
    message = str(info.value)
    assert "nearest: " + ", ".join(nearest) in message
    assert "neox-mini revisions" in message


def test_a_step_name_without_digits_gets_examples():
    with pytest.raises(RevisionError, match=r"'stepfoo' is not a checkpoint name.*e\.g\. step0, step1000"):
        check_revision("stepfoo")


def test_valid_names_and_other_revisions_pass():
    for r in REVISIONS + ("main", "a" * 40, "refs/pr/3", "v1.0"):
        assert check_revision(r, "EleutherAI/pythia-1.4b-deduped") == r
    # Repos without the schedule (v0 models, other organisations) are not second-guessed.
    assert check_revision("step3001", "EleutherAI/pythia-160m-v0") == "step3001"
    assert check_revision("step3001", "someone/tiny-model") == "step3001"


def test_has_schedule():
    for size in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
        assert has_schedule(f"EleutherAI/pythia-{size}") and has_schedule(f"EleutherAI/pythia-{size}-deduped")
    assert has_schedule("EleutherAI/pythia-70m-seed3") and has_schedule("EleutherAI/pythia-160m-data-seed1")
    assert not has_schedule("EleutherAI/pythia-160m-v0")
    assert not has_schedule("EleutherAI/pythia-125m")
    assert not has_schedule("someone/pythia-160m")


def test_nearest_revisions_gives_the_neighbours_on_both_sides_first():
    assert nearest_revisions(1500, k=2) == ["step1000", "step2000"]
    assert nearest_revisions(1001) == ["step1000", "step2000", "step512"]  # both neighbours first
    assert nearest_revisions(0, k=1) == ["step0"]
    assert nearest_revisions(10**9) == ["step143000", "step142000", "step141000"]


# ----------------------------------------------------------------------------- known issues


def test_known_issues_are_well_formed_and_cite_their_sources():
    issues = known_issues()
    assert len({i["id"] for i in issues}) == len(issues) >= 4
    for issue in issues:
        assert set(issue) == {"id", "repos", "revisions", "summary", "sources"}, issue["id"]
        assert set(issue["revisions"]) <= set(REVISIONS), issue["id"]
        assert len(issue["revisions"]) == len(set(issue["revisions"])), issue["id"]
        assert issue["sources"] and all(
            re.fullmatch(r"https://github\.com/EleutherAI/pythia/issues/\d+", s) for s in issue["sources"]
        ), issue["id"]
        assert len(issue["summary"]) > 100
    by_id = {i["id"]: i for i in issues}
    assert by_id["early-steps-identical"]["revisions"] == ["step0", "step1", "step2"]
    # EleutherAI/pythia#205: 76 branches equal main, 10 share a second file, the other 68 are unique.
    equal_main = set(by_id["pythia-2.8b-branches-equal-main"]["revisions"])
    equal_final = set(by_id["pythia-2.8b-branches-equal-step143000"]["revisions"])
    assert (len(equal_main), len(equal_final), len(equal_main & equal_final)) == (76, 10, 0)
    unique = set(REVISIONS) - equal_main - equal_final
    assert len(unique) == 68 and min(revision_step(r) for r in unique) == 66000
    assert by_id["pythia-12b-first-shard-is-final"]["revisions"] == ["step50000", "step58000"]
    assert [s.rsplit("/", 1)[1] for i in issues for s in i["sources"]] == [
        "83",
        "198",
        "205",
        "195",
        "205",
        "195",
        "206",
    ]


# ----------------------------------------------------------------------------- the CLI


def test_cli_revisions_prints_the_154_checkpoints(capsys):
    from neox_mini.cli import main

    assert main(["revisions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 154
    for line, revision in zip(lines, REVISIONS, strict=True):
        name, step, tokens = line.split()[:3]
        assert name == revision
        assert int(step.replace(",", "")) == revision_step(revision)
        assert int(tokens.replace(",", "")) == step_to_tokens(revision_step(revision))
    assert "main" in lines[-1] and "main" not in "".join(lines[:-1])
