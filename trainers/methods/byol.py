"""BYOL (Grill et al. 2020): online network + predictor regresses an EMA target's projections.

With `data.views_per_group` G > 2 the loss is its pair-averaged form: every view's prediction
regresses every other view's target projection, 2 - 2 cos averaged over the G (G - 1) ordered
pairs and scaled by 2, so G = 2 is BYOL's symmetric loss (both directions summed) exactly. Each
view goes through the networks in a forward of its own, as for the pair (per-view BN statistics).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from trainers.heads import mlp
from pipeline.spec import MAX_GLOBAL_VIEWS
from trainers.losses import mean_over_view_pairs, negative_cosine
from trainers.methods.base import Method, MethodConfig, frozen_copy, register_method
from trainers.schedules import ema_momentum


class BYOLConfig(MethodConfig):
    name: Literal["byol"] = "byol"
    projection_hidden_dim: int = Field(4096, ge=1)
    projection_dim: int = Field(256, ge=1)
    prediction_hidden_dim: int = Field(4096, ge=1)
    ema_momentum: float = Field(0.996, ge=0, le=1, description="base of the cosine schedule to 1")

    def max_global_views(self) -> int:
        return MAX_GLOBAL_VIEWS  # the pair-averaged loss takes every view


@register_method
class BYOL(Method):
    name = "byol"
    config_class = BYOLConfig

    def __init__(self, config: BYOLConfig) -> None:
        super().__init__(config)
        self.projector = mlp([self.feature_dim, config.projection_hidden_dim, config.projection_dim])
        self.predictor = mlp([config.projection_dim, config.prediction_hidden_dim, config.projection_dim])
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        predictions = [self.predictor(self.projector(self.backbone(v))) for v in views]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(v)) for v in views]
        # ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); for a pair: summed over both directions
        loss = 2 * mean_over_view_pairs(lambda p, z: 2 + 2 * negative_cosine(p, z), predictions, targets)
        return loss, {"loss": loss.detach()}

    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return ema_momentum(self.config.ema_momentum, step, total_steps)
