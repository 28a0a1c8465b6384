"""Export Debian's Fashion-MNIST (idx.gz files) to PNG ImageFolder trees.

Writes ``{out}/train/{label}/{index:05d}.png`` and ``{out}/test/{label}/{index:05d}.png`` (28x28
grayscale PNGs, kept as-is by the sharder), so ``viewstream shard OUT/train DS --label-from
parent`` gives a labelled dataset. Deterministic: the first `limit_per_split` images of each
split, encoded the same way every time (`export_fashion_mnist(out, "both", limit)`).
"""
from __future__ import annotations

import gzip
import multiprocessing
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from groundfloor.errors import UsageError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
CHUNK = 5000  # images per task of a parallel export
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
    workers: int = 1,
) -> dict[str, int]:
    """Write PNG ImageFolder trees of the chosen split(s) under `out_dir`; returns images per split.

    `split` is "train", "test", "both" or a sequence of those names; `limit_per_split` keeps the
    first N images of each split (None: all 60k / 10k). Existing identical files are rewritten
    with the same bytes, so repeated calls are harmless. `workers` > 1 encodes runs of
    `CHUNK` images in that many processes (PNG encoding holds the GIL: threads do not help).
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
        folder = str(Path(out_dir) / name)
        images, labels = images[:count], labels[:count]
        chunks = [(folder, start, images[start:start + CHUNK], labels[start:start + CHUNK])
                  for start in range(0, count, CHUNK)]
        if workers > 1 and len(chunks) > 1:
            context = multiprocessing.get_context("spawn")  # the caller may hold threads (torch, Ray)
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
                list(pool.map(_write_pngs, chunks))
        else:
            for chunk in chunks:
                _write_pngs(chunk)
        counts[name] = count
    return counts


def _write_pngs(chunk: tuple[str, int, np.ndarray, np.ndarray]) -> None:
    """Write one run of consecutive images: ``{folder}/{class}/{index:05d}.png``."""
    folder, start, images, labels = chunk
    for offset, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(Path(folder) / CLASSES[label] / f"{start + offset:05d}.png", format="PNG")
