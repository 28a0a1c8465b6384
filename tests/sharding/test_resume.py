"""Acceptance 3: a run SIGKILLed at several points, then rerun, equals an uninterrupted run byte
for byte, and nothing a reader trusts (shards.parquet, the manifest's counts) ever claims a shard
that is not complete.

Each killed run is a child process that SIGKILLs itself at an exact point (patched in the child
only: mid-tar, after a shard's tar and .idx but before its part record, half-way through a
manifest write, just before shards.parquet), plus one killed from outside at a moment in the
middle of shard building while the parent keeps checking the manifest.
"""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sharding.run import shard_dataset

from tests.sharding.conftest import REPO, tree_digest

OPTIONS = dict(group_by="dir", label_from="parent", shard_samples=2, max_side=32)

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import sharding.run, sharding.build, sharding.manifest_writer, sharding.tar_writer, groundfloor.storage
    sharding.manifest_writer.MANIFEST_INTERVAL_S = 0.0   # rewrite the manifest after every shard
    point, arg = sys.argv[3], sys.argv[4]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    calls = {"n": 0}
    if point == "mid_tar":
        original = sharding.tar_writer.TarWriter.write_sample
        def write_sample(self, key, members):
            calls["n"] += 1
            if calls["n"] == int(arg):
                self._write(b"partial header")   # some bytes reach the temporary file
                self._sink.flush()
                die()
            return original(self, key, members)
        sharding.tar_writer.TarWriter.write_sample = write_sample
    elif point in ("before_part", "mid_manifest", "before_tables"):
        original = groundfloor.storage.Storage.write_bytes
        def write_bytes(self, uri, data):
            if point == "before_part" and uri.endswith("/_parts/" + arg):
                die()
            if point == "before_tables" and uri.endswith("/shards.parquet") and "final" in calls:
                die()
            if point == "mid_manifest" and uri.endswith("/manifest.json"):
                calls["n"] += 1
                if calls["n"] == int(arg):
                    with self.open_atomic_write(uri) as f:
                        f.write(data[: len(data) // 2]); f.flush(); die()
            return original(self, uri, data)
        groundfloor.storage.Storage.write_bytes = write_bytes
    if point == "before_tables":  # shards.parquet is also written (empty) before building
        original_write = sharding.run.write_shards_table
        def write_shards_table(output, records, storage):
            if records:
                calls["final"] = True
            return original_write(output, records, storage)
        sharding.run.write_shards_table = write_shards_table
    elif point == "slow":
        original = sharding.run.build_shard
        def slow(*a, **k):
            time.sleep(float(arg)); return original(*a, **k)
        sharding.run.build_shard = slow
    sharding.run.shard_dataset(sys.argv[1], sys.argv[2], progress=False,
                               group_by="dir", label_from="parent", shard_samples=2, max_side=32)
    """
)


def start_child(corpus: Path, out: Path, point: str, arg: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(out), point, arg],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_manifest_lists_only_finished(out: Path, reference: dict[str, str]) -> int:
    """Every shard shards.parquet lists is fully there with the final bytes, and the manifest
    counts no more shards than have finished records; returns how many finished shards the
    manifest counts."""
    path = out / "manifest.json"
    if not path.exists():
        return 0
    manifest = json.loads(path.read_bytes())  # atomic writes: never a torn manifest
    listed = pq.read_table(out / "shards.parquet").to_pylist() if (out / "shards.parquet").exists() else []
    if not manifest["complete"]:
        assert listed == [], "an incomplete build's shards.parquet lists shards"
    for shard in listed:
        tar = out / "shards" / shard["name"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"] == reference[f"shards/{shard['name']}"]
        assert (out / "shards" / shard["name"].replace(".tar", ".idx")).exists()
        assert (out / "index" / shard["name"].replace(".tar", ".parquet")).exists()
    finished = 0
    records = sorted((out / "_parts").glob("*.json")) if (out / "_parts").exists() else []
    for record_path in [p for p in records if not p.name.startswith(".tmp-")]:  # an atomic write's temp file vanishes
        record = json.loads(record_path.read_bytes())
        if record["fingerprint"] and reference.get(f"_parts/{record_path.name}") == hashlib.sha256(record_path.read_bytes()).hexdigest():
            finished += record["num_samples"] > 0
            tar = out / "shards" / record["name"]
            assert hashlib.sha256(tar.read_bytes()).hexdigest() == record["sha256"] == reference[f"shards/{record['name']}"]
            assert (out / "index" / record["name"].replace(".tar", ".parquet")).exists()
    assert manifest["num_shards"] <= finished
    return manifest["num_shards"]


@pytest.fixture(scope="module")
def uninterrupted(view_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    summary = shard_dataset(str(view_corpus), str(out), progress=False, **OPTIONS)
    assert summary.num_reencoded > 0 and summary.num_shards >= 10
    digests = tree_digest(out)
    return {name: digest for name, digest in digests.items()}


@pytest.mark.integration
def test_killed_at_exact_points_then_rerun_is_identical(view_corpus, tmp_path, uninterrupted):
    out = tmp_path / "ds"
    listed = []
    for point, arg in [("mid_tar", "1"), ("mid_tar", "9"), ("before_part", "data-000006.json"),
                       ("mid_manifest", "3"), ("before_tables", "")]:
        child = start_child(view_corpus, out, point, arg)
        _, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, (point, err.decode()[-2000:])
        listed.append(assert_manifest_lists_only_finished(out, uninterrupted))
        if point == "mid_tar":
            assert list((out / "shards").glob(".tmp-*")), "the kill left a partial temporary tar"
            if arg == "1":  # killed inside the very first shard: nothing published yet
                assert not (out / "shards" / "data-000000.tar").exists()
        manifest = out / "manifest.json"
        assert not manifest.exists() or not json.loads(manifest.read_bytes())["complete"]
    # Progress was kept between kills: later kills found more finished shards.
    assert listed[0] == 0 and listed[-1] > listed[1] > 0
    summary = shard_dataset(str(view_corpus), str(out), progress=False, **OPTIONS)
    assert summary.num_shards_skipped == summary.num_shards  # everything was already built
    assert tree_digest(out) == uninterrupted  # includes: no temporary files left


@pytest.mark.integration
def test_killed_from_outside_while_building(view_corpus, tmp_path, uninterrupted):
    out = tmp_path / "ds"
    child = start_child(view_corpus, out, "slow", "0.1")
    seen_listed = 0
    deadline = time.monotonic() + 120
    try:
        while seen_listed < 3 and time.monotonic() < deadline and child.poll() is None:
            seen_listed = max(seen_listed, assert_manifest_lists_only_finished(out, uninterrupted))
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and seen_listed >= 3
    assert not json.loads((out / "manifest.json").read_bytes())["complete"]
    assert_manifest_lists_only_finished(out, uninterrupted)
    shard_dataset(str(view_corpus), str(out), workers=2, progress=False, **OPTIONS)
    assert tree_digest(out) == uninterrupted
    assert not list(out.rglob(".tmp-*"))


@pytest.mark.integration
def test_rerun_with_other_options_never_lists_stale_shards(view_corpus, tmp_path, uninterrupted):
    """A finished dataset rebuilt with other options: its old manifest must stop listing shards
    before they are overwritten, and the rebuild ends equal to a fresh build."""
    out = tmp_path / "ds"
    shard_dataset(str(view_corpus), str(out), progress=False, **{**OPTIONS, "max_side": None})
    child = start_child(view_corpus, out, "mid_tar", "5")  # OPTIONS: max_side=32, other bytes
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert not manifest["complete"] and manifest["config"]["max_side"] == 32
    assert assert_manifest_lists_only_finished(out, uninterrupted) >= 1
    shard_dataset(str(view_corpus), str(out), progress=False, **OPTIONS)
    assert tree_digest(out) == uninterrupted
