"""SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives, no momentum encoder.

As facebookresearch/simsiam simsiam/builder.py: ResNet with `zero_init_residual=True` (line 24),
3-layer projector ending in BN(affine=False) (lines 28-36), 2-layer predictor (lines 39-42);
main_simsiam.py `--fix-pred-lr` (lines 194-195, 363): the predictor keeps the initial LR.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from trainers.heads import mlp
from trainers.losses import negative_cosine
from trainers.methods.base import Method, MethodConfig, register_method


class SimSiamConfig(MethodConfig):
    backbone_defaults = {"zero_init_residual": True}

    name: Literal["simsiam"] = "simsiam"
    projection_dim: int = Field(2048, ge=1)
    prediction_hidden_dim: int = Field(512, ge=1)
    projection_output_batch_norm: bool = Field(True, description="BN (no affine) on z, as in the paper")
    stop_gradient: bool = Field(True, description="False only to reproduce the paper's collapse")
    fix_predictor_lr: bool = Field(True, description="predictor at the peak LR throughout (--fix-pred-lr)")


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
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        sg = self.config.stop_gradient
        loss = 0.5 * (negative_cosine(p1, z2, stop_gradient=sg) + negative_cosine(p2, z1, stop_gradient=sg))
        return loss, {"loss": loss.detach()}
