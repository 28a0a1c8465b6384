"""Parquet files are read on the caller's thread (`groundfloor.parquet_files.read_parquet`).

`pyarrow.parquet.read_table` runs through `pyarrow.dataset` and Arrow's thread pools, whose C++
threads may outlive the interpreter: a finished command then aborts at exit (134, "terminate
called without an active exception"), as `viewstream shard` did about once in ten runs on a busy
machine. These tests catch the call coming back.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["groundfloor", "sharding", "pipeline", "trainers", "evaluation", "viewstream", "deploy"]
THREADED_READS = {"read_table", "read_pandas", "ParquetDataset", "dataset"}


def threaded_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in THREADED_READS and isinstance(node.value, ast.Name) \
                and node.value.id in {"pq", "parquet", "ds"}:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_stage_reads_parquet_through_arrows_thread_pools() -> None:
    found = [hit for floor in FLOORS for path in sorted((ROOT / floor).rglob("*.py")) for hit in threaded_reads(path)]
    assert not found, "\n".join(found)


def test_the_rule_sees_read_table(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import pyarrow.parquet as pq\n\ndef f(p):\n    return pq.read_table(p)\n")
    assert [hit.split()[-1] for hit in _reads_outside_root(module)] == ["pq.read_table"]


def _reads_outside_root(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{n.lineno} {n.value.id}.{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in THREADED_READS and isinstance(n.value, ast.Name)]


def test_a_shard_run_and_its_resume_leave_no_native_thread_behind(tmp_path: Path) -> None:
    """Threads alive after two runs (build, then resume) in one process: numpy's and jemalloc's
    from the imports and tqdm's monitor, nothing of Arrow's pools (they outlive the interpreter)."""
    from sharding.synthetic import generate_view_corpus

    generate_view_corpus(tmp_path / "images", 6, seed=0, size=24, min_views=1, max_views=3)
    script = ("import os, threading\nfrom viewstream.cli import main\nimport numpy, pyarrow, tqdm\n"
              "before = len(os.listdir('/proc/self/task'))\n"
              f"for _ in range(2):\n    assert main(['shard', {str(tmp_path / 'images')!r}, {str(tmp_path / 'ds')!r}, "
              "'--shard-samples', '2', '--no-progress']) == 0\n"
              "python_threads = len(threading.enumerate()) - 1\n"
              "print(len(os.listdir('/proc/self/task')) - before - python_threads)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0", "native threads left behind"
