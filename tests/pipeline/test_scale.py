"""Issue 11: a rank's memory does not grow with the corpus (plan from shard-level metadata)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from testbed.scale import write_metadata_dataset


def test_loader_and_plan_on_rank_0_of_64_add_under_64_mb_for_2e6_samples(tmp_path):
    root = str(tmp_path / "meta")
    assert write_metadata_dataset(root, 2_000_000, 1429) == 1400  # no tars: planning needs none
    out = subprocess.run([sys.executable, "-m", "testbed.scale", root, "0", "64"],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["num_samples"] == 2_000_000
    assert report["rank_samples"] == (2_000_000 // (64 * 256)) * 256  # drop_last, batch 256
    assert report["peak_mb_added"] < 64, report  # was ~1.3 GB with one global index
