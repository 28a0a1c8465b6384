"""Driver memory and speed of the shard plan (``viewstream shard --dry-run``) on generated manifests.

    .venv/bin/python benchmarks/bench_shard_plan.py [--sizes 1e5,1e6,1e7] [--per-group 3]

Each size is a Parquet manifest of N rows ``uri, group`` (3 photos per listing, 1,500 groups per
shard: the measurement of issue 16), written in row groups so that generating it costs little
memory, then planned by a fresh `plan_dataset` process (no files need to exist). Reported:
* peak_rss_mb_{1e5,1e6,1e7}: that process's peak RSS (VmHWM): the whole driver, Python and
  pyarrow included. Goal: peak_rss_mb_1e7 < 400 and flat within 1.5x from 1e5 to 1e7.
* plan_inputs_per_s_{size}: rows planned per second (read, rank, spill, sort, pack), process
  start-up excluded. Goal: plan_inputs_per_s_1e7 >= 200,000 on the 2-core box.
* peak_rss_mb_tars_1e5 / plan_seconds_tars_1e5: a folder of 1e5 WebDataset tars (sparse files
  of 300 MB: nothing is read but the listing), one plan row per tar.
* peak_rss_mb_embedded_1e6 / plan_seconds_embedded_1e6: a Parquet of 1e6 rows of embedded images
  (``image: struct<bytes, path>``, 1,000 rows per row group, tiny bytes: the plan reads only the
  footer). Goal for both: the peak RSS of the smallest manifest, i.e. flat in tars and rows.
The last line of output is one JSON object with these keys.
"""
from __future__ import annotations

import argparse
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

CHILD = """
import sys, time
from sharding.run import plan_dataset
def peak_rss_kb():  # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
start = time.perf_counter()
summary = plan_dataset(sys.argv[1], shard_samples=1500, progress=False)
seconds = time.perf_counter() - start
s = summary.stats
print(s.num_inputs, s.num_groups, s.num_shards, seconds, peak_rss_kb())
"""


def write_manifest(path: Path, rows: int, per_group: int) -> None:
    """A Parquet manifest of `rows` rows, generated one row group at a time."""
    schema = pa.schema([("uri", pa.string()), ("group", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 500_000):
            n = range(start, min(rows, start + 500_000))
            writer.write_table(pa.table({"uri": [f"s3://bucket/photos/{i:010d}.jpg" for i in n],
                                         "group": [f"listing-{i // per_group:010d}" for i in n]}, schema=schema))


def write_tar_folder(folder: Path, tars: int) -> None:
    """`tars` sparse files named as ShardWriter names them (no bytes on disk, 300 MB listed)."""
    folder.mkdir()
    for i in range(tars):
        with open(folder / f"shards-{i:06d}.tar", "wb") as f:
            f.truncate(300 << 20)


def write_embedded(path: Path, rows: int) -> None:
    """A Hub-style Parquet of `rows` rows (image struct<bytes, path>), 1,000 rows per row group."""
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", kind), ("label", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = range(start, min(rows, start + 100_000))
            cells = pa.array([{"bytes": i.to_bytes(8, "big"), "path": f"{i}.jpg"} for i in n], kind)
            writer.write_table(pa.table({"image": cells, "label": pa.array([i % 1000 for i in n])}, schema=schema),
                               row_group_size=1000)


def containers(tmp: str, tars: int, rows: int, result: dict) -> None:
    for name, count, make in (("tars", tars, write_tar_folder), ("embedded", rows, write_embedded)):
        if not count:
            continue
        label = f"1e{len(str(count)) - 1}" if str(count).strip("0") == "1" else str(count)
        path = Path(tmp) / (f"tars-{label}" if name == "tars" else f"embedded-{label}.parquet")
        make(path, count)
        measured = plan(path)
        print(f"{name} {count:,}: {measured['inputs']:,} plan rows, {measured['shards']:,} shards, "
              f"{measured['seconds']:.1f} s, peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)
        result[f"peak_rss_mb_{name}_{label}"] = round(measured["peak_rss_mb"], 1)
        result[f"plan_seconds_{name}_{label}"] = round(measured["seconds"], 2)


def plan(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    inputs, groups, shards, seconds, rss_kb = int(out[0]), int(out[1]), int(out[2]), float(out[3]), int(out[4])
    return {"inputs": inputs, "groups": groups, "shards": shards, "seconds": seconds, "peak_rss_mb": rss_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="comma-separated manifest sizes")
    parser.add_argument("--per-group", type=int, default=3, help="photos per listing")
    parser.add_argument("--tars", type=float, default=1e5, help="WebDataset tars in the listing (0: skip)")
    parser.add_argument("--embedded-rows", type=float, default=1e6, help="rows of the embedded Parquet (0: skip)")
    args = parser.parse_args()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_shard_plan_") as tmp:
        for text in filter(None, args.sizes.split(",")):
            rows = int(float(text))
            label = f"1e{len(str(rows)) - 1}" if str(rows).strip("0") == "1" else str(rows)
            path = Path(tmp) / f"manifest-{label}.parquet"
            started = time.perf_counter()
            write_manifest(path, rows, args.per_group)
            generated = time.perf_counter() - started
            measured = plan(path)
            path.unlink()
            assert measured["inputs"] == rows
            print(f"{rows:>11,} rows ({generated:.1f} s to generate): {measured['groups']:,} groups, "
                  f"{measured['shards']:,} shards, {measured['seconds']:.1f} s "
                  f"({rows / measured['seconds']:,.0f} inputs/s), peak RSS {measured['peak_rss_mb']:.0f} MB",
                  flush=True)
            result[f"peak_rss_mb_{label}"] = round(measured["peak_rss_mb"], 1)
            result[f"plan_inputs_per_s_{label}"] = round(rows / measured["seconds"])
        containers(tmp, int(args.tars), int(args.embedded_rows), result)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
