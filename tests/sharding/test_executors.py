"""Acceptance 2: byte-identical output for --workers 1, --workers 2 and --ray (local Ray, 2 CPUs,
127.0.0.1, inside a loopback-only network namespace)."""
from __future__ import annotations

import pytest

import os

from sharding.executors import ProcessExecutor
from sharding.run import shard_dataset

from tests.sharding.conftest import run_cli, tree_digest

OPTIONS = dict(group_by="dir", label_from="parent", shard_samples=5)


@pytest.fixture(scope="module")
def reference(view_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("w1")
    shard_dataset(str(view_corpus), str(out), workers=1, progress=False, **OPTIONS)
    digest = tree_digest(out)
    assert sum(name.endswith(".tar") for name in digest) >= 4
    return digest


def test_two_local_workers_identical(view_corpus, tmp_path, reference):
    summary = shard_dataset(str(view_corpus), str(tmp_path), workers=2, progress=False, **OPTIONS)
    assert summary.num_shards_built == summary.num_shards
    assert tree_digest(tmp_path) == reference


def test_process_workers_see_the_current_environment(monkeypatch):
    """Workers must see credentials set after an earlier pool (a forkserver would not)."""
    seen = []
    for value in ("first", "second"):
        monkeypatch.setenv("VIEWSTREAM_TEST_MARK", value)
        executor = ProcessExecutor(1)
        try:
            seen += list(executor.map_unordered(os.getenv, ["VIEWSTREAM_TEST_MARK"]))
        finally:
            executor.close()
    assert seen == ["first", "second"]


def _arrow_in_a_worker(rows: int) -> tuple[bool, bool]:
    """(pandas imported after building a Parquet table, after asking for a DataFrame)."""
    import sys

    import pyarrow as pa

    from sharding.build import parquet_bytes

    table = pa.Table.from_pylist([{"a": i} for i in range(rows)])
    parquet_bytes(table)
    before = "pandas" in sys.modules
    return before, len(table.to_pandas()) == rows


def test_process_workers_do_not_import_pandas():
    """pyarrow's first array conversion imports pandas (~0.2 CPU s a worker) unless told not to;
    a worker that does want pandas still gets it."""
    pytest.importorskip("pandas")
    executor = ProcessExecutor(1)
    try:
        assert list(executor.map_unordered(_arrow_in_a_worker, [3])) == [(False, True)]
    finally:
        executor.close()


@pytest.mark.integration
def test_ray_identical(view_corpus, tmp_path, reference):
    result = run_cli(
        "shard", str(view_corpus), str(tmp_path), "--group-by", "dir", "--label-from", "parent",
        "--shard-samples", "5", "--ray", "--ray-cpus", "2", "--no-progress", loopback_only=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(tmp_path) == reference
