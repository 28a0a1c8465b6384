"""`viewstream train` shows the run, not Ray: a live progress line from rank 0's reports (through
the named progress actor), Ray's own INFO/WARNING lines in the run folder's ray.log."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.trainers.small_configs import small_config

REPO = Path(__file__).resolve().parents[2]
PROGRESS = re.compile(r"step (\d+)/(\d+)  epoch \d+  loss [\d.]+  [\d.]+ samples/s  data-wait [\d.]+%  ETA \d+:\d\d:\d\d")


@pytest.mark.integration
def test_train_prints_progress_and_no_ray_warnings(fmnist_shards, tmp_path):
    config = small_config(fmnist_shards["train"], tmp_path / "runs", "terminal", epochs=1)
    config["scaling"] = {"num_workers": 2, "cpus_per_worker": 1}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "viewstream", "train", str(path), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    progress = [m for m in map(PROGRESS.search, lines) if m]
    assert progress, done.stdout
    total = int(progress[-1].group(2))
    assert total > 1 and int(progress[-1].group(1)) == total  # the last line is the finished run
    assert not [line for line in lines if "WARNING" in line or "INFO" in line], done.stdout
    assert "Ray Train Controller" not in done.stdout + done.stderr
    run_dir = tmp_path / "runs" / "terminal"
    assert "(TrainController pid=" in (run_dir / "ray.log").read_text()  # Ray's lines went here
    assert (tmp_path / "r.json").is_file()
