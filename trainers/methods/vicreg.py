"""VICReg (Bardes et al. 2022): invariance + variance + covariance regularisation of two views.

As facebookresearch/vicreg main_vicreg.py `VICReg`: ResNet-50 with `zero_init_residual=True`,
an 8192-8192-8192 expander (`--mlp`; Linear + BN + ReLU, last Linear without bias; the hidden
Linear layers' biases, which a following BN cancels, are left out here), loss
25 * MSE + 25 * variance hinge + 1 * covariance (`--sim-coeff`, `--std-coeff`, `--cov-coeff`)
over the GLOBAL batch (:func:`trainers.losses.vicreg`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from trainers.heads import mlp
from trainers.losses import vicreg
from trainers.methods.base import Method, MethodConfig, register_method


class VICRegConfig(MethodConfig):
    backbone_defaults = {"zero_init_residual": True}  # main_vicreg.py: resnet50(zero_init_residual=True)

    name: Literal["vicreg"] = "vicreg"
    projection_hidden_dim: int = Field(8192, ge=1)
    projection_dim: int = Field(8192, ge=1)
    projection_layers: int = Field(3, ge=1, description="Linear layers of the expander (--mlp 8192-8192-8192)")
    sim_coeff: float = Field(25.0, ge=0)
    std_coeff: float = Field(25.0, ge=0)
    cov_coeff: float = Field(1.0, ge=0)


@register_method
class VICReg(Method):
    name = "vicreg"
    config_class = VICRegConfig

    def __init__(self, config: VICRegConfig) -> None:
        super().__init__(config)
        dims = [self.feature_dim, *[config.projection_hidden_dim] * (config.projection_layers - 1), config.projection_dim]
        self.projector = mlp(dims, bias=False)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.check_views(views)
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        cfg = self.config
        loss = vicreg(z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff)
        return loss, {"loss": loss.detach()}
