"""Feature extractors by name: torchvision ResNets, timm ViTs, any timm model, a small ConvNet.

Every backbone maps (N, 3, H, W) images to (N, feature_dim) features and declares what it can
do as fields of :class:`Backbone` (family, feature dim, token output, patch size, no-weight-decay
names), so methods and export choose by capability, never by guessing from the name; heads are
the methods' business. A registry maps names to builders; ``timm:<model_name>`` builds any timm
model of a supported family by name (:class:`TimmBackbone`).
"""
from __future__ import annotations

from typing import Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from groundfloor.errors import UsageError

__all__ = ["Backbone", "BackboneConfig", "BACKBONES", "TIMM_PREFIX", "TimmBackbone", "build_backbone",
           "is_known_backbone", "register_backbone"]


class BackboneConfig(BaseModel):
    """Which feature extractor to build, and its size options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "resnet18"
    width: float = Field(1.0, gt=0, description="channel multiplier (ResNets, ConvNet)")
    small_images: bool = Field(False, description="3x3 stride-1 stem, no max-pool: for 28-64 px inputs")
    zero_init_residual: bool = False
    norm: Literal["batch", "layer"] = Field(
        "batch", description="ResNet/ConvNet normalisation: batch, or layer (GroupNorm(1, C): per-sample, as CPC v2)")
    image_size: int = Field(224, ge=8, description="ViT: size of the global crops (positions interpolate)")
    patch_size: int | None = Field(None, ge=1, description="ViT: patch size (default per model)")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth of the online network (teachers have none)")
    freeze_patch_embedding: bool = Field(False, description="MoCo v3 ViT: no gradient to the patch projection (--stop-grad-conv1)")
    init_from: str | None = Field(
        None, description="local torchvision/timm/safetensors/export/training checkpoint to start from (no download)"
    )
    init_strict: bool = Field(True, description="init_from: every key must fit (false: load those that fit, warn)")


class Backbone(nn.Module):
    """What every backbone declares besides `forward(images) -> (N, feature_dim)`.

    family: "resnet", "vit", "swin", "convnet" (MoCo v3 builds ViT heads for "vit"; export picks
    its recipe by family); token_output: the backbone returns patch tokens too
    (:meth:`forward_tokens`), which masked/patch methods need; patch_size: pixels per token (None
    for CNNs); :meth:`no_weight_decay`: parameter names (relative to the backbone) that take no
    weight decay besides biases and 1-D tensors.
    """

    family: ClassVar[str]
    classifier_prefixes: ClassVar[tuple[str, ...]] = ()  # the source model's head, dropped by init_from
    feature_dim: int
    token_output: bool = False
    patch_size: int | None = None

    def no_weight_decay(self) -> set[str]:
        return set()

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        """(features (N, feature_dim), patch tokens (N, h*w, feature_dim)) of one forward pass.

        `mask` (N, h, w) bool with `mask_token` (1, feature_dim): masked patch embeddings are
        replaced by the token before the transformer blocks (iBOT's masked image modelling).
        Only token-output backbones (ViTs) implement it.
        """
        raise UsageError(f"backbone family {self.family!r} has no patch tokens; masked/patch methods need a ViT")


def vit_tokens(net: nn.Module, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """timm VisionTransformer.forward_features with masked patch embeddings, split into
    (pooled features as `net(images)` returns them, patch tokens without the prefix tokens).

    Mirrors timm's forward_features step by step (patch_embed, _pos_embed, patch_drop,
    norm_pre, blocks, norm) with the mask applied between patch_embed and _pos_embed, where
    iBOT's `prepare_tokens` applies it (models/vision_transformer.py `mask_model`), so masked
    tokens still get their position embedding. `net.forward_head(pre_logits=True)` pools as
    `net(images)` does, so the unmasked features equal the plain forward's.
    """
    x = net.patch_embed(images)  # (N, h, w, D) with dynamic_img_size, else (N, h*w, D)
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask_token")
        m = mask if x.dim() == 4 else mask.flatten(1)
        if m.shape != x.shape[:-1]:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the patch grid {tuple(x.shape[:-1])}")
        x = torch.where(m.unsqueeze(-1), mask_token.to(x.dtype), x)
    x = net._pos_embed(x)
    x = net.patch_drop(x)
    x = net.norm_pre(x)
    if getattr(net, "grad_checkpointing", False) and not torch.jit.is_scripting():
        from timm.models._manipulate import checkpoint_seq

        x = checkpoint_seq(net.blocks, x)
    else:
        x = net.blocks(x)
    x = net.norm(x)
    return net.forward_head(x, pre_logits=True), x[:, net.num_prefix_tokens:]


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """The 2-D normalisation a conv backbone uses: BatchNorm2d, or layer norm over (C, H, W).

    Layer norm of a conv map is GroupNorm with one group (per-sample statistics over C, H, W and a
    per-channel affine): no statistic crosses samples, which CPC v2 needs (Hénaff et al. 2020,
    section 4.1: batch norm lets patches of one image leak into each other's features).
    """
    return nn.BatchNorm2d if kind == "batch" else (lambda channels: nn.GroupNorm(1, channels))


def _existing(net: nn.Module, names: set[str]) -> set[str]:
    """`net.`-prefixed `names` that are parameters of `net` (timm lists tokens a model may not have)."""
    params = {n for n, _ in net.named_parameters()}
    return {f"net.{n}" for n in names if n in params}


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


class ViTBackbone(Backbone):
    """A timm VisionTransformer returning the class token (dynamic image size for multi-crop)."""

    family = "vit"
    classifier_prefixes = ("head.",)
    token_output = True

    def __init__(self, model_name: str, config: BackboneConfig, **overrides) -> None:
        super().__init__()
        import timm  # lazy: importing timm costs seconds in every spawned worker

        kwargs = dict(
            pretrained=False,
            num_classes=0,
            img_size=config.image_size,
            dynamic_img_size=True,
            drop_path_rate=config.drop_path_rate,
            **overrides,
        )
        if config.patch_size is not None:
            kwargs["patch_size"] = config.patch_size
        self.net = timm.create_model(model_name, **kwargs)
        if config.freeze_patch_embedding:
            for p in self.net.patch_embed.parameters():
                p.requires_grad_(False)
        self.feature_dim = self.net.num_features
        self.patch_size = int(self.net.patch_embed.patch_size[0])

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        return vit_tokens(self.net, images, mask, mask_token)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that take no weight decay (timm's list, those that exist)."""
        return _existing(self.net, self.net.no_weight_decay())


class SwinBackbone(Backbone):
    """A timm SwinTransformer returning its pooled last stage (MoBY's encoder, Swin-T by default).

    Built by `timm.create_model(model_name)` so that export can rebuild it by name; with timm's
    `dynamic_img_size` other crop sizes work too (windows padded and masked by timm).
    No weight decay on the relative-position tables (timm's `no_weight_decay`, as Swin's
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
        return _existing(self.net, self.net.no_weight_decay())


def sincos_position_embedding(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos position embedding with a zero class-token row, (1, 1+h*w, dim).

    Line for line facebookresearch/moco-v3 vits.py `build_2d_sincos_position_embedding` (53-69),
    including its meshgrid order (ij: the first grid axis runs over w).
    """
    if dim % 4:
        raise UsageError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    h, w = grid_size
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    pos = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), pos], dim=1)


class MoCoV3ViTBackbone(Backbone):
    """MoCo v3's ViT (vits.py `VisionTransformerMoCo`) on timm's VisionTransformer.

    ViT-S/16: 384 wide, 12 blocks, 12 heads (vits.py line 117; DeiT-S/timm's vit_small has 6),
    fixed 2-D sin-cos position embedding (not learned), MoCo v3's initialisation (lines 32-47:
    xavier-uniform with Q, K, V treated separately, cls token N(0, 1e-6)), and optionally a frozen
    patch embedding (`stop_grad_conv1`, lines 49-51; the paper's ViT recipes use it).
    """

    family = "vit"
    classifier_prefixes = ("head.",)
    token_output = True

    def __init__(self, config: BackboneConfig, embed_dim: int = 384, depth: int = 12, num_heads: int = 12,
                 model_name: str = "vit_small_patch16_224") -> None:
        super().__init__()
        import math

        import timm  # lazy: importing timm costs seconds in every spawned worker

        patch = config.patch_size or 16
        # create_model (not the class): the model names its architecture, so `export` can rebuild it
        self.net = timm.create_model(
            model_name, pretrained=False, img_size=config.image_size, patch_size=patch, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=4, qkv_bias=True, num_classes=0,
            dynamic_img_size=True, drop_path_rate=config.drop_path_rate,
        )  # timm's ViT norm layer is LayerNorm(eps=1e-6), as vits.py
        net = self.net
        net.pos_embed = nn.Parameter(sincos_position_embedding(net.patch_embed.grid_size, embed_dim),
                                     requires_grad=False)
        for name, m in net.named_modules():
            if isinstance(m, nn.Linear):
                if "qkv" in name:
                    val = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -val, val)
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(net.cls_token, std=1e-6)
        val = math.sqrt(6.0 / float(3 * patch * patch + embed_dim))
        nn.init.uniform_(net.patch_embed.proj.weight, -val, val)
        nn.init.zeros_(net.patch_embed.proj.bias)
        if config.freeze_patch_embedding:
            net.patch_embed.proj.weight.requires_grad_(False)
            net.patch_embed.proj.bias.requires_grad_(False)
        self.feature_dim = net.num_features
        self.patch_size = patch

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        return vit_tokens(self.net, images, mask, mask_token)

    def no_weight_decay(self) -> set[str]:
        return _existing(self.net, self.net.no_weight_decay())


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
    """Any timm model of a supported family, by name: ``backbone: {name: "timm:<model_name>"}``.

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
        return _existing(self.net, set(names))


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
