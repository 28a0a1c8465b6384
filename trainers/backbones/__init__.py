"""Feature extractors by name: torchvision ResNets, timm ViTs and Swins, any timm model, a small ConvNet.

Every backbone maps (N, 3, H, W) images to (N, feature_dim) features and declares what it can
do as fields of :class:`Backbone` (`base`), so methods and export choose by capability, never
by name; heads are the methods' business. One module per family (`convnets`, `vit`, `swin`,
`timm_adapter`); `registry` maps names to builders. See ARCHITECTURE.md section 3.
"""
from trainers.backbones.base import Backbone, BackboneConfig
from trainers.backbones.registry import (
    BACKBONES,
    build_backbone,
    is_known_backbone,
    register_backbone,
    unknown_backbone_message,
)
from trainers.backbones.timm_adapter import TIMM_PREFIX, TimmBackbone

__all__ = ["Backbone", "BackboneConfig", "BACKBONES", "TIMM_PREFIX", "TimmBackbone", "build_backbone",
           "is_known_backbone", "register_backbone", "unknown_backbone_message"]
