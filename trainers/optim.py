"""Optimizers for SSL (LARS for big-batch ResNets, AdamW for ViTs, SGD) and their per-group schedules.

Parameter groups come from `Method.parameter_groups` and carry flags besides `params`:
`weight_decay` (its base value; 0 for biases/norms), `lars_adaptation` (trust ratio on or off),
`fixed_lr` (SimSiam's predictor: the peak LR throughout), `norm_or_bias`, and `lr_scale` (a
factor on the group's whole LR schedule: Barlow Twins gives biases and norms 0.0048 / 0.2 = 0.024
of the weights' LR, barlowtwins main.py `adjust_learning_rate`; the config's
`bias_norm_lr_scale` sets it for the biases/norms groups, 1 elsewhere). The two exclusions
are independent, so a recipe can decay a parameter it does not adapt or the reverse; the
config's `weight_decay_on_all_parameters` / `lars_adaptation_on_all_parameters` switch them on
for biases and norms where the official code passes `model.parameters()` unfiltered (MoCo v2,
SimSiam, MoCo v3 ViT, SwAV's LARC).

LARS is written here (a few lines) because timm's `Lars` couples the two: it skips the trust
ratio only through `weight_decay != 0 or always_adapt` (timm/optim/lars.py `_single_tensor_lars`),
so with `weight_decay: 0` it silently becomes SGD at a LARS-sized LR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainers.schedules import cosine_schedule

__all__ = [
    "OptimizerConfig",
    "LARS",
    "OptimizerSchedule",
    "scaled_learning_rate",
    "build_optimizer",
    "learning_rate_schedule",
    "weight_decay_schedule",
    "optimizer_schedule",
    "set_learning_rate",
]


class OptimizerConfig(BaseModel):
    """Optimizer choice and its hyper-parameters; `base_lr` is per `reference_batch_size` images."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["lars", "adamw", "sgd"] = "lars"
    base_lr: float = Field(0.3, gt=0)
    final_lr: float = Field(0.0, ge=0, description="end of the cosine, absolute")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(
        "linear", description="lr = base_lr x batch/256 (linear), x sqrt(batch/256) (sqrt), or base_lr"
    )
    reference_batch_size: int = Field(256, ge=1)
    warmup_steps: int = Field(0, ge=0)
    warmup_start_lr: float = Field(0.0, ge=0, description="LR at step 0 of the warm-up, absolute (SwAV: 0.3)")
    weight_decay: float = Field(1e-6, ge=0)
    final_weight_decay: float | None = Field(
        None, ge=0, description="cosine weight decay from weight_decay to this (DINO: 0.04 -> 0.4); None = constant"
    )
    weight_decay_on_all_parameters: bool = Field(
        False, description="decay biases and norms too (official recipes that hand model.parameters() to SGD/AdamW)"
    )
    lars_adaptation_on_all_parameters: bool = Field(
        False, description="LARS trust ratio on biases and norms too (SwAV's LARC over model.parameters())"
    )
    bias_norm_lr_scale: float = Field(
        1.0, gt=0, description="biases/norms groups run at this x the LR schedule (Barlow Twins: 0.0048/0.2 = 0.024)")
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    trust_coefficient: float = Field(0.001, gt=0, description="LARS eta")
    trust_ratio: Literal["update", "larc"] = Field(
        "update", description="eta*|w|/|g+wd*w| (MoCo v3, BYOL, SimCLR) or apex LARC's eta*|w|/(|g|+wd*|w|) (SwAV)"
    )

    @model_validator(mode="after")
    def _lars_only_flags(self) -> "OptimizerConfig":
        if self.lars_adaptation_on_all_parameters and self.name != "lars":
            raise ValueError(f"lars_adaptation_on_all_parameters needs name: lars, got {self.name!r}")
        return self


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio, switched per group by `lars_adaptation`.

    update = g + wd * w; if adapting and both norms are > 0:
    update *= eta * ||w|| / ||update|| (MoCo v3 moco/optimizer.py, BYOL/SimCLR LARS);
    buf = momentum * buf + update; w -= lr * buf. Weight decay and adaptation are separate
    group keys, so excluding a group from one does not exclude it from the other.
    `larc=True` uses apex LARC's ratio eta * ||w|| / (||g|| + wd * ||w|| + 1e-8) with clip=False,
    as SwAV's main_swav.py line 177 wraps its SGD.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, lars_adaptation: bool = True, larc: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adaptation=lars_adaptation, larc=larc)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict) -> None:
        """Also reads checkpoints of timm's Lars: its groups adapted iff weight_decay != 0."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("trust_coefficient", group.get("trust_coeff", self.defaults["trust_coefficient"]))
            group.setdefault("lars_adaptation", group.get("always_adapt", False) or group["weight_decay"] != 0)
            group.setdefault("larc", False)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = group["weight_decay"]
            updates = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            if group["lars_adaptation"]:
                # one vectorised ratio for the whole group (foreach norms, torch.where): no host
                # sync and a handful of kernels instead of several per parameter
                w_norm = torch.stack(torch._foreach_norm(params))
                if group.get("larc"):
                    u_norm = torch.stack(torch._foreach_norm(grads))
                    ratio = group["trust_coefficient"] * w_norm / (u_norm + wd * w_norm + 1e-8)
                else:
                    u_norm = torch.stack(torch._foreach_norm(updates))
                    ratio = group["trust_coefficient"] * w_norm / u_norm.clamp_min(torch.finfo(u_norm.dtype).tiny)
                ratio = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
                torch._foreach_mul_(updates, list(ratio.unbind()))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def scaled_learning_rate(base_lr: float, global_batch_size: int, rule: str = "linear", reference: int = 256) -> float:
    """Goyal et al.'s scaling: base_lr x B/256 (linear) or x sqrt(B/256) (SimCLR with LARS)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    ratio = global_batch_size / reference
    return {"linear": base_lr * ratio, "sqrt": base_lr * math.sqrt(ratio), "none": base_lr}[rule]


def _effective_groups(config: OptimizerConfig, parameter_groups: list[dict]) -> list[dict]:
    """Groups with their final flags: config switches applied to the biases/norms groups."""
    groups = []
    for g in parameter_groups:
        g = dict(g)
        g["params"] = list(g["params"])
        if not g["params"]:
            continue
        # groups without the flag (hand-made ones): a group of 1-D tensors is biases/norms
        norm_or_bias = bool(g.get("norm_or_bias", all(p.ndim <= 1 for p in g["params"])))
        g["norm_or_bias"] = norm_or_bias
        if norm_or_bias and config.weight_decay_on_all_parameters:
            g["weight_decay"] = config.weight_decay
        g.setdefault("weight_decay", 0.0 if norm_or_bias else config.weight_decay)
        g["lars_adaptation"] = bool(g.get("lars_adaptation", not norm_or_bias)) or (
            norm_or_bias and config.lars_adaptation_on_all_parameters
        )
        g["fixed_lr"] = bool(g.get("fixed_lr", False))
        g["lr_scale"] = float(g.get("lr_scale", config.bias_norm_lr_scale if norm_or_bias else 1.0))
        g["decayed"] = g["weight_decay"] > 0  # follows the weight-decay schedule
        groups.append(g)
    return groups


def build_optimizer(
    config: OptimizerConfig, parameter_groups: list[dict], global_batch_size: int
) -> torch.optim.Optimizer:
    """Optimizer over `parameter_groups` (each with its own flags) at the scaled LR."""
    lr = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling, config.reference_batch_size)
    groups = _effective_groups(config, parameter_groups)
    for g in groups:
        g.setdefault("lr", lr * g["lr_scale"])
    if config.name == "lars":
        return LARS(groups, lr=lr, momentum=config.momentum, trust_coefficient=config.trust_coefficient,
                    larc=config.trust_ratio == "larc")
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def learning_rate_schedule(config: OptimizerConfig, global_batch_size: int, total_steps: int) -> np.ndarray:
    """Per-step LR: linear warm-up from `warmup_start_lr` to the scaled LR, then cosine to `final_lr`."""
    peak = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling, config.reference_batch_size)
    return cosine_schedule(peak, config.final_lr, total_steps, min(config.warmup_steps, total_steps),
                           config.warmup_start_lr)


def weight_decay_schedule(config: OptimizerConfig, total_steps: int) -> np.ndarray:
    """Per-step weight decay of the decayed groups: constant, or DINO's cosine to `final_weight_decay`."""
    end = config.weight_decay if config.final_weight_decay is None else config.final_weight_decay
    return cosine_schedule(config.weight_decay, end, total_steps)


@dataclass(frozen=True)
class OptimizerSchedule:
    """Every group's LR and weight decay at every step, as pure functions of the step.

    Indexing (`schedule[s]`) gives the main LR at step s, so it reads like the LR array it replaces.
    """

    lr: np.ndarray
    weight_decay: np.ndarray
    peak_lr: float

    def __len__(self) -> int:
        return len(self.lr)

    def __getitem__(self, step: int) -> float:
        return float(self.lr[step])

    def group_values(self, group: dict, step: int) -> tuple[float, float]:
        """(lr, weight_decay) of `group` at `step`: the schedule (or the peak, if fixed) x its `lr_scale`."""
        lr = (self.peak_lr if group.get("fixed_lr") else float(self.lr[step])) * group.get("lr_scale", 1.0)
        wd = float(self.weight_decay[step]) if group.get("decayed", group.get("weight_decay", 0) > 0) else 0.0
        return lr, wd

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every group's LR and weight decay for `step` (host floats: no device sync)."""
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = self.group_values(group, step)


def optimizer_schedule(config: OptimizerConfig, global_batch_size: int, total_steps: int) -> OptimizerSchedule:
    """The per-group LR and weight-decay schedule of a run (see :class:`OptimizerSchedule`)."""
    peak = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling, config.reference_batch_size)
    return OptimizerSchedule(learning_rate_schedule(config, global_batch_size, total_steps),
                             weight_decay_schedule(config, total_steps), peak)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR x its `lr_scale` (groups keep their own weight decay); fixed-LR groups are skipped."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr"):
            group["lr"] = lr * group.get("lr_scale", 1.0)
