"""Plots are written, are real pictures (not blank) and refuse input they cannot draw."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline import ViewLoader, ViewSpec
from evaluation.plots import (denormalize, plot_knn_over_training, plot_retrieval_grid,
                                 plot_training_curves, plot_view_grid)
from groundfloor.errors import UsageError


def _assert_picture(path, min_width=300):
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert image.shape[1] >= min_width and image.shape[0] >= 150
    assert image.std() > 10  # something drawn, not a blank canvas
    return image


@pytest.fixture()
def metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(1, 201):
        lr = 0.3 * min(1.0, step / 20) * 0.5 * (1 + math.cos(math.pi * step / 200))
        lines.append({"step": step, "epoch": step // 40, "loss": 5.0 * math.exp(-step / 80) + 0.1 * math.sin(step), "lr": lr})
        if step % 40 == 0:
            lines.append({"step": step, "epoch": step // 40, "knn_top1": 0.7 + 0.02 * step / 40})
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def test_training_curves_and_knn_over_training(tmp_path, metrics_file):
    _assert_picture(plot_training_curves(metrics_file, tmp_path / "curves.png"))
    _assert_picture(plot_knn_over_training(tmp_path, tmp_path / "knn.png",  # a run folder works too
                                           references={"raw pixels": 0.75, "random init": 0.65}))
    with pytest.raises(UsageError, match="knn_top1"):
        plot_knn_over_training([{"step": 1, "loss": 1.0}], tmp_path / "none.png")
    with pytest.raises(UsageError, match="no metrics file"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")


def test_view_grid_from_a_real_batch(tmp_path, labelled_groups):
    spec = ViewSpec.multicrop(global_size=32, local_size=16, num_local=2)
    loader = ViewLoader(labelled_groups, spec, batch_size=6, num_threads=1)
    batch = next(iter(loader.iter_epoch(0)))
    images = denormalize(batch.views[0], spec.mean, spec.std)
    assert images.shape == (6, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
    assert images.std() > 0.05  # de-normalised real photos, not a constant
    picture = _assert_picture(plot_view_grid(batch, tmp_path / "views.png", mean=spec.mean, std=spec.std))
    assert picture.shape[0] > picture.shape[1] * 0.8  # 6 rows of samples


def test_retrieval_grid(tmp_path):
    rng = np.random.default_rng(0)
    queries = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    results = [[(rng.random((32, 32)), 0.9 - 0.1 * j, j == 0) for j in range(5)] for _ in range(3)]
    _assert_picture(plot_retrieval_grid(queries, results, tmp_path / "retrieval.png", query_labels=["a", "b", "c"]))
