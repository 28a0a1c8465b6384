"""MoCo v2 (He et al. 2020; Chen et al. 2020): query encoder, momentum key encoder, key queue.

The queue holds the keys of earlier global batches in all-gathered rank order, so it is
identical on every rank and equal to single-process training. BN is synchronised (our
SyncBatchNorm) instead of MoCo's shuffling BN.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainers.heads import mlp
from trainers.losses import info_nce
from trainers.methods.base import Method, MethodConfig, frozen_copy, register_method
from trainers.methods.queue import EmbeddingQueue, upgrade_legacy_queue_keys


class MoCoV2Config(MethodConfig):
    name: Literal["moco_v2"] = "moco_v2"
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, ge=1)
    projection_hidden_dim: int = Field(2048, ge=1)
    projection_dim: int = Field(128, ge=1)
    ema_momentum: float = Field(0.999, ge=0, le=1)

    @model_validator(mode="after")
    def _queue_divisible(self) -> "MoCoV2Config":
        if self.global_batch_size and self.queue_size % self.global_batch_size:
            raise ValueError(
                f"queue_size={self.queue_size} is not divisible by global_batch_size={self.global_batch_size}"
            )
        return self


@register_method
class MoCoV2(Method):
    name = "moco_v2"
    config_class = MoCoV2Config

    def __init__(self, config: MoCoV2Config) -> None:
        super().__init__(config)
        self.projector = mlp([self.feature_dim, config.projection_hidden_dim, config.projection_dim], batch_norm=False)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.queue = EmbeddingQueue(config.queue_size, config.projection_dim, init="unit_normal", owner="moco_v2")

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        q = self.projector(self.backbone(views[0]))
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_backbone(views[1])), dim=1)
        # clone: the queue is updated in place below, after the loss captured it (as MoCo does)
        loss = info_nce(q, k, self.queue.snapshot(), self.config.temperature)
        self.queue.enqueue(k)
        return loss, {"loss": loss.detach()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before EmbeddingQueue: its random-initialised queue counted as full
        upgrade_legacy_queue_keys(state_dict, prefix, queue=self.queue, pointer_key="queue_pointer", filled_key=None,
                                  filled_default=self.config.queue_size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        # The paper updates the key encoder at the start of the next forward; doing it after
        # the optimizer step gives the same weights (constant momentum, no schedule).
        return self.config.ema_momentum
