"""Any timm model of a supported family as a backbone: ``backbone: {name: "timm:<model_name>"}``.

Invariant: the family comes from the timm module of the model's entry point, and only families
whose features and tokens are known to fit are accepted (anything else is a one-line
UsageError). Capability fields come from timm's feature interface. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

from torch import Tensor

from groundfloor.errors import UsageError
from trainers.backbones.base import Backbone, BackboneConfig, existing_parameters
from trainers.backbones.vit import vit_tokens

__all__ = ["TIMM_FAMILIES", "TIMM_PREFIX", "TimmBackbone"]

TIMM_PREFIX = "timm:"

# timm module of the model's entry point -> our family. Others are refused: their features or
# tokens are not known to fit (e.g. hierarchical ViTs with their own token layout).
TIMM_FAMILIES: dict[str, str] = {
    "vision_transformer": "vit", "deit": "vit",  # ViT, DeiT (distilled: mean of the two tokens)
    "swin_transformer": "swin",
    "resnet": "convnet", "convnext": "convnet", "efficientnet": "convnet", "regnet": "convnet",
}


def _timm_family(model_name: str) -> str:
    """The family of timm model `model_name`, or a one-line UsageError."""
    import timm
    from timm.models import model_entrypoint

    if not timm.is_model(model_name):
        raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: timm {timm.__version__} has no model "
                         f"{model_name!r} (see timm.list_models())")
    module = model_entrypoint(model_name).__module__.rsplit(".", 1)[-1]
    if module not in TIMM_FAMILIES:
        kinds = ", ".join(sorted(TIMM_FAMILIES))
        raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: a timm {module!r} model; {TIMM_PREFIX} backbones "
                         f"support the timm families {kinds}")
    return TIMM_FAMILIES[module]


class TimmBackbone(Backbone):
    """Any timm model of a supported family, by name.

    ``timm.create_model(name, pretrained=False, num_classes=0)`` (the classifier removed: the
    model returns its pooled pre-logits features, `forward_head(pre_logits=True)`), plus
    `drop_path_rate`; ViTs and Swins also get `img_size=image_size`, `dynamic_img_size=True` (so
    multi-crop sizes work) and `patch_size` when set. The capability fields come from timm's
    feature interface: `num_features`, `patch_embed.patch_size`, `no_weight_decay()`. Families:
    ViT/DeiT ("vit": class/patch tokens, masked forward), Swin ("swin"), and the convnets
    resnet*/convnext*/efficientnet*/regnet* ("convnet"). Weights come from `init_from` (no
    download). Export rebuilds the model by name (evaluation/export.py).
    """

    classifier_prefixes = ("head.", "fc.", "classifier.")

    def __init__(self, model_name: str, config: BackboneConfig) -> None:
        super().__init__()
        import timm

        family = _timm_family(model_name)
        if config.width != 1.0 or config.small_images or config.zero_init_residual:
            raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: width/small_images/zero_init_residual apply to "
                             "resnet18/resnet50/convnet only; pick a timm variant instead")
        kwargs: dict = dict(pretrained=False, num_classes=0)
        if config.drop_path_rate:
            kwargs["drop_path_rate"] = config.drop_path_rate
        if family in ("vit", "swin"):
            kwargs.update(img_size=config.image_size, dynamic_img_size=True)
            if config.patch_size is not None:
                kwargs["patch_size"] = config.patch_size
        elif config.patch_size is not None or config.freeze_patch_embedding:
            raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: patch_size/freeze_patch_embedding apply to ViT/Swin only")
        try:
            self.net = timm.create_model(model_name, **kwargs)
        except TypeError as error:  # a model whose constructor lacks one of the arguments
            raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: timm cannot build it with {sorted(kwargs)}: {error}") from None
        net = self.net
        if not isinstance(getattr(net, "num_features", None), int) or not hasattr(net, "forward_head"):
            raise UsageError(f"backbone {TIMM_PREFIX}{model_name}: the model lacks timm's feature interface "
                             "(num_features, forward_head)")
        self.family = family  # type: ignore[misc]  # per instance: one class, several families
        self.feature_dim = net.num_features
        if family in ("vit", "swin"):
            self.patch_size = int(net.patch_embed.patch_size[0])
            self.token_output = True
            if config.freeze_patch_embedding:
                for p in net.patch_embed.parameters():
                    p.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        if self.family != "vit":
            return super().forward_tokens(images, mask, mask_token)
        return vit_tokens(self.net, images, mask, mask_token)

    def no_weight_decay(self) -> set[str]:
        names = self.net.no_weight_decay() if hasattr(self.net, "no_weight_decay") else set()
        return existing_parameters(self.net, set(names))
