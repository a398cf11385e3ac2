"""The layout of the package: imports run one way, the public API, and a checkout that works
without an install step."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import neox_mini
from neox_mini import errors

PACKAGE = Path(neox_mini.__file__).resolve().parent


def project_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, read from the source (AST), function-local
    imports included: "neox_mini.model" -> {"neox_mini.config"}."""
    modules = {"neox_mini": PACKAGE / "__init__.py"}
    modules |= {f"neox_mini.{m.name}": PACKAGE / f"{m.name}.py" for m in pkgutil.iter_modules([str(PACKAGE)])}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = (
                    importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    if node.level
                    else node.module
                )
                for a in node.names:  # `from . import pythia` imports the submodule, not the package
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = project_imports()
    assert len(graph) >= 15, sorted(graph)  # the walk found the package's modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_textbook_imports_only_its_config_hook_points_and_int8_layer():
    """model.py knows nothing of files, the Hub or generation: only its config, the hook points and
    the int8 layer (`GPTNeoX.quantize`), none of which imports anything of the package but the
    products of matvec.py, which import nothing."""
    graph = project_imports()
    assert graph["neox_mini.model"] == {"neox_mini.config", "neox_mini.hooks", "neox_mini.quantize"}
    assert graph["neox_mini.hooks"] == set()
    assert graph["neox_mini.quantize"] == {"neox_mini.matvec"} and graph["neox_mini.matvec"] == set()
    assert graph["neox_mini.config"] == {"neox_mini.pythia", "neox_mini.errors"}
    assert graph["neox_mini.pythia"] == {"neox_mini.errors"} and graph["neox_mini.errors"] == set()


def test_public_api():
    for name in ("GPTNeoX", "NeoXConfig", "from_pretrained", "generate", "Tokenizer", "NeoxMiniError"):
        assert name in neox_mini.__all__ and hasattr(neox_mini, name), name
    assert inspect.isfunction(neox_mini.generate) and inspect.isfunction(neox_mini.from_pretrained)
    # Every error neox_mini defines derives from the one base class (the warning is a warning).
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 8
    for cls in classes:
        assert issubclass(cls, neox_mini.NeoxMiniError) or issubclass(cls, Warning), cls
        assert getattr(neox_mini, cls.__name__) is cls, f"{cls.__name__} is not exported"


def test_no_submodule_is_shadowed():
    """`import neox_mini.X` and `neox_mini.X` are the same object for every submodule."""
    for m in pkgutil.iter_modules([str(PACKAGE)]):
        if m.name == "__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(f"neox_mini.{m.name}")
        assert getattr(neox_mini, m.name) is module, f"neox_mini.{m.name} is not the submodule"


def test_a_checkout_works_without_installing(tmp_path):
    """A copy of the package, found through PYTHONPATH only (no install, no metadata): the Pythia
    table, name resolution and `python -m neox_mini configs` work."""
    checkout = tmp_path / "checkout"
    shutil.copytree(PACKAGE, checkout / "neox_mini", ignore=shutil.ignore_patterns("__pycache__"))
    script = """
import json, runpy, sys
import neox_mini
sys.argv = ["neox_mini", "configs"]
try:
    runpy.run_module("neox_mini", run_name="__main__", alter_sys=True)  # what `python -m neox_mini configs` runs
except SystemExit as e:
    assert e.code == 0, e.code
torch_for_the_table = "torch" in sys.modules
from neox_mini import NeoXConfig
from neox_mini.hub import hub_repo_id
facts = {"file": neox_mini.__file__, "layers": NeoXConfig.from_pythia("70m").num_layers,
         "repo": hub_repo_id("pythia-160m"), "seed_run": hub_repo_id("pythia-410m-seed4"),
         "torch_for_the_table": torch_for_the_table}
print(json.dumps(facts))
"""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    *table, last = proc.stdout.splitlines()
    facts = json.loads(last)
    assert Path(facts["file"]).resolve().is_relative_to(checkout.resolve()), facts["file"]
    assert (facts["layers"], facts["repo"], facts["seed_run"]) == (
        6,
        "EleutherAI/pythia-160m",
        "EleutherAI/pythia-410m-seed4",
    )
    assert table[0].startswith("name") and len(table) == 11 and table[-1].startswith("pythia-12b")
    # The package imports lazily: printing the table needs no torch (a tenth of a second, not two).
    assert facts["torch_for_the_table"] is False


def test_every_data_file_is_shipped_in_the_package():
    """pyproject's package-data covers every non-Python file inside the package."""
    import tomllib

    root = PACKAGE.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["neox_mini"]
    files = [p for p in PACKAGE.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {p.name for p in files} >= {"pythia.toml", "known_issues.toml"}
    for p in files:
        assert any(p.match(pattern) for pattern in data), f"{p.name} would not be installed"
