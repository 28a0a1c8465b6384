"""SimCLR (Chen et al. 2020): two views, one encoder, NT-Xent over all ranks' embeddings."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from trainers.heads import mlp
from trainers.losses import nt_xent
from trainers.methods.base import Method, MethodConfig, register_method


class SimCLRConfig(MethodConfig):
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.5, gt=0)
    projection_hidden_dim: int = Field(2048, ge=1)
    projection_dim: int = Field(128, ge=1)


@register_method
class SimCLR(Method):
    name = "simclr"
    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig) -> None:
        super().__init__(config)
        dims = [self.feature_dim, config.projection_hidden_dim, config.projection_dim]
        self.projector = mlp(dims)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        # Both views through the encoder in one batch, as in SimCLR's code (BN sees 2B).
        z = self.projector(self.encode_multicrop(self.backbone, views))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.config.temperature)
        return loss, {"loss": loss.detach()}
