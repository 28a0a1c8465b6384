"""MoCo v3 (Chen et al. 2021): symmetric contrastive loss against momentum keys of all ranks.

Heads as facebookresearch/moco-v3 moco/builder.py builds them: `_build_mlp` (lines 36-52) has
bias-free linear layers, BN + ReLU between them and a BN(affine=False) after the last one; the
ResNet projector has 2 layers (line 105), the ViT projector 3 (line 118); the ResNet predictor
has NO last BN (`_build_mlp(2, dim, mlp_dim, dim, False)`, line 109), the ViT predictor keeps it
(line 122). ResNets are built with `zero_init_residual=True` (main_moco.py line 186).
`multi_positive: true` makes every key of a query's group in the global batch a positive
(trainers.losses_multi_positive; group ids from `samples.groups`); with every group once in the
global batch it is the paper's loss exactly. With `data.views_per_group` G > 2 (multi_positive
only) each view's queries meet the keys of the other G - 1 views
(`multi_positive_moco_v3_views`).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from trainers.heads import mlp
from trainers.losses import moco_v3
from pipeline.spec import MAX_GLOBAL_VIEWS
from trainers.losses_multi_positive import multi_positive_moco_v3_views
from trainers.methods.base import Method, MethodConfig, SampleIds, frozen_copy, register_method
from trainers.schedules import ema_momentum


class MoCoV3Config(MethodConfig):
    backbone_defaults = {"zero_init_residual": True}

    name: Literal["moco_v3"] = "moco_v3"
    temperature: float = Field(1.0, gt=0, description="main_moco.py --moco-t default 1.0 (ResNet); ViT recipes 0.2")
    projection_hidden_dim: int = Field(4096, ge=1)
    projection_dim: int = Field(256, ge=1)
    projection_layers: int | None = Field(None, ge=2, le=3, description="default: 3 for ViT, 2 for ResNet")
    predictor_last_batch_norm: bool | None = Field(None, description="default: True for ViT, False for ResNet")
    prediction_hidden_dim: int = Field(4096, ge=1)
    ema_momentum: float = Field(0.99, ge=0, le=1, description="base of the cosine schedule to 1")
    multi_positive: bool = Field(False, description="every same-group key of the global batch is a positive "
                                 "(SupCon L_out over group ids); off: MoCo v3's loss")

    def max_global_views(self) -> int:
        return MAX_GLOBAL_VIEWS if self.multi_positive else 2  # the paper's loss takes a pair


def _moco_v3_mlp(dims: list[int], last_bn: bool = True) -> nn.Sequential:
    """moco/builder.py `_build_mlp`: Linear(bias=False), BN, ReLU ...; BN(affine=False) last if `last_bn`."""
    return mlp(dims, last_batch_norm=last_bn, last_batch_norm_affine=False, bias=False)


@register_method
class MoCoV3(Method):
    name = "moco_v3"
    config_class = MoCoV3Config

    def __init__(self, config: MoCoV3Config) -> None:
        super().__init__(config)
        vit = self.backbone.family == "vit"
        layers = config.projection_layers or (3 if vit else 2)
        hidden = [config.projection_hidden_dim] * (layers - 1)
        self.projector = _moco_v3_mlp([self.feature_dim, *hidden, config.projection_dim])
        last_bn = vit if config.predictor_last_batch_norm is None else config.predictor_last_batch_norm
        self.predictor = _moco_v3_mlp([config.projection_dim, config.prediction_hidden_dim, config.projection_dim], last_bn)
        self.momentum_backbone = frozen_copy(self.backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.needs_sample_ids = config.multi_positive  # the group ids come with the sample ids

    def training_step(self, views: list[Tensor], step: int, samples: Optional[SampleIds] = None
                      ) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        queries = [self.predictor(self.projector(self.backbone(v))) for v in views]
        with torch.no_grad():
            keys = [self.momentum_projector(self.momentum_backbone(v)) for v in views]
        if self.config.multi_positive:
            groups = self.group_ids(samples, views[0].shape[0], queries[0].device)
            loss = multi_positive_moco_v3_views(queries, keys, groups, self.config.temperature)
        else:
            loss = moco_v3(*queries, *keys, self.config.temperature)
        return loss, {"loss": loss.detach()}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        # The paper updates at the start of step s+1 with m(s+1); same weights, done here.
        return ema_momentum(self.config.ema_momentum, step + 1, total_steps)
