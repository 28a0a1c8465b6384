"""Backbones by name: a registry of builders, plus ``timm:<model_name>`` for any timm model.

Invariant: :func:`build_backbone` returns a :class:`~trainers.backbones.base.Backbone` (a
builder returning anything else is a TypeError) with `init_from` weights already loaded, so EMA
copies made from it start from the same weights. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from groundfloor.errors import UsageError
from trainers.backbones.base import Backbone, BackboneConfig
from trainers.backbones.convnets import ConvNetBackbone, ResNetBackbone
from trainers.backbones.swin import SwinBackbone
from trainers.backbones.timm_adapter import TIMM_PREFIX, TimmBackbone
from trainers.backbones.vit import MoCoV3ViTBackbone, ViTBackbone

__all__ = ["BACKBONES", "build_backbone", "is_known_backbone", "register_backbone", "unknown_backbone_message"]

BACKBONES: dict[str, Callable[[BackboneConfig], nn.Module]] = {}


def register_backbone(name: str, builder: Callable[[BackboneConfig], nn.Module]) -> None:
    """Make `name` buildable by :func:`build_backbone`."""
    BACKBONES[name] = builder


register_backbone("resnet18", lambda c: ResNetBackbone(18, c))
register_backbone("resnet50", lambda c: ResNetBackbone(50, c))
register_backbone("vit_small", lambda c: ViTBackbone("vit_small_patch16_224", c))
register_backbone(
    "vit_tiny",  # 2 blocks of width 64: a ViT small enough for CPU tests
    lambda c: ViTBackbone("vit_tiny_patch16_224", c, embed_dim=64, depth=2, num_heads=2, **({} if c.patch_size else {"patch_size": 4})),
)
register_backbone("vit_small_mocov3", MoCoV3ViTBackbone)  # MoCo v3's ViT-S/16 (12 heads, sin-cos positions)
register_backbone(
    "vit_tiny_mocov3",  # the same construction at CPU-test size
    lambda c: MoCoV3ViTBackbone(c.model_copy(update={"patch_size": c.patch_size or 4}), embed_dim=64, depth=2, num_heads=2,
                                model_name="vit_tiny_patch16_224"),
)
register_backbone("swin_tiny", lambda c: SwinBackbone("swin_tiny_patch4_window7_224", c))  # MoBY's Swin-T
register_backbone(
    "swin_nano",  # 2 stages of width 16, window 2: a Swin small enough for CPU tests (16 px images)
    lambda c: SwinBackbone("swin_tiny_patch4_window7_224", c, patch_size=2, embed_dim=16, depths=(1, 1),
                           num_heads=(1, 2), window_size=2),
)
register_backbone("convnet", ConvNetBackbone)


def is_known_backbone(name: str) -> bool:
    """A registered name, or ``timm:<model_name>`` (checked against timm when built)."""
    return name in BACKBONES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def unknown_backbone_message(name: str) -> str:
    return f"unknown backbone {name!r}; expected one of: {', '.join(sorted(BACKBONES))} or {TIMM_PREFIX}<timm model name>"


def build_backbone(config: BackboneConfig | dict | str) -> nn.Module:
    """Build the backbone `config` names; raise UsageError for unknown names."""
    if isinstance(config, str):
        config = BackboneConfig(name=config)
    elif isinstance(config, dict):
        config = BackboneConfig(**config)
    if not is_known_backbone(config.name):
        raise UsageError(unknown_backbone_message(config.name))
    if config.name.startswith(TIMM_PREFIX):
        backbone = TimmBackbone(config.name[len(TIMM_PREFIX):], config)
    else:
        backbone = BACKBONES[config.name](config)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone {config.name!r} builds a {type(backbone).__name__}, not a trainers.backbones.Backbone")
    if config.init_from:
        from trainers.init_weights import load_backbone_weights

        load_backbone_weights(backbone, config.init_from, strict=config.init_strict, backbone_name=config.name)
    return backbone
