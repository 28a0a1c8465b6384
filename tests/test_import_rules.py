"""The floors of ARCHITECTURE.md: viewstream -> evaluation -> trainers -> pipeline -> sharding -> groundfloor.

A package may import the packages below it, never one above it, lazily or not: checked on the
source, so a function-level import counts too. No exceptions. Command lines are the front
door's: nothing outside `viewstream/` imports argparse or `viewstream`. Test and benchmark
tooling (`testbed/`) sits beside the floors: tests and benchmarks import it, no stage does.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["groundfloor", "sharding", "pipeline", "trainers", "evaluation", "viewstream"]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(folder: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {name}"
            for path in sorted((ROOT / folder).rglob("*.py"))
            for name in sorted(imported_modules(path)) if name.split(".")[0] in forbidden]


@pytest.mark.parametrize("floor", ORDER[:-1])
def test_no_floor_imports_upward(floor: str) -> None:
    above = set(ORDER[ORDER.index(floor) + 1:]) | {"testbed", "tests", "benchmarks"}
    found = offenders(floor, above)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("floor", ORDER[:-1] + ["testbed"])
def test_command_lines_are_the_front_doors(floor: str) -> None:
    found = offenders(floor, {"argparse", "viewstream"})
    assert not found, "\n".join(found)


def test_the_front_door_imports_no_tooling() -> None:
    found = offenders("viewstream", {"testbed", "tests", "benchmarks"})
    assert not found, "\n".join(found)


def test_benchmarks_and_deploy_do_not_import_tests() -> None:
    found = [row for folder in ("benchmarks", "deploy") for row in offenders(folder, {"tests"})]
    assert not found, "\n".join(found)


def test_the_rule_sees_a_lazy_upward_import(tmp_path: Path) -> None:
    """The checker counts imports inside functions (a lazy import is still an upward arrow)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from evaluation.knn import knn_evaluate\n    import argparse\n")
    assert {"evaluation.knn", "evaluation.knn.knn_evaluate", "argparse"} <= imported_modules(module)
