"""Backbones by name: shapes, width multiplier, small-image stem, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.backbones import BACKBONES, BackboneConfig, build_backbone
from viewstream.errors import UsageError


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_maps_images_to_feature_dim(name):
    config = BackboneConfig(name=name, width=0.125, small_images=True, image_size=32)
    net = build_backbone(config).eval()
    for px in (32, 16):  # global and local crop sizes (ViTs interpolate positions)
        with torch.no_grad():
            assert net(torch.randn(2, 3, px, px)).shape == (2, net.feature_dim)


def test_resnet_width_multiplier_and_full_size():
    assert build_backbone(BackboneConfig(name="resnet18", width=0.5)).feature_dim == 256
    full = build_backbone("resnet50")
    assert full.feature_dim == 2048
    assert sum(p.numel() for p in full.parameters()) == 23_508_032  # torchvision resnet50 minus fc


def test_small_image_stem_keeps_resolution():
    net = build_backbone(BackboneConfig(name="resnet18", width=0.125, small_images=True)).net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    assert net.layer4(net.layer3(net.layer2(net.layer1(net.relu(net.bn1(net.conv1(x))))))).shape[-1] == 4


def test_vit_tiny_and_small_sizes():
    assert build_backbone(BackboneConfig(name="vit_small", image_size=32)).feature_dim == 384
    assert build_backbone(BackboneConfig(name="vit_tiny", image_size=32)).feature_dim == 64


def test_unknown_backbone_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backbone 'vgg'; expected one of: convnet, resnet18"):
        build_backbone("vgg")
