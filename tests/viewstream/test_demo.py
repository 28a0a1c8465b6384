"""The README's demo, in its reduced size: the whole spine on Fashion-MNIST through the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_quick_demo_writes_report_and_plots_and_training_helps(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "viewstream", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("knn_top1_trained", "knn_top1_random_init", "knn_top1_raw_pixels", "minutes", "method"):
        assert key in report, key
    assert report["method"] == "simclr"
    assert report["knn_top1_trained"] > report["knn_top1_random_init"], report
    assert 0.5 < report["knn_top1_raw_pixels"] < 1.0
    for name in ("loss_lr.png", "knn_over_training.png", "augmented_views.png", "retrieval.png"):
        png = out / "plots" / name
        assert png.is_file() and png.stat().st_size > 5000, name
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["knn_top1_trained"] == report["knn_top1_trained"]


def test_demo_with_an_unknown_method_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "viewstream", "demo", "--method", "nope", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--method 'nope'" in proc.stderr
