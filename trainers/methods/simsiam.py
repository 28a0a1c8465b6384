"""SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives, no momentum encoder.

As facebookresearch/simsiam simsiam/builder.py: ResNet with `zero_init_residual=True` (line 24),
3-layer projector ending in BN(affine=False) (lines 28-36), 2-layer predictor (lines 39-42);
main_simsiam.py `--fix-pred-lr` (lines 194-195, 363): the predictor keeps the initial LR.
With `data.views_per_group` G > 2 the loss is its pair-averaged form: D(p_a, z_b) averaged over
the G (G - 1) ordered pairs of different views (G = 2: the paper's symmetric loss exactly).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from trainers.heads import mlp
from pipeline.spec import MAX_GLOBAL_VIEWS
from trainers.losses import mean_over_view_pairs, negative_cosine
from trainers.methods.base import Method, MethodConfig, register_method


class SimSiamConfig(MethodConfig):
    backbone_defaults = {"zero_init_residual": True}

    name: Literal["simsiam"] = "simsiam"
    projection_dim: int = Field(2048, ge=1)
    prediction_hidden_dim: int = Field(512, ge=1)
    projection_output_batch_norm: bool = Field(True, description="BN (no affine) on z, as in the paper")
    stop_gradient: bool = Field(True, description="False only to reproduce the paper's collapse")
    fix_predictor_lr: bool = Field(True, description="predictor at the peak LR throughout (--fix-pred-lr)")

    def max_global_views(self) -> int:
        return MAX_GLOBAL_VIEWS  # the pair-averaged loss takes every view


@register_method
class SimSiam(Method):
    name = "simsiam"
    config_class = SimSiamConfig

    def __init__(self, config: SimSiamConfig) -> None:
        super().__init__(config)
        d = config.projection_dim
        # 3 layers, BN on every output, the last without affine (the paper's code).
        self.projector = mlp([self.feature_dim, d, d, d], last_batch_norm=config.projection_output_batch_norm,
                             last_batch_norm_affine=False)
        self.predictor = mlp([d, config.prediction_hidden_dim, d])

    def fixed_lr_modules(self) -> list[nn.Module]:
        return [self.predictor] if self.config.fix_predictor_lr else []

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        projections = [self.projector(self.backbone(v)) for v in views]
        predictions = [self.predictor(z) for z in projections]
        sg = self.config.stop_gradient
        loss = mean_over_view_pairs(lambda p, z: negative_cosine(p, z, stop_gradient=sg), predictions, projections)
        return loss, {"loss": loss.detach()}
