"""A rank's memory and start-up time against the corpus size (plan from shard-level metadata).

    .venv/bin/python benchmarks/bench_loader_scale.py [--sizes 1e6 1e7] [--shard-samples 1500]

For each size, writes the metadata of a dataset of N samples in 1,500-sample shards
(manifest.json, shards.parquet, index parts; no tars: `testbed.scale`), then in a fresh
process measures what `ViewLoader(root, simclr, 256, rank=0, world_size=64)` plus one epoch
plan add to RSS (high-water mark over the post-import baseline) and how long each takes.
`elastic_plan_s` is the plan of the same epoch on 32 workers at the same global batch (a run
resumed on another worker count). `bytes_per_corpus_sample` is the slope between the two sizes.
Goals: rss_mb_1e7 < 100, init_s_1e7 < 5, plan_s_1e7 < 2, elastic_plan_s_1e7 < 2,
bytes_per_corpus_sample < 1. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testbed.scale import write_metadata_dataset  # noqa: E402


def measure(root: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "testbed.scale", root, "0", "64"], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def label(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"1e{exponent}" if n == 10 ** exponent else str(n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--shard-samples", type=int, default=1500)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes]
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_loader_scale_") as tmp:
        for n in sizes:
            root = os.path.join(tmp, label(n))
            shards = write_metadata_dataset(root, n, args.shard_samples, progress=True)
            report = measure(root)
            tag = label(n)
            figures[f"rss_mb_{tag}"] = report["peak_mb_added"]
            figures[f"init_s_{tag}"] = report["init_s"]
            figures[f"plan_s_{tag}"] = report["plan_s"]
            figures[f"elastic_plan_s_{tag}"] = report["elastic_plan_s"]
            figures[f"shards_{tag}"] = shards
            figures[f"rank_samples_{tag}"] = report["rank_samples"]
    lo, hi = sizes[0], sizes[-1]
    if hi > lo:
        slope = (figures[f"rss_mb_{label(hi)}"] - figures[f"rss_mb_{label(lo)}"]) * 2**20 / (hi - lo)
        figures["bytes_per_corpus_sample"] = round(slope, 3)
    figures.update(rank=0, world_size=64, batch_size=256, cpu_count=os.cpu_count(),
                   load_average_1min=os.getloadavg()[0])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
