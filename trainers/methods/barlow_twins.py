"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of two views' embeddings the identity.

As facebookresearch/barlowtwins main.py `BarlowTwins`: torchvision ResNet-50 with
`zero_init_residual=True`, projector 8192-8192-8192 of bias-free Linear layers with BN + ReLU
between them (`--projector`), embeddings standardised over the global batch (its
`BatchNorm1d(affine=False)` under SyncBN; here inside :func:`trainers.losses.barlow_twins`),
loss sum_i (1 - C_ii)^2 + lambd sum_{i!=j} C_ij^2 with `--lambd 0.0051`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from trainers.heads import mlp
from trainers.losses import barlow_twins
from trainers.methods.base import Method, MethodConfig, register_method


class BarlowTwinsConfig(MethodConfig):
    backbone_defaults = {"zero_init_residual": True}  # main.py: resnet50(zero_init_residual=True)

    name: Literal["barlow_twins"] = "barlow_twins"
    projection_hidden_dim: int = Field(8192, ge=1)
    projection_dim: int = Field(8192, ge=1)
    projection_layers: int = Field(3, ge=1, description="Linear layers of the projector (--projector 8192-8192-8192)")
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal terms (--lambd)")


@register_method
class BarlowTwins(Method):
    name = "barlow_twins"
    config_class = BarlowTwinsConfig

    def __init__(self, config: BarlowTwinsConfig) -> None:
        super().__init__(config)
        dims = [self.feature_dim, *[config.projection_hidden_dim] * (config.projection_layers - 1), config.projection_dim]
        self.projector = mlp(dims, bias=False)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.check_views(views)
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        loss = barlow_twins(z1, z2, self.config.lambd)
        return loss, {"loss": loss.detach()}
