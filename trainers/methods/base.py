"""The contract between a self-supervised method and the runner that trains it.

A runner drives any method the same way (one step, every rank)::

    method = build_method(config, seed=seed)            # registry by config.name, SyncBN inside
    optimizer = build_optimizer(opt_cfg, method.parameter_groups(opt_cfg.weight_decay), global_batch)
    schedule = optimizer_schedule(opt_cfg, global_batch, total_steps)  # per-group LR and WD
    for step in range(start, total_steps):
        schedule.apply(optimizer, step)
        views = batch.views                             # global crops first, then local crops
        loss, logs = method.training_step(views, step)  # loss: this rank's local mean; logs local
                                                        # 0-d tensors (no .item()): reduce_logs(logs)
        optimizer.zero_grad(set_to_none=True)           #   at log steps only
                                                        # (methods with needs_sample_ids also get
                                                        # samples=SampleIds(...): iBOT's masks)
        loss.backward()                                 # the runner calls training_step as DDP's
                                                        # forward (distributed.data_parallel)
        method.clip_gradients(max_norm)                 # if configured; DINO clips per parameter
        optimizer.step()
        method.on_after_optimizer_step(step, total_steps)  # EMA teachers/targets

`method.state_dict()` holds everything a resume needs besides the optimizer and data position
(weights, EMA copies, queues and their pointers, centers, BN statistics): state is replicated
on every rank, so rank 0's copy is complete. Schedules are pure functions of `step`.
Methods reach other ranks only through :mod:`trainers.distributed`. A method that draws its own
per-sample randomness (iBOT's masks, SiT's corruptions and rotations) sets `needs_sample_ids`
and gets the batch's :class:`SampleIds`, so its draws are pure functions of (seed, epoch, sample id) like the
pipeline's augmentations, whatever the rank or the batch size; a loss that needs each sample's
group (`multi_positive`) sets it too and reads `SampleIds.groups`.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor, nn

from trainers.backbones.base import BackboneConfig
from trainers.backbones.registry import build_backbone, is_known_backbone, unknown_backbone_message
from trainers.distributed.sync_batchnorm import convert_sync_batchnorm
from groundfloor.errors import UsageError, usage_error_from

__all__ = [
    "SampleIds",
    "group_hashes",
    "MethodConfig",
    "Method",
    "METHODS",
    "register_method",
    "parse_method_config",
    "build_method",
    "ema_update",
    "frozen_copy",
    "stochastic_layers",
    "EMBEDDINGS",
]

# What a trained method can embed images with (Method.embedding_model).
EMBEDDINGS = ("backbone", "projection")


@dataclass(frozen=True)
class SampleIds:
    """Which samples a (micro-)batch holds, for per-sample draws made in the method (iBOT's masks,
    SiT's corruptions) and for losses that need each sample's group (multi-positive contrast).

    `rows` are the batch's `ViewBatch.rows` (int64, this rank's samples in batch order): a draw
    that is a function of (seed, epoch, row) gives a sample the same masks whatever rank or
    batch it lands in, as the augmentation parameters (pipeline/params.py). `groups` (int64, same
    order) are its group ids as :func:`group_hashes` of `ViewBatch.group_ids`: samples of one
    group (a listing's photos, a sample drawn twice) share one. A plain dataclass
    of host values so DDP's forward passes it through untouched (its `_recursive_to` moves only
    tensors and containers of them) and nothing here waits on the device.
    """

    seed: int
    epoch: int
    rows: np.ndarray
    groups: Optional[np.ndarray] = None  # int64 per sample, `group_hashes(ViewBatch.group_ids)`


def group_hashes(group_ids: Sequence[str]) -> np.ndarray:
    """One int64 per group id string: the first 8 bytes of its BLAKE2b digest (little-endian).

    A pure function of the string (Python's `hash` is salted per process), so every rank and
    every run gives a group the same id; the multi-positive losses compare ids, never strings,
    and gather them as one int64 tensor. Two distinct groups of a global batch of n samples
    collide with probability about n^2 / 2^65. Host work, ~1 us a sample, no memory kept.
    """
    return np.array([int.from_bytes(hashlib.blake2b(g.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                                    "little", signed=True) for g in group_ids], dtype=np.int64)


class MethodConfig(BaseModel):
    """What every method needs; each method subclasses it with its own fields and defaults."""

    model_config = ConfigDict(extra="forbid")

    supports_local_views: ClassVar[bool] = False
    backbone_defaults: ClassVar[dict[str, Any]] = {}  # the method's own defaults (e.g. zero_init_residual)

    name: str
    backbone: BackboneConfig = Field(default_factory=dict, validate_default=True)
    num_global_views: int = Field(2, ge=2, description="global crops per sample (data.views_per_group; "
                                  "above 2 only where `max_global_views` allows)")
    num_local_views: int = Field(0, ge=0, description="small crops per sample (multi-crop: SwAV, DINO)")
    global_batch_size: int | None = Field(
        None, ge=1, description="samples per step over all ranks; lets construction check queue sizes"
    )

    @field_validator("backbone", mode="before")
    @classmethod
    def _method_backbone_defaults(cls, value: Any) -> Any:
        """Fields the config leaves out take the method's official defaults, not BackboneConfig's."""
        if isinstance(value, dict):
            return {**cls.backbone_defaults, **value}
        return value

    @model_validator(mode="after")
    def _check_common(self) -> "MethodConfig":
        if self.num_local_views and not self.supports_local_views:
            raise ValueError(
                f"num_local_views={self.num_local_views}: method {self.name!r} has no multi-crop; "
                "use 0 (multi-crop methods: swav, dino, ibot)"
            )
        if self.num_global_views > self.max_global_views():
            raise ValueError(f"num_global_views={self.num_global_views}: method {self.name!r} uses "
                             f"{self.max_global_views()} global views per sample")
        if not is_known_backbone(self.backbone.name):
            raise ValueError(unknown_backbone_message(self.backbone.name).replace(
                f"unknown backbone {self.backbone.name!r}", f"backbone.name={self.backbone.name!r} is unknown"))
        return self

    def max_global_views(self) -> int:
        """The most global views per sample this config's loss uses: 2 (the pair) unless a method
        whose loss takes every view of a group says more, so no view is silently dropped."""
        return 2

    def check_view_sizes(self, global_sizes: list[int]) -> None:
        """Raise UsageError if views of these sizes (px) cannot work; called by TrainConfig before any worker starts."""


class Method(nn.Module):
    """Backbone + heads + loss + per-step state updates of one SSL method (see module doc)."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    # the runner passes `samples=SampleIds(...)` to training_step; a method whose config asks for
    # group ids (`multi_positive`) sets it on the instance
    needs_sample_ids: bool = False

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)

    # ----------------------------------------------------------------- the runner's interface
    def require_vit_tokens(self, why: str) -> None:
        """A one-line UsageError unless the backbone is a ViT with patch tokens (masked/patch methods)."""
        if self.backbone.family != "vit" or not self.backbone.token_output:
            raise UsageError(f"{self.name} needs a ViT backbone ({why}); backbone.name={self.config.backbone.name!r} "
                             f"is a {self.backbone.family} backbone")

    @property
    def feature_dim(self) -> int:
        """Width of the backbone features (what kNN, linear probes and export see)."""
        return self.backbone.feature_dim

    @property
    def num_global_views(self) -> int:
        return self.config.num_global_views

    @property
    def num_local_views(self) -> int:
        return self.config.num_local_views

    @property
    def eval_backbone(self) -> nn.Module:
        """The feature extractor to evaluate and export (DINO overrides: its teacher)."""
        return self.backbone

    @property
    def projection_head(self) -> Optional[nn.Module]:
        """The projector that maps `eval_backbone`'s features into the space the loss compares
        (`self.projector` on `self.backbone`), or None where there is none to follow the evaluated
        backbone: DINO evaluates its teacher and its head ends in prototype logits; CPC, iBOT and
        SiT have no such projector."""
        projector = getattr(self, "projector", None)
        return projector if isinstance(projector, nn.Module) and self.eval_backbone is self.backbone else None

    def embedding_model(self, embedding: str = "backbone") -> nn.Module:
        """What `embedding` embeds with: "backbone" (`eval_backbone`, for transfer: kNN, probes,
        export) or "projection" (`eval_backbone` then `projection_head`: the space the loss made
        invariant to the differences between views, for retrieval of the same object)."""
        if embedding == "backbone":
            return self.eval_backbone
        if embedding != "projection":
            raise UsageError(f"embedding {embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
        if self.projection_head is None:
            raise UsageError(f"method {self.name!r} has no projection head to embed with; use --embedding backbone")
        return nn.Sequential(self.eval_backbone, self.projection_head)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """Loss (this rank's local mean, to backpropagate) and scalars to log for one step.

        `views`: `num_global_views` tensors (B, 3, H, W), then `num_local_views` smaller ones.
        Updates that the paper makes in the forward pass (queues, centers) happen here.
        """
        raise NotImplementedError

    def on_after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Updates after `optimizer.step()` of `step`: the EMA of every :meth:`momentum_pairs` pair.

        One foreach update over all pairs at `momentum_at(step, total_steps)`; methods without
        pairs do nothing. Override only for updates that are not an EMA.
        """
        pairs = self.momentum_pairs()
        if pairs:
            ema_update(nn.ModuleList([target for _, target in pairs]), nn.ModuleList([online for online, _ in pairs]),
                       self.momentum_at(step, total_steps))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, EMA target) module pairs, declared by momentum methods (solo-learn's
        `BaseMomentumMethod.momentum_pairs`); targets are :func:`frozen_copy` s of the online modules."""
        return []

    def momentum_at(self, step: int, total_steps: int) -> float:
        """EMA momentum applied after the optimizer step of `step` (methods with pairs define it)."""
        raise NotImplementedError(f"{self.name} declares momentum_pairs but no momentum_at")

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: decayed weights, and biases/norms/tokens with weight_decay=0.

        Each group carries its flags (see trainers.optim): `lars_adaptation` (off for biases and
        norms, as SimCLR/BYOL/MoCo v3 exclude them), `norm_or_bias`, and `fixed_lr` (groups of
        :meth:`fixed_lr_modules`, e.g. SimSiam's predictor). Frozen (EMA) parameters are left out.
        """
        no_decay_names = self.no_weight_decay_names()
        fixed = {id(p) for m in self.fixed_lr_modules() for p in m.parameters()}
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            plain = param.ndim <= 1 or name.endswith(".bias") or name in no_decay_names
            buckets.setdefault((id(param) in fixed, plain), []).append(param)
        groups = []
        for fixed_lr in (False, True):
            for plain in (False, True):
                params = buckets.get((fixed_lr, plain), [])
                if fixed_lr and not params:
                    continue
                groups.append({"params": params, "weight_decay": 0.0 if plain else weight_decay,
                               "lars_adaptation": not plain, "norm_or_bias": plain, "fixed_lr": fixed_lr})
        return groups

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names kept out of weight decay besides biases and 1-D tensors (ViT tokens)."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def fixed_lr_modules(self) -> list[nn.Module]:
        """Modules whose LR stays at the peak (no warm-up, no decay); none by default."""
        return []

    def clip_gradients(self, max_norm: float) -> None:
        """Clip gradients before the optimizer step: the global norm by default (DINO overrides)."""
        torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], max_norm)

    # ------------------------------------------------------------------ helpers for methods
    def check_views(self, views: list[Tensor]) -> None:
        """Raise UsageError unless `views` has the expected crops with one batch size."""
        expected = self.num_global_views + self.num_local_views
        if len(views) != expected:
            raise UsageError(
                f"{self.name} expects {self.num_global_views} global + {self.num_local_views} local views, "
                f"got {len(views)} views"
            )
        batch = views[0].shape[0]
        for i, v in enumerate(views):
            if v.dim() != 4 or v.shape[0] != batch or v.shape[1] != 3:
                raise UsageError(f"view {i} has shape {tuple(v.shape)}; expected ({batch}, 3, H, W)")

    def group_ids(self, samples: Optional[SampleIds], batch: int, device: torch.device) -> Tensor:
        """The batch's per-sample group ids (B,) int64 on `device` (pinned copy, no host sync).

        UsageError without them: a multi-positive loss given made-up ids would train silently on
        the wrong positives, so callers that feed tensors pass `samples` with `groups` themselves.
        """
        if samples is None or samples.groups is None or len(samples.groups) != batch:
            got = "none" if samples is None or samples.groups is None else f"{len(samples.groups)}"
            raise UsageError(f"{self.name}: multi_positive needs the batch's group ids (samples=SampleIds(..., "
                             f"groups=...)) for {batch} samples, got {got}")
        host = torch.from_numpy(np.ascontiguousarray(samples.groups, dtype=np.int64))
        if device.type == "cuda":
            host = host.pin_memory()
        return host.to(device, non_blocking=True)

    @staticmethod
    def encode_multicrop(encoder: nn.Module, views: list[Tensor]) -> Tensor:
        """encoder(crops) with consecutive same-size crops in ONE forward (as DINO/SwAV do).

        Returns the features of all crops concatenated in view order (crop-major).
        """
        outputs, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            outputs.append(encoder(torch.cat(views[start:end], dim=0)))
            start = end
        return torch.cat(outputs, dim=0)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that gets no gradient: the EMA target/teacher/key encoder.

    Stochastic layers become identities: the official teachers/targets are built without
    drop-path (DINO main_dino.py builds `teacher = vits.__dict__[args.arch](patch_size=...)`
    with no drop_path_rate) and no dropout, whatever the student uses.
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    _remove_stochastic_layers(target)
    return target


def _is_stochastic(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return type(module).__name__ == "DropPath" and getattr(module, "drop_prob", 0.0) > 0  # timm's


def _remove_stochastic_layers(module: nn.Module) -> None:
    """Zero every dropout/drop-path probability in place (timm's fused attention reads `attn_drop.p`)."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif type(m).__name__ == "DropPath":
            m.drop_prob = 0.0


def stochastic_layers(module: nn.Module) -> list[str]:
    """Names of the active dropout/drop-path layers in `module` (tests: teachers have none)."""
    return [name for name, m in module.named_modules() if _is_stochastic(m)]


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online, parameter by parameter.

    Buffers (BN statistics) are not averaged: the target keeps its own, as in the papers.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise RuntimeError("EMA target and online network have different parameters")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, [p.detach() for p in online_params], alpha=1.0 - momentum)


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` buildable by its `name`."""
    METHODS[cls.name] = cls
    return cls


def parse_method_config(data: MethodConfig | dict[str, Any], where: str = "") -> MethodConfig:
    """Validate `data` with the config class of the method it names; UsageError if bad, its
    field paths prefixed by `where` (``"method."`` when `data` is a train config's section)."""
    if isinstance(data, MethodConfig):
        data = data.model_dump()
    if not isinstance(data, dict) or "name" not in data:
        raise UsageError(f"method config needs a 'name' (one of: {', '.join(sorted(METHODS))}), got {data!r}")
    name = data["name"]
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; expected one of: {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name].config_class(**data)
    except ValidationError as error:
        raise usage_error_from(error, f"{name} config", prefix=where) from None


def build_method(config: MethodConfig | dict[str, Any], seed: int | None = None) -> Method:
    """Build the method `config` names, with BatchNorms converted to SyncBatchNorm.

    With `seed`, initialisation is a function of the seed alone (global RNG untouched), so
    every rank builds identical weights.
    """
    config = parse_method_config(config)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        method = METHODS[config.name](config)
    return convert_sync_batchnorm(method)
