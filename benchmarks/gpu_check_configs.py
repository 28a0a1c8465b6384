"""The configurations benchmarks/gpu_check.py runs, built through the real pydantic models.

`train_config` makes the `trainers.config.TrainConfig` a run of the method would have (the
validators included: MoCo v3's `zero_init_residual`, queue sizes, view counts), so what the
check times and compares is what `viewstream train` builds. Sizes: ResNet-50 at 224 px for the
timings on a GPU; tiny nets for the CPU run CI makes and for the 2-rank equivalence, whose
point is the distributed arithmetic, not the arithmetic intensity.
"""
from __future__ import annotations

from typing import Any

from trainers.config import TrainConfig

METHODS = ("simclr", "moco_v2", "moco_v3", "swav", "dino", "byol", "simsiam", "cpc_v2")
MULTICROP = ("swav", "dino")


def sizes(quick: bool) -> dict[str, Any]:
    """Model, view sizes, batch and step counts; `ranks`: those of the 2-rank equivalence."""
    tiny = dict(backbone={"name": "convnet", "width": 0.25, "small_images": True}, size=16, local=8, num_local=2,
                batch=8)
    if quick:  # CI on CPU: every code path, tiny tensors
        return dict(tiny, warmup=1, steps=2, ddp_backbone={"name": "resnet18", "width": 0.25, "small_images": True},
                    ddp_size=16, ranks=tiny)
    # the 2-rank run on a GPU: a ResNet's structure (20 BN layers, synchronised), 16 rows per rank;
    # narrow, because each rank compares float64 copies of every gradient and state tensor
    ranks = dict(backbone={"name": "resnet18", "width": 0.25, "small_images": True}, size=32, local=16, num_local=2,
                 batch=32)
    return dict(backbone={"name": "resnet50"}, size=224, local=96, num_local=6, batch=128, warmup=3, steps=10,
                ddp_backbone={"name": "resnet50"}, ddp_size=224, ranks=ranks)


def method_config(name: str, s: dict[str, Any], batch: int) -> dict[str, Any]:
    """The `method:` section of a run of `name` at sizes `s` and global batch `batch`."""
    config: dict[str, Any] = {"name": name, "backbone": s["backbone"], "global_batch_size": batch}
    if name in MULTICROP:
        config["num_local_views"] = s["num_local"]
    if name == "moco_v2":
        config["queue_size"] = batch * 16
    if name == "swav":
        config["queue_size"] = 0
    if name == "cpc_v2":  # 224 px: a 6 x 6 grid of 64 px patches (stride 32); small: 8 px patches, stride 4
        config.update(patch_size=64, patch_stride=32, bidirectional=True) if s["size"] >= 64 else \
            config.update(patch_size=8, patch_stride=4, max_offset=2, bidirectional=True, context_hidden_dim=16)
        config["backbone"] = {**s["backbone"], "norm": "layer"}
    if s["size"] < 64 and name != "cpc_v2":  # small: small heads
        config.update({"simclr": dict(projection_hidden_dim=32, projection_dim=16),
                       "moco_v2": dict(projection_hidden_dim=32, projection_dim=16),
                       "moco_v3": dict(projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32),
                       "swav": dict(projection_hidden_dim=32, projection_dim=16, num_prototypes=8),
                       "dino": dict(out_dim=64, hidden_dim=32, bottleneck_dim=16),
                       "byol": dict(projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32),
                       "simsiam": dict(projection_dim=32, prediction_hidden_dim=16)}[name])
    return config


def train_config(method: dict[str, Any], s: dict[str, Any], world_size: int = 1, **fields: Any) -> TrainConfig:
    """A validated TrainConfig around `method` (its recipe makes the method's view counts); the
    dataset is never opened (the Trainer gets `steps_per_epoch` and is fed batches)."""
    locals_ = method.get("num_local_views", 0)
    data = ({"recipe": "multicrop", "recipe_options": {"global_size": s["size"], "local_size": s["local"],
                                                        "num_local": locals_}}
            if locals_ else {"recipe": "simclr", "recipe_options": {"size": s["size"]}})
    config = {
        "seed": 0, "data": {"dataset": "unused", **data}, "method": dict(method),
        "optimizer": {"name": "lars", "base_lr": 0.5, "lr_scaling": "linear", "reference_batch_size": s["batch"],
                      "warmup_steps": 1, "weight_decay": 1e-4},
        "batch_size": method.get("global_batch_size", s["batch"]), "epochs": 1, "max_steps": 10, "grad_clip": 5.0,
        "scaling": {"num_workers": world_size}, "run": {"log_every_steps": 1},
    }
    config.update(fields)
    return TrainConfig.model_validate(config)
