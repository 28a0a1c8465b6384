"""The Fashion-MNIST export: a PNG ImageFolder tree, the same bytes with one process or several."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import sharding.fashion_mnist as fm


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_a_parallel_export_writes_the_files_a_serial_one_does(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "CHUNK", 7)  # 50 images: 8 runs, the last one short
    fm.export_fashion_mnist(tmp_path / "serial", "train", limit_per_split=50)
    counts = fm.export_fashion_mnist(tmp_path / "parallel", "train", limit_per_split=50, workers=2)
    serial, parallel = _tree(tmp_path / "serial"), _tree(tmp_path / "parallel")
    assert counts == {"train": 50} and len(serial) == 50 and parallel == serial
    images = fm.read_idx(Path(fm.FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz")
    labels = fm.read_idx(Path(fm.FASHION_MNIST_DIR) / "train-labels-idx1-ubyte.gz")
    for index in (0, 6, 7, 49):  # the first and last image of a run, and the last one written
        written = tmp_path / "parallel" / "train" / fm.CLASSES[labels[index]] / f"{index:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(written)), images[index])
