"""SimCLR (Chen et al. 2020): two views, one encoder, NT-Xent over all ranks' embeddings.

The head is the official one (google-research/simclr tf2/model.py `ProjectionHead`): 3 layers,
BN after every layer including the output, no output bias (see trainers.heads).
`multi_positive: true` makes every view of the same group in the global batch a positive of
every other (trainers.losses_multi_positive; the batch's group ids arrive as `samples.groups`);
with every group once in the global batch it is NT-Xent exactly. With `data.views_per_group`
G > 2 (multi_positive only) all G global views are encoded together and each is a positive of
the other views of its group.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field
from torch import Tensor

from trainers.heads import simclr_projection_head
from trainers.losses import nt_xent
from pipeline.spec import MAX_GLOBAL_VIEWS
from trainers.losses_multi_positive import multi_positive_nt_xent
from trainers.methods.base import Method, MethodConfig, SampleIds, register_method


class SimCLRConfig(MethodConfig):
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.5, gt=0, description="ImageNet recipe: 0.1 (tf2/run.py default; configs/full/simclr.yaml)")
    projection_hidden_dim: int | None = Field(None, ge=1, description="default: the backbone width (official)")
    projection_dim: int = Field(128, ge=1)
    projection_layers: int = Field(3, ge=1, description="tf2/run.py num_proj_layers default 3")
    multi_positive: bool = Field(False, description="every same-group view of the global batch is a positive "
                                 "(SupCon L_out over group ids); off: SimCLR's NT-Xent")

    def max_global_views(self) -> int:
        return MAX_GLOBAL_VIEWS if self.multi_positive else 2  # NT-Xent takes a pair


@register_method
class SimCLR(Method):
    name = "simclr"
    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig) -> None:
        super().__init__(config)
        self.projector = simclr_projection_head(self.feature_dim, config.projection_dim,
                                                config.projection_layers, config.projection_hidden_dim)
        self.needs_sample_ids = config.multi_positive  # the group ids come with the sample ids

    def training_step(self, views: list[Tensor], step: int, samples: Optional[SampleIds] = None
                      ) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        # All views through the encoder in one batch, as in SimCLR's code (BN sees G x B).
        z = self.projector(self.encode_multicrop(self.backbone, views))
        if self.config.multi_positive:
            groups = self.group_ids(samples, views[0].shape[0], z.device)
            loss = multi_positive_nt_xent(z, groups.repeat(len(views)), self.config.temperature)  # z = [view 1; ...]
        else:
            z1, z2 = z.chunk(2)
            loss = nt_xent(z1, z2, self.config.temperature)
        return loss, {"loss": loss.detach()}
