"""Convolutional backbones: torchvision ResNets of any width, and a small ConvNet for CPU tests.

Both end in global pooling (no classifier) and take `norm: batch | layer`, layer being
GroupNorm(1, C) so that no statistic crosses samples (CPC v2). See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from trainers.backbones.base import Backbone, BackboneConfig

__all__ = ["ConvNetBackbone", "ResNetBackbone", "norm_layer"]


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """The 2-D normalisation a conv backbone uses: BatchNorm2d, or layer norm over (C, H, W).

    Layer norm of a conv map is GroupNorm with one group (per-sample statistics over C, H, W and a
    per-channel affine): no statistic crosses samples, which CPC v2 needs (Hénaff et al. 2020,
    section 4.1: batch norm lets patches of one image leak into each other's features).
    """
    return nn.BatchNorm2d if kind == "batch" else (lambda channels: nn.GroupNorm(1, channels))


class _WidthResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage's channels scaled by `width`."""

    def __init__(self, block, layers, width: float, **kwargs) -> None:
        self._width = width
        self._stem_done = False
        super().__init__(block, layers, **kwargs)
        stem = self._scaled(64)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(stem)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _scaled(self, channels: int) -> int:
        return max(1, int(round(channels * self._width)))

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if not self._stem_done:  # first stage: its input is the (scaled) stem
            self.inplanes = self._scaled(64)
            self._stem_done = True
        return super()._make_layer(block, self._scaled(planes), blocks, stride, dilate)


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, optionally with a small-image stem."""

    family = "resnet"
    classifier_prefixes = ("fc.",)

    def __init__(self, depth: int, config: BackboneConfig) -> None:
        super().__init__()
        block, layers = {18: (tv_resnet.BasicBlock, [2, 2, 2, 2]), 50: (tv_resnet.Bottleneck, [3, 4, 6, 3])}[depth]
        net = _WidthResNet(block, layers, config.width, zero_init_residual=config.zero_init_residual,
                           norm_layer=norm_layer(config.norm))
        if config.small_images:
            # CIFAR-style stem (as solo-learn/SimCLR do for 32 px): keeps spatial detail.
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.feature_dim = net._scaled(512) * block.expansion
        net.fc = nn.Identity()  # torchvision sized it for width 1; the features are feature_dim
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class ConvNetBackbone(Backbone):
    """Four conv-BN-ReLU blocks and global pooling: fast enough for CPU tests and demos."""

    family = "convnet"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        widths = [max(1, int(round(c * config.width))) for c in (32, 64, 128, 256)]
        layers: list[nn.Module] = []
        in_channels = 3
        norm = norm_layer(config.norm)
        for i, out_channels in enumerate(widths):
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                norm(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.feature_dim = in_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)
