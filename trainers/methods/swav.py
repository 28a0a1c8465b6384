"""SwAV (Caron et al. 2020): swapped prediction of Sinkhorn codes over learnable prototypes.

Per step, as in the paper's loop: l2-normalise the prototypes; embed all crops (same-size
crops in one forward); codes from the global crops by distributed Sinkhorn, optionally over a
queue of earlier embeddings; prototypes get no gradient for the first `freeze_prototypes_steps`.
The queue holds all ranks' embeddings in gathered order (identical on every rank, complete in
rank 0's checkpoint); each rank feeds Sinkhorn its own 1/world share of it, so the union over
ranks is the whole queue, as in single-process training.
"""
from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainers import distributed
from trainers.heads import mlp
from trainers.losses import swav
from trainers.methods.base import Method, MethodConfig, register_method
from trainers.methods.queue import EmbeddingQueue, upgrade_legacy_queue_keys


class SwAVConfig(MethodConfig):
    supports_local_views = True

    name: Literal["swav"] = "swav"
    temperature: float = Field(0.1, gt=0)
    projection_hidden_dim: int = Field(2048, ge=1)
    projection_dim: int = Field(128, ge=1)
    num_prototypes: int = Field(3000, ge=1)
    sinkhorn_iterations: int = Field(3, ge=1)
    sinkhorn_epsilon: float = Field(0.05, gt=0)
    queue_size: int = Field(0, ge=0, description="embeddings per global crop kept for Sinkhorn; 0 = no queue")
    queue_start_step: int = Field(0, ge=0, description="step from which the queue is filled")
    freeze_prototypes_steps: int = Field(313, ge=0)

    @model_validator(mode="after")
    def _check_queue(self) -> "SwAVConfig":
        if self.global_batch_size and self.queue_size % self.global_batch_size:
            raise ValueError(
                f"queue_size={self.queue_size} is not divisible by global_batch_size={self.global_batch_size}"
            )
        if self.global_batch_size and self.queue_size == 0 and self.global_batch_size < self.num_prototypes:
            warnings.warn(
                f"swav: global_batch_size={self.global_batch_size} < num_prototypes={self.num_prototypes} and no queue: "
                "equipartition over so few samples gives poor codes; enable the queue (queue_size, e.g. 3840)",
                UserWarning,
                stacklevel=2,
            )
        return self


@register_method
class SwAV(Method):
    name = "swav"
    config_class = SwAVConfig

    def __init__(self, config: SwAVConfig) -> None:
        super().__init__(config)
        self.projector = mlp([self.feature_dim, config.projection_hidden_dim, config.projection_dim])
        self.prototypes = nn.Linear(config.projection_dim, config.num_prototypes, bias=False)
        # one queue per global crop, newest first (main_swav.py); empty (size 0) without a queue
        self.queue = (EmbeddingQueue(config.queue_size, config.projection_dim, slots=config.num_global_views,
                                     order="newest_first", owner="swav") if config.queue_size else None)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        cfg = self.config
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(self.projector(self.encode_multicrop(self.backbone, views)), dim=1)
        weight = self.prototypes.weight
        if step < cfg.freeze_prototypes_steps:
            weight = weight.detach()  # no gradient: the optimizer skips the prototypes
        scores = list((z @ weight.T).chunk(len(views)))
        embeddings = z.detach().chunk(len(views))[: cfg.num_global_views]
        queue_scores = self._queue_scores() if cfg.queue_size and step >= cfg.queue_start_step else None
        loss = swav(
            scores[: cfg.num_global_views],
            scores[cfg.num_global_views :],
            cfg.temperature,
            cfg.sinkhorn_iterations,
            cfg.sinkhorn_epsilon,
            queue_scores=queue_scores,
        )
        if cfg.queue_size and step >= cfg.queue_start_step:
            self.queue.enqueue(torch.stack(embeddings))
        logs = {"loss": loss.detach(), "queue_in_use": float(queue_scores is not None)}
        return loss, logs

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_legacy_queue_keys(state_dict, prefix, queue=self.queue, pointer_key=None, filled_key="queue_filled")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _queue_scores(self) -> list[Tensor] | None:
        """This rank's share of the queue, scored against the current prototypes, once full."""
        if self.queue is None or not self.queue.is_full:
            return None
        share = self.config.queue_size // distributed.world_size()
        start = distributed.rank() * share
        rows = self.queue.features[:, start : start + share]
        return list(rows @ self.prototypes.weight.T)
