"""Tiny configurations of every method, run through the REAL `Trainer.train_step`.

`make_trainer` builds `trainers.trainer.Trainer` without a loader (the TrainConfig names a
dataset it never opens) with LARS, a warm-up + cosine schedule and gradient clipping, so the
equivalence tests exercise exactly the runner's step: DDP (on 2 gloo ranks), clipping,
scheduler, optimizer, EMA updates.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from pipeline import DataPosition, ViewBatch
from trainers import distributed
from trainers.config import TrainConfig
from testbed.numerics import default_dtype
from trainers.trainer import Trainer

CONVNET = {"name": "convnet", "width": 0.25}
GLOBAL_BATCH = 8
GLOBAL_PX, LOCAL_PX = 16, 8

TINY_CONFIGS: dict[str, dict] = {
    "simclr": dict(name="simclr", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16),
    "moco_v2": dict(name="moco_v2", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16,
                    queue_size=24, global_batch_size=GLOBAL_BATCH),
    "moco_v3": dict(name="moco_v3", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16,
                    prediction_hidden_dim=32),
    "moco_v3_vit": dict(name="moco_v3", backbone={"name": "vit_tiny", "image_size": GLOBAL_PX},
                        projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32),
    # a queue of 2 global batches: it must shift (a queue that never shifts fails the tests)
    "swav": dict(name="swav", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16, num_prototypes=6,
                 queue_size=2 * GLOBAL_BATCH, freeze_prototypes_steps=1, num_local_views=2),
    "dino": dict(name="dino", backbone=CONVNET, out_dim=32, hidden_dim=32, bottleneck_dim=16, num_local_views=2,
                 freeze_last_layer_steps=1, warmup_teacher_temperature=0.02, teacher_temperature_warmup_steps=2),
    "byol": dict(name="byol", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32),
    "simsiam": dict(name="simsiam", backbone=CONVNET, projection_dim=32, prediction_hidden_dim=16),
    "barlow_twins": dict(name="barlow_twins", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16),
    "vicreg": dict(name="vicreg", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16),
    # 24 keys per view, batches of 8: both queues wrap at the shared pointer
    "moby": dict(name="moby", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32,
                 queue_size=24, global_batch_size=GLOBAL_BATCH),
    # 16 px views -> a 3 x 3 grid of 8 px patches; both directions, rows 1 and 2 ahead; per-patch
    # colour dropping and flips drawn for the global batch (each rank must take its own rows)
    "cpc_v2": dict(name="cpc_v2", backbone=CONVNET, patch_size=8, patch_stride=4, min_offset=1, max_offset=2,
                   bidirectional=True, context_blocks=1, context_hidden_dim=16, patch_color_drop_p=0.5,
                   patch_flip_p=0.5),
    # MoBY's natural backbone at CPU-test size (no drop-path: per-rank randomness breaks equality)
    # iBOT needs patch tokens: a 2-block ViT with a 4 x 4 patch grid; no drop-path (per-rank
    # randomness breaks equality); both temperatures warm up; last layer frozen for one step;
    # separate patch layer with learned weight-norm scales (the non-default branches)
    "ibot": dict(name="ibot", backbone={"name": "vit_tiny", "image_size": GLOBAL_PX, "drop_path_rate": 0.0},
                 out_dim=32, patch_out_dim=32, hidden_dim=32, bottleneck_dim=16, num_local_views=2,
                 freeze_last_layer_steps=1, warmup_teacher_temperature=0.02, teacher_temperature_warmup_steps=2,
                 mask_ratios=[(0.2, 0.5)]),
    "ibot_separate_heads": dict(name="ibot", backbone={"name": "vit_tiny", "image_size": GLOBAL_PX, "drop_path_rate": 0.0},
                                out_dim=32, patch_out_dim=24, hidden_dim=32, bottleneck_dim=16, shared_head=False,
                                norm_last_layer=False),
    # SiT on a tiny ViT: donor groups of 4 = the per-rank batch of 2 ranks, so 2 x 4 == 1 x 8 exactly;
    # with the v1 rotation task on (the rotation-off path is the same step minus it: tests/trainers/test_sit.py)
    "sit": dict(name="sit", backbone={"name": "vit_tiny", "image_size": GLOBAL_PX, "drop_path_rate": 0.0},
                head_hidden_dim=32, out_dim=16, replace_group_size=GLOBAL_BATCH // 2, rotation_weight=1.0),
    # ... and with v1's learned (uncertainty) task weights: learned scalars through DDP too
    "sit_v1": dict(name="sit", backbone={"name": "vit_tiny", "image_size": GLOBAL_PX, "drop_path_rate": 0.0},
                   head_hidden_dim=32, out_dim=16, replace_group_size=GLOBAL_BATCH // 2, rotation_weight=1.0,
                   uncertainty_weighting=True),
    "moby_swin": dict(name="moby", backbone={"name": "swin_nano", "image_size": GLOBAL_PX, "drop_path_rate": 0.0},
                      projection_hidden_dim=32, projection_dim=16, prediction_hidden_dim=32, queue_size=16),
}


def train_config(method: dict, world_size: int = 1, total_steps: int = 10, **fields: Any) -> TrainConfig:
    """A TrainConfig around `method` whose recipe makes the method's view counts."""
    locals_ = method.get("num_local_views", 0)
    data = ({"recipe": "multicrop", "recipe_options": {"global_size": GLOBAL_PX, "local_size": LOCAL_PX,
                                                        "num_local": locals_}}
            if locals_ else {"recipe": "simclr", "recipe_options": {"size": GLOBAL_PX}})
    config = {
        "seed": 0, "data": {"dataset": "unused", **data}, "method": dict(method),
        "optimizer": {"name": "lars", "base_lr": 0.5, "lr_scaling": "linear", "reference_batch_size": GLOBAL_BATCH,
                      "warmup_steps": 1, "weight_decay": 1e-4},
        "batch_size": GLOBAL_BATCH, "epochs": 1, "max_steps": total_steps, "grad_clip": 5.0,
        "scaling": {"num_workers": world_size},
        "run": {"log_every_steps": 1},
    }
    config.update(fields)
    return TrainConfig.model_validate(config)


def make_trainer(method: dict, total_steps: int = 10, **fields: Any) -> Trainer:
    config = train_config(method, distributed.world_size(), total_steps, **fields)
    return Trainer(config, distributed.rank(), distributed.world_size(), "cpu", steps_per_epoch=total_steps)


def make_views(config: dict, steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """Per step: 2 global crops then the config's local crops, for the GLOBAL batch."""
    g = torch.Generator().manual_seed(seed)
    locals_ = config.get("num_local_views", 0)
    return [
        [torch.randn(GLOBAL_BATCH, 3, GLOBAL_PX, GLOBAL_PX, generator=g) for _ in range(2)]
        + [torch.randn(GLOBAL_BATCH, 3, LOCAL_PX, LOCAL_PX, generator=g) for _ in range(locals_)]
        for _ in range(steps)
    ]


def local_rows(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (all of it on one process)."""
    n = t.shape[0] // distributed.world_size()
    return t[distributed.rank() * n : (distributed.rank() + 1) * n]


def view_batch(views: list[torch.Tensor], step: int) -> ViewBatch:
    """This rank's share of a global batch as the loader would hand it over (`rows`: the samples'
    item ids, global: the same sample has the same id on any number of ranks)."""
    local = [local_rows(v) for v in views]
    n = local[0].shape[0]
    keys = [f"r{distributed.rank()}s{step}i{i}" for i in range(n)]
    rows = local_rows(torch.arange(views[0].shape[0])) + step * views[0].shape[0]
    return ViewBatch(views=local, keys=keys, group_ids=keys, labels=None, label_vocabulary=[],
                     view_sources=torch.zeros(n, len(local), dtype=torch.long), rows=rows,
                     epoch=0, batch=step, position=DataPosition(0, step + 1))


def record(trainer: Trainer, logs: dict) -> dict:
    """Everything a step changed, reduced over ranks where it is a per-rank value."""
    named = [(n, p) for n, p in trainer.method.named_parameters() if p.requires_grad]
    return {
        "loss": distributed.all_reduce_sum(logs["loss"].detach()) / distributed.world_size(),
        "logs": distributed.reduce_logs(logs),
        "grads": {n: p.grad.clone() for n, p in named if p.grad is not None},
        "without_grad": sorted(n for n, p in named if p.grad is None),
        "state": {k: v.clone() for k, v in trainer.method.state_dict().items()},
    }


# steps each method runs in the equivalence tests: MoCo's pointer wraps (24 = 3 batches of 8) and is
# written again after the wrap; SwAV's queue fills (2 steps), is used, and shifts once more
TINY_STEPS: dict[str, int] = {"moco_v2": 4, "swav": 4, "moby": 4}


def run_method(config: dict, steps: int = 2, total_steps: int = 10, dtype: torch.dtype = torch.float64,
               **fields: Any) -> list[dict]:
    """`steps` real Trainer steps of a freshly built method (float64: equality is then exact to
    ~1e-13, so any missing gradient term or misordered queue shows; float32 rounding in tiny
    batches is amplified to ~1e-4 by the second step and would hide nothing but blur the check)."""
    with default_dtype(dtype):
        trainer = make_trainer(config, total_steps, **fields)
        return [record(trainer, trainer.train_step(view_batch(views, s)))
                for s, views in enumerate(make_views(config, steps))]


def run_all_methods(names: list[str]) -> dict[str, list[dict]]:
    torch.manual_seed(123)  # methods must not depend on the global RNG
    return {name: run_method(TINY_CONFIGS[name], steps=TINY_STEPS.get(name, 2)) for name in names}


def run_recording_gradients_before_clipping(config: dict, batches: Callable[[], Iterable[ViewBatch]],
                                            **fields: Any) -> list[dict]:
    """Real Trainer steps (float64) on `batches()`, made inside the float64 context; each record
    also holds the (DDP-averaged) gradients as `clip_gradients` receives them: compared before
    clipping, a gradient twice too large cannot hide behind the tiny configs' clip at 5.0."""
    with default_dtype(torch.float64):
        trainer = make_trainer(config, total_steps=10, **fields)
        before_clip: list[dict] = []
        clip = trainer.method.clip_gradients

        def recording_clip(max_norm: float) -> None:
            before_clip.append({n: p.grad.clone() for n, p in trainer.method.named_parameters() if p.grad is not None})
            clip(max_norm)

        trainer.method.clip_gradients = recording_clip
        return [{**record(trainer, trainer.train_step(batch)), "grads_before_clip": before_clip[-1]}
                for batch in batches()]


def assert_ranks_ran_as_one(ranks: list[list[dict]], single: list[dict], what: str,
                            same: Callable[[torch.Tensor, torch.Tensor, str], None]) -> None:
    """Each rank's records of `run_recording_gradients_before_clipping` equal the one-process run:
    loss, gradients before clipping and state (floating state by `same`, the rest exactly)."""
    for rank, runs in enumerate(ranks):
        for step, (got, ref) in enumerate(zip(runs, single)):
            where = f"{what} rank {rank} step {step}"
            same(got["loss"], ref["loss"], f"{where} loss")
            assert got["grads_before_clip"].keys() == ref["grads_before_clip"].keys() and ref["grads_before_clip"]
            for key, grad in ref["grads_before_clip"].items():
                same(got["grads_before_clip"][key], grad, f"{where} gradient before clipping {key}")
            assert got["state"].keys() == ref["state"].keys(), where
            for key, value in ref["state"].items():
                if value.is_floating_point():
                    same(got["state"][key], value, f"{where} state {key}")
                else:
                    assert torch.equal(got["state"][key], value), f"{where} state {key}"
