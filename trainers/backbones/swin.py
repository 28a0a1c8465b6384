"""The Swin Transformer backbone (MoBY's encoder) on timm.

Features are the pooled last stage; the model is built by `timm.create_model(name)` so export
can rebuild it by name. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

from torch import Tensor

from trainers.backbones.base import Backbone, BackboneConfig, existing_parameters

__all__ = ["SwinBackbone"]


class SwinBackbone(Backbone):
    """A timm SwinTransformer returning its pooled last stage (MoBY's encoder, Swin-T by default).

    With timm's `dynamic_img_size` other crop sizes work too (windows padded and masked by
    timm). No weight decay on the relative-position tables (timm's `no_weight_decay`, as Swin's
    `set_weight_decay` skip keywords).
    """

    family = "swin"
    classifier_prefixes = ("head.",)
    token_output = True

    def __init__(self, model_name: str, config: BackboneConfig, **overrides) -> None:
        super().__init__()
        import timm  # lazy: importing timm costs seconds in every spawned worker

        self.net = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=config.image_size,
                                     dynamic_img_size=True, drop_path_rate=config.drop_path_rate, **overrides)
        self.feature_dim = self.net.num_features
        self.patch_size = int(self.net.patch_embed.patch_size[0])

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def no_weight_decay(self) -> set[str]:
        return existing_parameters(self.net, self.net.no_weight_decay())
