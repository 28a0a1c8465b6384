"""DINO (Caron et al. 2021): self-distillation with an EMA teacher, centering, multi-crop.

The teacher sees the global crops, the student all crops; the center is an EMA of the
teacher's mean output over ALL ranks (all-reduced); the teacher temperature warms up linearly.
As facebookresearch/dino main_dino.py: drop-path only on the student (lines 162-166; the
teacher copy has none, see `frozen_copy`), gradients clipped per parameter (`utils.clip_gradients`,
utils.py lines 132-141, called at main_dino.py line 332), the last layer's gradients cancelled for
the first epoch (`cancel_gradients_last_layer`, utils.py 144-149), and weight decay on every
weight that is not a bias or 1-D (`get_params_groups`, utils.py 632-643: pos_embed/cls_token decay).
With `data.views_per_group` G > 2 the teacher sees all G global views and the loss stays the
paper's pair average: every teacher view against every other crop (`trainers.losses.dino`).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from trainers.heads import DINOHead
from pipeline.spec import MAX_GLOBAL_VIEWS
from trainers.losses import dino, dino_center_update
from trainers.methods.base import Method, MethodConfig, frozen_copy, register_method
from trainers.schedules import ema_momentum, teacher_temperature


class DINOConfig(MethodConfig):
    supports_local_views = True
    backbone_defaults = {"drop_path_rate": 0.1}  # main_dino.py --drop_path_rate 0.1 (student; ViTs only)

    name: Literal["dino"] = "dino"
    out_dim: int = Field(65536, ge=1, description="prototypes of the last layer")
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    student_temperature: float = Field(0.1, gt=0)
    teacher_temperature: float = Field(0.04, gt=0)
    warmup_teacher_temperature: float = Field(0.04, gt=0)
    teacher_temperature_warmup_steps: int = Field(0, ge=0)
    center_momentum: float = Field(0.9, ge=0, le=1)
    ema_momentum: float = Field(0.996, ge=0, le=1, description="base of the cosine schedule to 1")
    freeze_last_layer_steps: int = Field(0, ge=0)

    def max_global_views(self) -> int:
        return MAX_GLOBAL_VIEWS  # every teacher (global) view against every other crop


@register_method
class DINO(Method):
    name = "dino"
    config_class = DINOConfig

    def __init__(self, config: DINOConfig) -> None:
        super().__init__(config)
        self.head = DINOHead(self.feature_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, config.out_dim))

    @property
    def eval_backbone(self) -> torch.nn.Module:
        return self.teacher_backbone

    def no_weight_decay_names(self) -> set[str]:
        return set()  # DINO decays ViT tokens too (utils.get_params_groups)

    @torch.no_grad()
    def clip_gradients(self, max_norm: float) -> None:
        """Each parameter's gradient to norm <= max_norm (DINO utils.clip_gradients).

        Written with foreach ops and a clamp instead of DINO's `if clip_coef < 1`: the same
        result without a host sync per parameter.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
        torch._foreach_mul_(grads, coefs)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        cfg = self.config
        n_global = cfg.num_global_views
        with torch.no_grad():
            teacher_out = self.teacher_head(self.encode_multicrop(self.teacher_backbone, views[:n_global])).chunk(n_global)
        features = self.encode_multicrop(self.backbone, views)
        student_out = self.head(features, freeze_last_layer=step < cfg.freeze_last_layer_steps).chunk(len(views))
        temp = teacher_temperature(cfg.warmup_teacher_temperature, cfg.teacher_temperature,
                                   cfg.teacher_temperature_warmup_steps, step)
        loss = dino(student_out, teacher_out, self.center, cfg.student_temperature, temp)
        self.center.copy_(dino_center_update(teacher_out, self.center, cfg.center_momentum))
        return loss, {"loss": loss.detach(), "teacher_temperature": temp}

    def momentum_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return ema_momentum(self.config.ema_momentum, step, total_steps)
