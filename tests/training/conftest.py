"""Shared fixtures for training tests: tiny Fashion-MNIST shards and small configs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sharding.fashion_mnist import export_fashion_mnist
from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset


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


def small_config(dataset: str, storage: Path, name: str, method: str = "simclr", **overrides: Any) -> dict:
    """A config that trains a tiny ConvNet for a few dozen steps on 2 workers."""
    method_cfg: dict[str, Any] = {"name": method, "backbone": {"name": "convnet", "width": 0.25, "small_images": True}}
    data: dict[str, Any] = {"dataset": dataset, "recipe": "simclr", "recipe_options": {"size": 28}}
    if method == "simclr":
        method_cfg.update(projection_hidden_dim=64, projection_dim=32)
    if method == "dino":
        data.update(recipe="multicrop", recipe_options={"global_size": 28, "local_size": 16, "num_local": 2})
        # slower centering (0.99) lets the loss fall within a few dozen steps on tiny data
        method_cfg.update(out_dim=256, hidden_dim=64, bottleneck_dim=32, center_momentum=0.99)
    config = {
        "seed": 0,
        "data": data,
        "method": method_cfg,
        "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "sqrt", "warmup_steps": 3},
        "batch_size": 32,
        "epochs": 2,
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": name, "storage": str(storage), "checkpoint_every_steps": 6,
                "keep_checkpoints": 2, "log_every_steps": 1},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config
