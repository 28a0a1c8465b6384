"""Issue 14, duplicates across groups at scale: the hash-partitioned scan over generated index
parts of 1e6 photos holds a bucket (~ corpus / buckets), never the corpus, and finds every
planted duplicate (benchmarks/bench_dedup_scan.py, run as the user would)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.sharding.conftest import REPO


def test_bucket_scan_memory_is_bounded_by_a_bucket_not_the_corpus():
    result = subprocess.run([sys.executable, "benchmarks/bench_dedup_scan.py", "--rows", "1e6"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 1_000_000 and figures["buckets"] == 16
    assert figures["duplicates_found"] == figures["duplicates_planted"] > 300
    # one bucket is 1/16 of the corpus; its scan (read, group, filter, sort) stays within ~4 buckets
    assert figures["bucket_peak_arrow_mb"] < figures["corpus_arrow_mb"] / 4
    assert figures["split_peak_arrow_mb"] < figures["corpus_arrow_mb"] / 2  # a chunk of 2 of 16 shards
