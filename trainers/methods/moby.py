"""MoBY (Xie et al. 2021, "Self-Supervised Learning with Swin Transformers"): MoCo v2's key queue
and momentum encoder + BYOL's asymmetric predictor, with a symmetric contrastive loss.

As SwinTransformer/Transformer-SSL models/moby.py: online encoder -> projector -> predictor
(`MoBYMLP`, 2 layers each: Linear, BN, ReLU, Linear; 4096 hidden, 256 out; the Linear before a
BN has no bias here, which the BN cancels anyway); a momentum copy of encoder + projector whose
momentum follows the cosine from `contrast_momentum` 0.99 to 1 (`_momentum_update_key_encoder`,
applied before each forward with k = updates so far: done here after the previous optimizer step
with m(step + 1), the same weights); one queue per view (`queue1`, `queue2`, 4096 keys,
`_dequeue_and_enqueue` of all-gathered keys at a shared pointer); loss
contrastive_loss(pred_1, key_2, queue2) + contrastive_loss(pred_2, key_1, queue1) at T = 0.2.
Online drop-path 0.2, target none (configs/moby_swin_tiny.yaml; :func:`frozen_copy`).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainers.heads import mlp
from trainers.losses import moby
from trainers.methods.base import Method, MethodConfig, frozen_copy, register_method
from trainers.methods.queue import EmbeddingQueue
from trainers.schedules import ema_momentum


class MoBYConfig(MethodConfig):
    backbone_defaults = {"drop_path_rate": 0.2}  # MOBY.ONLINE_DROP_PATH_RATE (Swin/ViT only)

    name: Literal["moby"] = "moby"
    temperature: float = Field(0.2, gt=0, description="MOBY.CONTRAST_TEMPERATURE")
    queue_size: int = Field(4096, ge=1, description="MOBY.CONTRAST_NUM_NEGATIVE, keys per view")
    projection_hidden_dim: int = Field(4096, ge=1)
    projection_dim: int = Field(256, ge=1)
    prediction_hidden_dim: int = Field(4096, ge=1)
    ema_momentum: float = Field(0.99, ge=0, le=1, description="MOBY.CONTRAST_MOMENTUM: base of the cosine to 1")

    @model_validator(mode="after")
    def _queue_divisible(self) -> "MoBYConfig":
        if self.global_batch_size and self.queue_size % self.global_batch_size:
            raise ValueError(
                f"queue_size={self.queue_size} is not divisible by global_batch_size={self.global_batch_size}"
            )
        return self


@register_method
class MoBY(Method):
    name = "moby"
    config_class = MoBYConfig

    def __init__(self, config: MoBYConfig) -> None:
        super().__init__(config)
        self.projector = mlp([self.feature_dim, config.projection_hidden_dim, config.projection_dim])
        self.predictor = mlp([config.projection_dim, config.prediction_hidden_dim, config.projection_dim])
        self.momentum_backbone = frozen_copy(self.backbone)
        self.momentum_projector = frozen_copy(self.projector)
        # slot 0: keys of view 1 (moby.py queue1), slot 1: keys of view 2 (queue2)
        self.queue = EmbeddingQueue(config.queue_size, config.projection_dim, slots=2, init="unit_normal", owner="moby")

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.check_views(views)
        p1, p2 = (self.predictor(self.projector(self.backbone(v))) for v in views)
        with torch.no_grad():
            k1, k2 = (F.normalize(self.momentum_projector(self.momentum_backbone(v)), dim=1) for v in views)
        queue1, queue2 = self.queue.snapshot()
        loss = moby(p1, p2, k1, k2, queue1, queue2, self.config.temperature)
        self.queue.enqueue(torch.stack([k1, k2]))
        return loss, {"loss": loss.detach()}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return ema_momentum(self.config.ema_momentum, step + 1, total_steps)
