"""Memory and speed of the duplicates-across-groups scan (sharding.dedup.scan) on generated index parts.

    .venv/bin/python benchmarks/bench_dedup_scan.py [--rows 1e6] [--shards 16] [--rows-per-bucket 62500]

Writes the index parts of a dataset of `rows` photos (3 per group, `shards` shards, one photo in
every 1,000 groups also held by two groups of other shards), then, each in a fresh process:
split (every chunk of 2 shards into buckets), scan ONE bucket, and scan the other buckets +
write duplicates.parquet. Reported (last line, one JSON object):
* corpus_arrow_mb: the split rows of the whole corpus as Arrow (what one process would hold
  if it scanned the corpus at once);
* split_peak_arrow_mb / bucket_peak_arrow_mb: the Arrow memory pool's peak in the split
  process (a chunk at a time) and in the one-bucket scan: both bounded by a chunk / a bucket
  (~ corpus / buckets), not the corpus. bucket_peak_rss_mb: that process's VmHWM (Python and
  pyarrow included);
* split_views_per_s, scan_views_per_s; duplicates_found (== duplicates_planted).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
VIEWS = 3
SHARE_EVERY = 1000

CHILD = """
import json, sys, time
import pyarrow as pa
from sharding.build import ShardRecord
from sharding.dedup.markers import fingerprint
from sharding.dedup.report import write_report
from sharding.dedup.scan import BucketTask, SplitTask, bucket_bits, scan_bucket, split_chunk, view_rows
from sharding.dataset import read_index_part
from groundfloor.storage import Storage
def peak_rss_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
root, what, shards, rows, per_bucket = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
storage = Storage()
names = [f"data-{i:06d}.tar" for i in range(shards)]
bits = bucket_bits(rows, per_bucket)
chunks = [tuple(names[i:i + 2]) for i in range(0, shards, 2)]
fps = [fingerprint(list(c)) for c in chunks]
start = time.perf_counter()
out = {"buckets": 1 << bits}
if what == "split":
    for n, (c, fp) in enumerate(zip(chunks, fps)):
        split_chunk(SplitTask(n, c, fp, bits, tuple(range(1 << bits))), root, storage)
    out["corpus_arrow_mb"] = sum(view_rows(read_index_part(root, n, storage), n).nbytes for n in names) / 2**20
elif what == "one":
    out["dups"] = scan_bucket(BucketTask(0, tuple(fps), "x"), root, storage)
else:  # bucket 0 was scanned by "one" (a scan deletes the split files it read)
    for b in range(1, 1 << bits):
        scan_bucket(BucketTask(b, tuple(fps), "x"), root, storage)
    out["dups"] = write_report(root, storage, 1 << bits)
out.update(seconds=time.perf_counter() - start, peak_arrow_mb=pa.default_memory_pool().max_memory() / 2**20,
           peak_rss_mb=peak_rss_kb() / 1024)
print(json.dumps(out))
"""


def write_index_parts(root: Path, rows: int, shards: int) -> None:
    """Index parts of `shards` shards holding `rows` photos: the photo 0 of the group at place
    p = 0 (mod 1000) of shard s is also photo 1 of place p+1 of shard s+1 and photo 2 of place
    p+2 of shard s+2 (3 groups in 3 shards)."""
    from sharding.format import INDEX_SCHEMA

    (root / "index").mkdir(parents=True, exist_ok=True)
    groups = rows // VIEWS
    per_shard = -(-groups // shards)
    for s in range(shards):
        numbers = range(s * per_shard, min(groups, (s + 1) * per_shard))
        shas = []
        for g in numbers:
            views = [hashlib.sha256(f"{g}/{v}".encode()).hexdigest() for v in range(VIEWS)]
            if s >= 1 and (g % per_shard) % SHARE_EVERY == 1:
                views[1] = hashlib.sha256(f"{g - per_shard - 1}/0".encode()).hexdigest()
            if s >= 2 and (g % per_shard) % SHARE_EVERY == 2:
                views[2] = hashlib.sha256(f"{g - 2 * per_shard - 2}/0".encode()).hexdigest()
            shas.append(views)
        n = len(shas)
        name = f"data-{s:06d}.tar"
        table = pa.table({
            "shard": pa.array([name] * n, pa.string()),
            "key": pa.array([f"listing_{g:010d}-{g:016x}" for g in numbers], pa.string()),
            "group_id": pa.array([f"listing-{g:010d}" for g in numbers], pa.string()),
            "num_views": pa.array([VIEWS] * n, pa.int32()),
            "view_exts": pa.array([["jpg"] * VIEWS] * n, pa.list_(pa.string())),
            "bytes": pa.array([30_000] * n, pa.int64()),
            "label": pa.array([None] * n, pa.string()),
            "view_sha256": pa.array(shas, pa.list_(pa.string())),
        }, schema=INDEX_SCHEMA)
        pq.write_table(table, root / "index" / f"data-{s:06d}.parquet")


def expected_duplicates(rows: int, shards: int) -> int:
    """sha256s held by >= 2 groups in write_index_parts' layout (counted, not derived)."""
    groups = rows // VIEWS
    per_shard = -(-groups // shards)
    shared = set()
    for s in range(1, shards):
        for g in range(s * per_shard, min(groups, (s + 1) * per_shard)):
            if (g % per_shard) % SHARE_EVERY == 1:
                shared.add(g - per_shard - 1)
            if s >= 2 and (g % per_shard) % SHARE_EVERY == 2:
                shared.add(g - 2 * per_shard - 2)
    return len(shared)


def child(root: Path, what: str, shards: int, rows: int, per_bucket: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), what, str(shards), str(rows), str(per_bucket)],
                         cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, default=1e6, help="photos (index rows x views)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--rows-per-bucket", type=int, default=62_500)
    args = parser.parse_args(argv)
    rows = int(args.rows)
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_index_parts(root, rows, args.shards)
        print(f"generated {rows:,} photos in {time.perf_counter() - started:.1f} s", flush=True)
        split = child(root, "split", args.shards, rows, args.rows_per_bucket)
        one = child(root, "one", args.shards, rows, args.rows_per_bucket)
        every = child(root, "all", args.shards, rows, args.rows_per_bucket)
        found = pq.read_metadata(root / "duplicates.parquet").num_rows
    result = {
        "rows": rows, "buckets": split["buckets"],
        "corpus_arrow_mb": round(split["corpus_arrow_mb"], 1),
        "split_peak_arrow_mb": round(split["peak_arrow_mb"], 1),
        "bucket_peak_arrow_mb": round(one["peak_arrow_mb"], 1),
        "bucket_peak_rss_mb": round(one["peak_rss_mb"], 1),
        "split_views_per_s": round(rows / split["seconds"]),
        "scan_views_per_s": round(rows * (1 - 1 / split["buckets"]) / every["seconds"]),
        "duplicates_found": found,
        "duplicates_planted": expected_duplicates(rows, args.shards),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
