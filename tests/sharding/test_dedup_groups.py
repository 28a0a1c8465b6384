"""Issue 14, duplicates ACROSS groups: a photo held by 3 groups (over >= 2 shards) is reported in
duplicates.parquet with exactly those groups, and each --dedup-across-groups mode does what it
says, read back with the real readers and (merge) the real pipeline."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sharding.dataset import load_manifest, read_index, read_quarantine, read_sample, read_shards
import numpy as np

from sharding.dedup.merge import components, merge_plan
from sharding.dedup.scan import SPLIT_SCHEMA
from sharding.run import shard_dataset

from tests.sharding.conftest import run_cli, tree_digest
from tests.sharding.dedup_corpus import SHARED_GROUPS, write_shared_corpus

OPTIONS = dict(group_by="dir", shard_samples=2, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shared")
    info = write_shared_corpus(root)
    return {**info, "root": root}


def build(corpus: dict, out: Path, mode: str | None, **kw):
    extra = {} if mode is None else {"dedup_across_groups": mode}
    return shard_dataset(str(corpus["root"]), str(out), **OPTIONS, **extra, **kw)


def shared_groups(corpus: dict) -> set[str]:
    return {g for g in corpus["groups"] if g in SHARED_GROUPS}


def holders(index: pa.Table, sha: str) -> list[str]:
    """Group ids (short: objN) whose photos include `sha`, with multiplicity."""
    return [r["group_id"].rsplit("/", 1)[-1] for r in index.to_pylist() for s in r["view_sha256"] if s == sha]


def assert_accounted(out: Path, corpus: dict) -> tuple[pa.Table, pa.Table]:
    """Nothing is lost: every input is a view in a shard or a quarantine row; the manifest and
    shards.parquet agree with the index parts; every photo's bytes match its recorded sha256."""
    index, quarantine = read_index(str(out)), read_quarantine(str(out))
    views = sum(index.column("num_views").to_pylist())
    assert views + quarantine.num_rows == corpus["num_inputs"]
    manifest = load_manifest(str(out))
    assert manifest["complete"] and manifest["num_views"] == views
    assert manifest["num_quarantined"] == quarantine.num_rows and manifest["num_samples"] == index.num_rows
    shards = read_shards(str(out)).to_pylist()
    assert sum(s["num_views"] for s in shards) == views
    for shard in shards:
        assert hashlib.sha256((out / "shards" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    for row in index.to_pylist():
        sample = read_sample(str(out), row["shard"], row["key"])
        meta = json.loads(sample["json"])
        assert meta["sha256"] == row["view_sha256"] and len(meta["sources"]) == row["num_views"]
        for i, ext in enumerate(row["view_exts"]):
            assert hashlib.sha256(sample[f"{i}.{ext}"]).hexdigest() == row["view_sha256"][i]
    return index, quarantine


def test_report_lists_the_photo_with_exactly_its_three_groups(corpus, tmp_path):
    out = tmp_path / "ds"
    summary = build(corpus, out, None)
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()
    assert len(dups) == 1 and dups[0]["sha256"] == corpus["shared_sha256"]
    assert {g.rsplit("/", 1)[-1] for g in dups[0]["group_ids"]} == shared_groups(corpus)
    assert len(dups[0]["group_ids"]) == 3 and len(set(dups[0]["shards"])) >= 2  # spread over shards
    index, quarantine = assert_accounted(out, corpus)
    # report only: nothing changed, every group still holds it, no shard rewritten
    assert sorted(holders(index, corpus["shared_sha256"])) == sorted(shared_groups(corpus))
    assert quarantine.num_rows == 0 and not any(n.endswith("-dd.tar") for n in index.column("shard").to_pylist())
    assert summary.duplicates_across_groups["num_sha256"] == 1
    assert load_manifest(str(out))["duplicates_across_groups"]["mode"] == "report"
    places = set(zip(index.column("shard").to_pylist(), index.column("key").to_pylist()))
    assert set(zip(dups[0]["shards"], dups[0]["keys"])) <= places


def test_drop_removes_it_from_every_group(corpus, tmp_path):
    out = tmp_path / "ds"
    build(corpus, out, "drop")
    index, quarantine = assert_accounted(out, corpus)
    assert holders(index, corpus["shared_sha256"]) == []
    rows = quarantine.to_pylist()
    assert len(rows) == 3 and {r["reason"] for r in rows} == {"duplicate_across_groups"}
    assert {Path(r["source"]).parent.name for r in rows} == shared_groups(corpus)
    assert all(corpus["shared_sha256"] in r["detail"] for r in rows)
    assert index.num_rows == len(corpus["groups"])  # the groups keep their other photos


def test_keep_first_keeps_it_in_the_first_group_only(corpus, tmp_path):
    out = tmp_path / "ds"
    build(corpus, out, "keep-first")
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()[0]
    first = min(zip(dups["shards"], dups["keys"], dups["group_ids"]))[2]  # (shard, tar order) first
    index, quarantine = assert_accounted(out, corpus)
    assert holders(index, corpus["shared_sha256"]) == [first.rsplit("/", 1)[-1]]
    rows = quarantine.to_pylist()
    assert len(rows) == 2 and {r["group_id"] for r in rows} == set(dups["group_ids"]) - {first}
    assert all(f"kept in group {first}" in r["detail"] for r in rows)
    # only shards holding a group that lost a photo are rewritten
    rewritten = {n for n in index.column("shard").to_pylist() if n.endswith("-dd.tar")}
    losers = {s for s, g in zip(dups["shards"], dups["group_ids"]) if g != first}
    assert rewritten == {s.replace(".tar", "-dd.tar") for s in losers}


def test_merge_makes_one_group_with_the_photo_once_via_cli(corpus, tmp_path):
    out = tmp_path / "ds"
    result = run_cli("shard", str(corpus["root"]), str(out), "--group-by", "dir", "--shard-samples", "2",
                     "--dedup-across-groups", "merge", "--no-progress", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "2 groups merged away" in result.stdout
    index, quarantine = assert_accounted(out, corpus)
    holding = holders(index, corpus["shared_sha256"])
    assert len(holding) == 1  # one group, the photo once
    merged_row = next(r for r in index.to_pylist() if corpus["shared_sha256"] in r["view_sha256"])
    assert merged_row["num_views"] == 3 * 2 + 1  # every photo of the 3 groups, the shared one once
    assert index.num_rows == len(corpus["groups"]) - 2
    rows = quarantine.to_pylist()
    assert len(rows) == 2 and {r["reason"] for r in rows} == {"duplicate_merged"}
    merged = pq.read_table(out / "merged.parquet").to_pylist()
    assert len(merged) == 2 and {r["merged_into"] for r in merged} == {merged_row["group_id"]}
    assert {r["into_shard"] for r in merged} == {merged_row["shard"]}
    assert {r["group_id"].rsplit("/", 1)[-1] for r in merged} | {merged_row["group_id"].rsplit("/", 1)[-1]} \
        == shared_groups(corpus)
    meta = json.loads(read_sample(str(out), merged_row["shard"], merged_row["key"])["json"])
    assert sorted(meta["merged_from"]) == sorted(r["group_id"] for r in merged)
    inspected = run_cli("inspect", str(out))
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "duplicates   1 photos held by several groups (3 copies; --dedup-across-groups merge)" in inspected.stdout


def batches_with_shared_bytes(out: Path, batch_size: int, epochs: int = 2) -> tuple[int, int]:
    """(batches seen, batches in which two different groups hold the same photo bytes), over
    the real pipeline's batches: each sample's photos are its group's view_sha256 (the batch
    carries keys and group ids), and the drawn views (view_sources) are checked too."""
    from pipeline import ViewLoader, ViewSpec

    index = read_index(str(out))
    photos = {r["key"]: r["view_sha256"] for r in index.to_pylist()}
    loader = ViewLoader(str(out), ViewSpec.simclr(size=16), batch_size, seed=3, num_threads=1)
    seen = bad = 0
    for epoch in range(epochs):
        for batch in loader.iter_epoch(epoch):
            seen += 1
            assert len(set(batch.group_ids)) == len(batch.group_ids)
            owner: dict[str, str] = {}
            clash = False
            for key, group, sources in zip(batch.keys, batch.group_ids, batch.view_sources.tolist()):
                drawn = {photos[key][s] for s in sources}
                assert drawn <= set(photos[key])
                for sha in photos[key]:
                    clash |= owner.setdefault(sha, group) != group
            bad += clash
    return seen, bad


@pytest.mark.integration
def test_no_batch_pairs_the_shared_photo_as_negatives_after_merge(corpus, tmp_path):
    merged, report = tmp_path / "merged", tmp_path / "report"
    build(corpus, merged, "merge")
    build(corpus, report, "report")
    seen, bad = batches_with_shared_bytes(merged, batch_size=8)
    assert seen >= 2 and bad == 0
    # the check can fail: without merge, a batch of the whole dataset holds the 3 groups
    seen, bad = batches_with_shared_bytes(report, batch_size=8)
    assert bad == seen >= 2


def test_rerun_is_a_noop_and_modes_switch_cleanly(corpus, tmp_path):
    out, fresh = tmp_path / "ds", tmp_path / "fresh"
    build(corpus, out, "merge")
    before = tree_digest(out)
    again = build(corpus, out, "merge")
    assert again.num_shards_skipped == again.num_shards_built + again.num_shards_skipped  # nothing rebuilt
    assert tree_digest(out) == before
    for mode in ("drop", "report"):  # another mode on the same output == a fresh build in that mode
        build(corpus, out, mode)
        build(corpus, fresh / mode, mode)
        for name in ("shards.parquet", "duplicates.parquet"):
            assert (out / name).read_bytes() == (fresh / mode / name).read_bytes(), (mode, name)
        assert read_quarantine(str(out)).to_pylist() == read_quarantine(str(fresh / mode)).to_pylist()
        assert read_index(str(out)).equals(read_index(str(fresh / mode)))
    assert not (out / "merged.parquet").exists()
    assert not list((out / "quarantine").glob("*-dd.parquet"))


def test_dry_run_accepts_the_flag(corpus):
    result = run_cli("shard", str(corpus["root"]), "--group-by", "dir", "--dry-run",
                     "--dedup-across-groups", "merge", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "groups       8" in result.stdout
    bad = run_cli("shard", str(corpus["root"]), "out", "--dedup-across-groups", "sometimes")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def occurrences(rows: list[tuple[str, int, int, int]]) -> pa.Table:
    """SPLIT_SCHEMA rows (sha byte, shard number, row, view), sorted as a bucket part is."""
    table = pa.table({
        "sha256": pa.array([bytes([sha]) * 32 for sha, _, _, _ in rows], pa.binary(32)),
        "group_id": [f"g{shard}.{row}" for _, shard, row, _ in rows],
        "key": [f"k{shard}-{row}" for _, shard, row, _ in rows],
        "shard": [f"data-{shard:06d}.tar" for _, shard, row, _ in rows],
        "row": pa.array([row for _, _, row, _ in rows], pa.int32()),
        "view": pa.array([view for *_, view in rows], pa.int32()),
    }, schema=SPLIT_SCHEMA)
    return table.sort_by([("sha256", "ascending"), ("shard", "ascending"), ("row", "ascending"), ("view", "ascending")])


def test_merge_joins_groups_transitively():
    """A (shard 1) shares x with B (shard 0), B shares y with C (shard 2), and D, E (shard 3) share
    z: two components, {B, A, C} kept in B (the first place) and {D, E} in D; each copy of x, y
    or z other than the first of its component is quarantined, the others move."""
    a, b, c, d, e = (1, 5), (0, 3), (2, 0), (3, 1), (3, 7)
    drops, merges = merge_plan(occurrences([(1, *a, 0), (1, *b, 1), (2, *b, 0), (2, *c, 2), (3, *d, 0), (3, *e, 4)]))
    rows = {r["group_id"]: r for r in merges.to_pylist()}
    assert set(rows) == {"g1.5", "g2.0", "g3.7"}
    assert {g: r["into_group"] for g, r in rows.items()} == {"g1.5": "g0.3", "g2.0": "g0.3", "g3.7": "g3.1"}
    assert {g: r["skip"] for g, r in rows.items()} == {"g1.5": [0], "g2.0": [2], "g3.7": [4]}
    assert sorted((r["group_id"], r["view"]) for r in drops.to_pylist()) == [("g1.5", 0), ("g2.0", 2), ("g3.7", 4)]
    assert all(r["reason"] == "duplicate_merged" for r in drops.to_pylist())


def test_components_of_a_long_chain():
    n = 1000
    u, v = np.arange(n - 1), np.arange(1, n)
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)  # a chain in random node order, plus isolated nodes
    label = components(perm[u], perm[v], n + 5)
    assert (label[:n] == 0).all() if perm.min() == 0 else True
    assert len(set(label[perm].tolist())) == 1 and label[perm][0] == perm.min()
    assert (label[n:] == np.arange(n, n + 5)).all()


@pytest.mark.integration
def test_s3_output_equals_local_and_modes_switch(corpus, tmp_path, s3_endpoint):
    """Through the same Storage API on S3 (moto): the objects equal a local build's files byte for
    byte, also after switching merge -> drop on the same prefix (merged.parquet and the stale
    rewritten quarantine parts are removed; merge's unlisted -dd shards are the only extras)."""
    import boto3

    from tests.sharding.test_s3 import s3_objects

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="dedup")
    remote = "s3://dedup/ds"
    for mode in ("merge", "drop"):
        local = tmp_path / mode
        build(corpus, local, mode)
        build(corpus, remote, mode, endpoint_url=s3_endpoint)
        objects = {k: hashlib.sha256(v).hexdigest() for k, v in s3_objects(s3_endpoint, "dedup", "ds/").items()}
        files = tree_digest(local)
        assert {k: objects.get(k) for k in files} == files, mode
        extras = set(objects) - set(files)
        assert all("-dd." in k and not k.startswith("quarantine/") for k in extras), extras
        assert ("merged.parquet" in objects) == (mode == "merge")
        assert not [k for k in objects if k.startswith("_dedup/split/")]


@pytest.mark.integration
def test_ray_and_processes_give_the_inline_bytes(corpus, tmp_path):
    """The pass runs on the sharder's executors: Ray tasks and local processes write exactly the
    files one process writes."""
    inline = tmp_path / "inline"
    build(corpus, inline, "merge")
    build(corpus, tmp_path / "ray", "merge", ray=True, workers=2)
    build(corpus, tmp_path / "procs", "keep-first", workers=2)
    build(corpus, tmp_path / "keep", "keep-first")
    assert tree_digest(tmp_path / "ray") == tree_digest(inline)
    assert tree_digest(tmp_path / "procs") == tree_digest(tmp_path / "keep")


KILLED_CHILD = """
import os, signal, sys
import sharding.dedup.run as d
d.bucket_bits = lambda views, per_bucket=0: 2           # 4 buckets, also in the reference run
point, calls = sys.argv[3], {"n": 0}
def dying(original, at=2):
    def call(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **k)
    return call
if point == "scan":
    d.scan_bucket = dying(d.scan_bucket)
elif point == "rewrite":
    d.rewrite_shard = dying(d.rewrite_shard)
elif point == "actions":
    d.bucket_actions = dying(d.bucket_actions, at=1)  # one bucket holds the shared photo
from sharding.run import shard_dataset
shard_dataset(sys.argv[1], sys.argv[2], group_by="dir", shard_samples=2, progress=False,
              dedup_across_groups=sys.argv[4])
"""


@pytest.mark.integration
def test_killed_during_the_pass_then_rerun_is_identical(corpus, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.sharding.conftest import REPO

    def run(out: Path, point: str, mode: str) -> int:
        return subprocess.run([sys.executable, "-c", KILLED_CHILD, str(corpus["root"]), str(out), point, mode],
                              cwd=REPO, capture_output=True, timeout=120).returncode

    for mode, points in (("merge", ("scan", "rewrite")), ("drop", ("actions", "rewrite"))):
        reference = tmp_path / f"reference-{mode}"
        assert run(reference, "none", mode) == 0
        for point in points:
            out = tmp_path / f"{mode}-{point}"
            assert run(out, point, mode) == -signal.SIGKILL, (mode, point)
            manifest = json.loads((out / "manifest.json").read_bytes())
            assert not manifest["complete"]  # and nothing is listed that a reader could trust
            assert pq.read_table(out / "shards.parquet").num_rows == 0
            assert run(out, "none", mode) == 0
            assert tree_digest(out) == tree_digest(reference), (mode, point)
