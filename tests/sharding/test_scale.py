"""Issue 16 acceptance: the streamed plan is a pure function of the inputs (not of how they are
listed, split over manifest files or built), `--dry-run` plans 2,000,000 rows in bounded driver
memory and agrees with a real plan, and several manifests read as one input."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from groundfloor.errors import UsageError

import sharding.plan as plan_module
from sharding.dataset import load_manifest, read_index, read_index_part, read_shards
from sharding.inputs import InputRecord
from sharding.plan import plan_shards
from sharding.run import plan_dataset, shard_dataset

from tests.sharding.conftest import REPO, run_cli, tree_digest

OPTIONS = dict(shard_samples=5)


def corpus_rows(corpus: Path) -> list[dict]:
    """One manifest row per image of the view corpus: uri, group (its folder), label (its shape)."""
    rows = []
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        group = str(path.parent.relative_to(corpus))
        rows.append({"uri": str(path), "group": group, "label": group.split("/")[0]})
    return rows


@pytest.fixture(scope="module")
def manifests(view_corpus, tmp_path_factory) -> dict[str, Path]:
    """The corpus as one sorted manifest, and as 3 manifest files (CSV, JSONL, Parquet) holding
    the rows in shuffled order with most groups split across files."""
    tmp = tmp_path_factory.mktemp("manifests")
    rows = corpus_rows(view_corpus)
    one = tmp / "one" / "all.parquet"
    one.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), one)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    parts = tmp / "parts"
    parts.mkdir()
    thirds = [shuffled[i::3] for i in range(3)]
    pq.write_table(pa.Table.from_pylist(thirds[0]), parts / "part-0.parquet")
    (parts / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in thirds[1]))
    (parts / "part-2.csv").write_text("uri,group,label\n" + "".join(f"{r['uri']},{r['group']},{r['label']}\n" for r in thirds[2]))
    return {"one": one, "folder": parts, "glob": Path(str(parts / "part-*"))}


def dataset_digest(root: Path) -> dict[str, str]:
    """Every file's sha256, with manifest.json's config.input (the only place the input's
    name is written) left out."""
    digest = tree_digest(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["config"].pop("input")
    digest["manifest.json"] = json.dumps(manifest, sort_keys=True)
    return digest


@pytest.fixture(scope="module")
def reference(manifests, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ref")
    summary = shard_dataset(str(manifests["one"]), str(out), workers=1, progress=False, **OPTIONS)
    assert summary.num_samples == 24 and summary.num_shards == 5 and summary.num_quarantined == 0
    digest = dataset_digest(out)
    assert sum(name.startswith("index/") for name in digest) == 5
    return digest


def test_split_shuffled_manifests_two_workers_identical(manifests, reference, tmp_path):
    summary = shard_dataset(str(manifests["glob"]), str(tmp_path), workers=2, progress=False, **OPTIONS)
    assert summary.num_shards_built == 5
    assert dataset_digest(tmp_path) == reference


def test_prefetch_depth_does_not_change_bytes(manifests, reference, tmp_path):
    shard_dataset(str(manifests["folder"]), str(tmp_path), prefetch=1, progress=False, **OPTIONS)
    assert dataset_digest(tmp_path) == reference


@pytest.mark.integration
def test_split_shuffled_manifests_on_ray_identical(manifests, reference, tmp_path):
    result = run_cli("shard", str(manifests["folder"]), str(tmp_path), "--shard-samples", "5",
                     "--ray", "--ray-cpus", "2", "--no-progress", loopback_only=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert dataset_digest(tmp_path) == reference


def test_index_parts_and_summary(manifests, tmp_path):
    shard_dataset(str(manifests["glob"]), str(tmp_path), progress=False, **OPTIONS)
    manifest = load_manifest(str(tmp_path))
    shards = read_shards(str(tmp_path)).to_pylist()
    assert "shards" not in manifest and manifest["num_shards"] == len(shards) == 5
    assert manifest["labels"] == ["circle", "square", "star", "triangle"]
    for shard in shards:
        part = read_index_part(str(tmp_path), shard["name"]).to_pylist()
        assert len(part) == shard["num_samples"] and {r["shard"] for r in part} == {shard["name"]}
        assert all(len(r["view_sha256"]) == r["num_views"] for r in part)
    groups = [r["group_id"] for r in read_index(str(tmp_path)).to_pylist()]
    assert len(groups) == len(set(groups)) == 24  # every group whole, in exactly one shard
    assert not (tmp_path / "quarantine").exists()  # parts are written only when non-empty


def test_dry_run_reports_the_real_plan(manifests, reference, tmp_path):
    summary = plan_dataset(str(manifests["glob"]), progress=False, **OPTIONS)
    stats = summary.stats
    rows = len(corpus_rows_from(manifests))
    assert (stats.num_inputs, stats.num_groups, stats.num_shards) == (rows, 24, 5)
    assert summary.num_files == 3 and stats.num_files == 3
    assert stats.groups_split_across_files > 12  # shuffled thirds split most groups
    assert stats.max_shard_groups == 5 and stats.largest_group_inputs == 6
    assert plan_dataset(str(manifests["one"]), progress=False, **OPTIONS).stats.groups_split_across_files == 0
    # The CLI prints the summary and builds nothing.
    result = run_cli("shard", str(manifests["glob"]), "--dry-run", "--shard-samples", "5", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "shards       5" in result.stdout and f"inputs       {rows}" in result.stdout
    assert "split across manifest files" in result.stdout
    built = sum(name.endswith(".tar") for name in reference)
    assert built == stats.num_shards


def corpus_rows_from(manifests) -> list[dict]:
    return pq.read_table(manifests["one"]).to_pylist()


def test_plan_is_the_same_when_partitions_split_again(monkeypatch):
    """A partition over MAX_PARTITION_ROWS is split by the next rank byte: same plan."""
    records = [InputRecord(f"g{g:05d}", f"/in/{g}/{v}.jpg", None, 10 + v) for g in range(800) for v in range(g % 3 + 1)]
    expected = plan_shards(records, "data", max_bytes=200, max_samples=7)
    expected_sorted = plan_shards(records, "data", max_samples=7, shuffle_seed=None)
    depths = set()
    spill_init = plan_module._Spill.__init__

    def init(self, folder, depth, by_group_id):
        depths.add((depth, by_group_id))
        spill_init(self, folder, depth, by_group_id)

    monkeypatch.setattr(plan_module._Spill, "__init__", init)
    monkeypatch.setattr(plan_module, "IN_MEMORY_ROWS", 100)    # spill from the second batch on
    monkeypatch.setattr(plan_module, "MAX_PARTITION_ROWS", 3)  # ~6 rows per first-level partition
    assert plan_shards(list(reversed(records)), "data", max_bytes=200, max_samples=7) == expected
    assert (1, False) in depths
    monkeypatch.setattr(plan_module, "MAX_PARTITION_ROWS", 40)
    # Sorted order: ids "g00000".. share 2 bytes, and are split by group-id bytes past the 8th too.
    long_ids = [InputRecord("listing/" + r.group_id, r.uri, None, r.size) for r in records]
    sorted_plan = plan_shards(long_ids, "data", max_samples=7, shuffle_seed=None)
    assert [g.group_id for t in sorted_plan for g in t.groups] == sorted({r.group_id for r in long_ids})
    assert (9, True) in depths  # split by group-id bytes past the rank's 8
    assert plan_shards(list(reversed(records)), "data", max_samples=7, shuffle_seed=None) == expected_sorted


def test_glob_that_matches_no_manifest(tmp_path):
    with pytest.raises(UsageError, match="matches no files"):
        plan_dataset(str(tmp_path / "none-*.csv"), progress=False)
    (tmp_path / "a.csv").write_text("uri\nx.jpg\n")
    (tmp_path / "b.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a manifest"):
        plan_dataset(str(tmp_path / "*"), progress=False)


PLAN_2M = textwrap.dedent(
    """
    import sys
    from sharding.run import plan_dataset
    def peak_rss_kb():  # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
    summary = plan_dataset(sys.argv[1], shard_samples=1500, progress=False)
    print(summary.stats.num_inputs, summary.stats.num_groups, summary.stats.num_shards, peak_rss_kb() // 1024)
    """
)


@pytest.mark.integration
def test_dry_run_of_two_million_rows_in_bounded_memory(tmp_path):
    rows, per_group = 2_000_000, 3
    writer = pq.ParquetWriter(tmp_path / "big.parquet", pa.schema([("uri", pa.string()), ("group", pa.string())]))
    for start in range(0, rows, 250_000):
        n = range(start, start + 250_000)
        writer.write_table(pa.table({"uri": [f"s3://bucket/photos/{i:09d}.jpg" for i in n],
                                     "group": [f"listing-{i // per_group:09d}" for i in n]}))
    writer.close()
    proc = subprocess.run([sys.executable, "-c", PLAN_2M, str(tmp_path / "big.parquet")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs, groups, shards, peak_mb = map(int, proc.stdout.split())
    expected_groups = -(-rows // per_group)
    assert (inputs, groups, shards) == (rows, expected_groups, -(-expected_groups // 1500))
    assert peak_mb < 400, f"driver peak RSS {peak_mb} MB"


def test_manifests_larger_than_one_read_stream_whole(tmp_path):
    """CSV past the header peek and JSONL past one chunk: every row, none twice."""
    from sharding.inputs import iter_input_batches
    from groundfloor.storage import Storage

    rows = [(f"img/{i:06d}-{'x' * 40}.jpg", f"g{i // 4}") for i in range(6000)]
    (tmp_path / "m.csv").write_text("uri,group\n" + "".join(f"{u},{g}\n" for u, g in rows))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"uri": u, "group": g}) + "\n" for u, g in rows))
    for name in ("m.csv", "m.jsonl"):
        got = [(r["uri"].decode(), r["group_id"].decode()) for b in iter_input_batches(str(tmp_path / name), Storage())
               for r in b.to_pylist()]
        assert got == [(str(tmp_path / u), g) for u, g in rows], name


def test_prefetch_keeps_reads_in_flight_and_in_order():
    """The prefetch pool overlaps slow reads (as S3's time to first byte) and still hands the
    bytes over in plan order."""
    import threading
    import time

    from sharding.build import _prefetched
    from sharding.plan import Group

    class SlowStorage:
        def __init__(self):
            self.active = self.most = 0
            self.lock = threading.Lock()

        def read_bytes(self, uri: str) -> bytes:
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.02 * (1 + hash(uri) % 3))  # uneven latency: completion order differs
            with self.lock:
                self.active -= 1
            if uri.endswith("7"):
                raise FileNotFoundError(uri)
            return uri.encode()

    groups = [Group(f"g{g}", f"k{g}", None, tuple(InputRecord(f"g{g}", f"/in/{g}/{v}") for v in range(3)))
              for g in range(10)]
    storage = SlowStorage()
    started = time.perf_counter()
    got = list(_prefetched(groups, storage, 8))
    elapsed = time.perf_counter() - started
    uris = [r.uri for g in groups for r in g.inputs]
    assert [g if isinstance(g, bytes) else type(g) for g in got] == [
        FileNotFoundError if u.endswith("7") else u.encode() for u in uris]
    assert storage.most == 8 and elapsed < 0.04 * len(uris) / 3


def test_prefetch_default_reads_local_files_in_the_task_and_remote_ones_ahead():
    """By default local files are read in the build's own thread (a thread hand-off costs more
    than a read from the page cache); remote inputs still go to the prefetch pool (and a local
    file queued behind them with them), in order."""
    import threading

    from groundfloor.storage import Storage
    from sharding.build import _prefetched
    from sharding.plan import Group

    class Recording(Storage):
        def __init__(self):
            super().__init__()
            self.threads = {}

        def read_bytes(self, uri: str) -> bytes:
            self.threads[uri] = threading.current_thread()
            return uri.encode()

    uris = ["/in/a.jpg", "file:///in/b.jpg", "s3://b/k1.jpg", "s3://b/k2.jpg", "/in/c.jpg"]
    groups = [Group("g", "k", None, tuple(InputRecord("g", u) for u in uris))]
    storage = Recording()
    assert list(_prefetched(groups, storage, None)) == [u.encode() for u in uris]
    here = threading.current_thread()
    assert storage.threads["/in/a.jpg"] is here and storage.threads["file:///in/b.jpg"] is here
    assert storage.threads["s3://b/k1.jpg"] is not here and storage.threads["s3://b/k2.jpg"] is not here


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_sizes_pack_by_bytes(tmp_path, kind):
    rows = [{"uri": f"/in/{i}.jpg", "group": f"g{i // 2}", "size": 100} for i in range(20)]
    path = tmp_path / f"m.{kind}"
    if kind == "csv":
        path.write_text("uri,group,size\n" + "".join(f"{r['uri']},{r['group']},{r['size']}\n" for r in rows))
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    stats = plan_dataset(str(path), shard_bytes=450, progress=False).stats
    assert (stats.input_bytes, stats.num_groups, stats.num_shards, stats.max_shard_bytes) == (2000, 10, 5, 400)
