"""Export Debian's Fashion-MNIST (idx.gz files) to PNG ImageFolder trees.

Writes ``{out}/train/{label}/{index:05d}.png`` and ``{out}/test/{label}/{index:05d}.png`` (28x28
grayscale PNGs, kept as-is by the sharder), so ``viewstream shard OUT/train DS --label-from
parent`` gives a labelled dataset. Deterministic: the first `limit_per_split` images of each
split, encoded the same way every time (`export_fashion_mnist(out, "both", limit)`).
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from groundfloor.errors import UsageError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx(.gz) file (the MNIST container) as a numpy uint8 array."""
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte idx file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def export_fashion_mnist(
    out_dir: str | os.PathLike,
    split: str | Sequence[str] = "both",
    limit_per_split: int | None = None,
    source_dir: str | os.PathLike = FASHION_MNIST_DIR,
) -> dict[str, int]:
    """Write PNG ImageFolder trees of the chosen split(s) under `out_dir`; returns images per split.

    `split` is "train", "test", "both" or a sequence of those names; `limit_per_split` keeps the
    first N images of each split (None: all 60k / 10k). Existing identical files are rewritten
    with the same bytes, so repeated calls are harmless.
    """
    splits = ("train", "test") if split == "both" else ((split,) if isinstance(split, str) else tuple(split))
    for name in splits:
        if name not in _FILES:
            raise UsageError(f"split {name!r} is not one of: train, test, both")
    if limit_per_split is not None and limit_per_split < 0:
        raise UsageError(f"limit_per_split must be >= 0, got {limit_per_split}")
    counts = {}
    for name in splits:
        image_file, label_file = (Path(source_dir) / f for f in _FILES[name])
        if not image_file.is_file():
            raise UsageError(f"Fashion-MNIST not found at {image_file} (install Debian's dataset-fashion-mnist)")
        images, labels = read_idx(image_file), read_idx(label_file)
        count = len(images) if limit_per_split is None else min(limit_per_split, len(images))
        for label in sorted(set(labels[:count].tolist())):
            (Path(out_dir) / name / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            path = Path(out_dir) / name / CLASSES[labels[index]] / f"{index:05d}.png"
            Image.fromarray(images[index]).save(path, format="PNG")
        counts[name] = count
    return counts
