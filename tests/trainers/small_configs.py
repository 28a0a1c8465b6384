"""Small training configs for the Ray Train tests: a tiny ConvNet, a few dozen steps, 2 workers."""
from __future__ import annotations

from pathlib import Path
from typing import Any


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
