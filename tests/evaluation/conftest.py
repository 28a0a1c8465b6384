"""Tiny datasets for the evaluation tests, built with the sharding stage's own API."""
from __future__ import annotations

import pytest

from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset
from sharding.synthetic import generate_view_corpus


def build_dataset(base, *, num_groups: int, labelled: bool, min_views: int, max_views: int, seed: int) -> str:
    generate_view_corpus(base / "images", num_groups, seed=seed, size=32, min_views=min_views, max_views=max_views)
    out = str(base / "dataset")
    shard_dataset(str(base / "images"), out, group_by="dir", label_from="parent" if labelled else "none",
                  shard_samples=8, progress=False)
    migrate_dataset(out, progress=False)  # a no-op once the sharder writes version 2
    return out


@pytest.fixture(scope="session")
def labelled_groups(tmp_path_factory) -> str:
    """20 labelled natural-view groups (4 shapes) of 2-3 photos, 32 px, in shards of 8."""
    return build_dataset(tmp_path_factory.mktemp("labelled"), num_groups=20, labelled=True,
                         min_views=2, max_views=3, seed=0)


@pytest.fixture(scope="session")
def labelled_test_groups(tmp_path_factory) -> str:
    """12 more labelled groups (a held-out split of the same kind of objects)."""
    return build_dataset(tmp_path_factory.mktemp("labelled_test"), num_groups=12, labelled=True,
                         min_views=1, max_views=2, seed=1)


@pytest.fixture(scope="session")
def unlabelled_groups(tmp_path_factory) -> str:
    """10 unlabelled groups: what `eval knn` must refuse."""
    return build_dataset(tmp_path_factory.mktemp("unlabelled"), num_groups=10, labelled=False,
                         min_views=1, max_views=2, seed=2)
