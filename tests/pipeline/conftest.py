"""Tiny datasets for the pipeline tests, built with the sharding stage's own API."""
from __future__ import annotations

import pytest

from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset
from sharding.synthetic import generate_view_corpus


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
