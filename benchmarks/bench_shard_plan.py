"""Driver memory and speed of the shard plan (``viewstream shard --dry-run``) on generated manifests.

    .venv/bin/python benchmarks/bench_shard_plan.py [--sizes 1e5,1e6,1e7] [--per-group 3]

Each size is a Parquet manifest of N rows ``uri, group`` (3 photos per listing, 1,500 groups per
shard: the measurement of issue 16), written in row groups so that generating it costs little
memory, then planned by a fresh `plan_dataset` process (no files need to exist). Reported:
* peak_rss_mb_{1e5,1e6,1e7}: that process's peak RSS (VmHWM): the whole driver, Python and
  pyarrow included. Goal: peak_rss_mb_1e7 < 400 and flat within 1.5x from 1e5 to 1e7.
* plan_inputs_per_s_{size}: rows planned per second (read, rank, spill, sort, pack), process
  start-up excluded. Goal: plan_inputs_per_s_1e7 >= 200,000 on the 2-core box.
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
    args = parser.parse_args()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_shard_plan_") as tmp:
        for text in args.sizes.split(","):
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
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
