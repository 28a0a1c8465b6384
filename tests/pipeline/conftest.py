"""Tiny datasets for the pipeline tests, built with the sharding stage's own API."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from sharding.dataset import read_index, shard_uri
from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset
from sharding.synthetic import generate_view_corpus


def decoded_photos(dataset: str) -> dict[str, dict[int, np.ndarray]]:
    """Every photo member of `dataset`'s shards, decoded by PIL to RGB float32 in [0, 1], by
    sample key and view index: what a view with no augmentation should show."""
    photos: dict[str, dict[int, np.ndarray]] = {}
    for shard in sorted(set(read_index(dataset).column("shard").to_pylist())):
        with tarfile.open(shard_uri(dataset, shard)) as tar:
            for info in tar:
                key, view, ext = (info.name.split(".") + [""])[:3]
                if ext in ("jpg", "png"):
                    image = Image.open(io.BytesIO(tar.extractfile(info).read())).convert("RGB")
                    photos.setdefault(key, {})[int(view)] = np.asarray(image, dtype=np.float32) / 255
    return photos


def build_dataset(tmp_path_factory, name: str, *, num_groups: int, shard_samples: int,
                  min_views: int = 1, max_views: int = 4, size: int = 32, seed: int = 0,
                  formats: tuple[str, ...] = ("jpg", "png")) -> str:
    """A natural-view dataset of `num_groups` groups in shards of `shard_samples` groups."""
    base = tmp_path_factory.mktemp(name)
    generate_view_corpus(base / "images", num_groups, seed=seed, size=size,
                         min_views=min_views, max_views=max_views, formats=formats)
    out = str(base / "dataset")
    shard_dataset(str(base / "images"), out, group_by="dir", label_from="parent",
                  shard_samples=shard_samples, progress=False)
    migrate_dataset(out, progress=False)  # a no-op once the sharder writes version 2
    return out


@pytest.fixture(scope="session")
def uneven_dataset(tmp_path_factory) -> str:
    """23 groups in shards of 6, 6, 6, 5 samples (uneven), groups of 1-4 photos."""
    return build_dataset(tmp_path_factory, "uneven", num_groups=23, shard_samples=6)


@pytest.fixture(scope="session")
def two_shard_dataset(tmp_path_factory) -> str:
    """7 groups in 2 shards (4 + 3): fewer shards than ranks when run with 3 ranks."""
    return build_dataset(tmp_path_factory, "two_shards", num_groups=7, shard_samples=4, seed=1)
