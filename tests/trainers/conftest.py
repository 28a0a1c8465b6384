"""Trainers-stage fixtures: one torch thread for tiny models (the box has 2 cores), and tiny
labelled Fashion-MNIST shards for the training runs."""
from __future__ import annotations

import pytest
import torch

from sharding.fashion_mnist import export_fashion_mnist
from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def fmnist_shards(tmp_path_factory) -> dict[str, str]:
    """Labelled train (384 images) and test (128) shards, several shards each."""
    root = tmp_path_factory.mktemp("fmnist")
    export_fashion_mnist(root / "png", "train", limit_per_split=384)
    export_fashion_mnist(root / "png", "test", limit_per_split=128)
    out = {}
    for split in ("train", "test"):
        shard_dataset(str(root / "png" / split), str(root / split), label_from="parent",
                      shard_samples=100, progress=False)
        migrate_dataset(str(root / split), progress=False)  # a no-op on version 2
        out[split] = str(root / split)
    return out
