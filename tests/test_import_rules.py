"""The import order of ARCHITECTURE.md: viewstream -> evaluation -> trainers -> pipeline -> sharding.

A stage may import the stages below it (and the leaves `viewstream.errors`, `viewstream.argtypes`, `viewstream.cliflags`,
`viewstream.config_files`),
never one above it, lazily or not. Checked on the source, so a function-level import counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["sharding", "pipeline", "trainers", "evaluation", "viewstream"]
LEAVES = {"viewstream.errors", "viewstream.argtypes", "viewstream.cliflags", "viewstream.config_files"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("stage", ORDER[:-1])
def test_no_stage_imports_upward(stage: str) -> None:
    above = ORDER[ORDER.index(stage) + 1:]
    offenders = []
    for path in sorted((ROOT / stage).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in above and not any(name == leaf or name.startswith(leaf + ".") for leaf in LEAVES):
                if top == "viewstream" and name == "viewstream":
                    continue
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_benchmarks_and_deploy_do_not_import_tests() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for folder in ("benchmarks", "deploy")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] == "tests"
    ]
    assert not offenders, "\n".join(offenders)
