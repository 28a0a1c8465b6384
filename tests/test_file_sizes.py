"""Files a reader holds in mind: no source file outside tests is over 450 lines."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 450
FOLDERS = ("groundfloor", "sharding", "pipeline", "trainers", "evaluation", "viewstream", "deploy",
           "benchmarks", "testbed")


def test_no_source_file_is_over_a_reader_s_length():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > LIMIT]
    assert not long, "\n".join(long)
