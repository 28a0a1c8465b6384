"""Optimizers for SSL: LARS (timm's) for big-batch ResNets, AdamW for ViTs, SGD.

Biases and normalisation parameters come in their own group with weight_decay=0
(`Method.parameter_groups`); timm's LARS skips the trust-ratio adaptation for groups without
weight decay, so they are excluded from both, as in SimCLR/BYOL.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from timm.optim import Lars

from trainers.schedules import cosine_schedule

__all__ = ["OptimizerConfig", "scaled_learning_rate", "build_optimizer", "learning_rate_schedule", "set_learning_rate"]


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
    weight_decay: float = Field(1e-6, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    trust_coefficient: float = Field(0.001, gt=0, description="LARS eta")


def scaled_learning_rate(base_lr: float, global_batch_size: int, rule: str = "linear", reference: int = 256) -> float:
    """Goyal et al.'s scaling: base_lr x B/256 (linear) or x sqrt(B/256) (SimCLR with LARS)."""
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    ratio = global_batch_size / reference
    return {"linear": base_lr * ratio, "sqrt": base_lr * math.sqrt(ratio), "none": base_lr}[rule]


def build_optimizer(
    config: OptimizerConfig, parameter_groups: list[dict], global_batch_size: int
) -> torch.optim.Optimizer:
    """Optimizer over `parameter_groups` (each with its own weight_decay) at the scaled LR."""
    lr = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling, config.reference_batch_size)
    groups = [dict(g) for g in parameter_groups if len(list(g["params"])) > 0]
    if config.name == "lars":
        return Lars(groups, lr=lr, momentum=config.momentum, trust_coeff=config.trust_coefficient)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)


def learning_rate_schedule(config: OptimizerConfig, global_batch_size: int, total_steps: int) -> np.ndarray:
    """Per-step LR: linear warm-up to the scaled LR, then cosine to `final_lr`."""
    peak = scaled_learning_rate(config.base_lr, global_batch_size, config.lr_scaling, config.reference_batch_size)
    return cosine_schedule(peak, config.final_lr, total_steps, min(config.warmup_steps, total_steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR (groups keep their own weight decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
