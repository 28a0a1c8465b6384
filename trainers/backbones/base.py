"""What every backbone is: its config and the capabilities it declares.

Invariant: a backbone maps (N, 3, H, W) images to (N, feature_dim) features and declares its
family, feature dim, token output, patch size and no-weight-decay names as fields, so methods,
the Trainer and export choose by capability, never by the class or registry name
(ARCHITECTURE.md section 3).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from groundfloor.errors import UsageError

__all__ = ["Backbone", "BackboneConfig", "existing_parameters"]


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
    its recipe by family; the Trainer uses channels_last for the conv families); token_output:
    the backbone returns patch tokens too (:meth:`forward_tokens`), which masked/patch methods
    need; patch_size: pixels per token (None for CNNs); :meth:`no_weight_decay`: parameter names
    (relative to the backbone) that take no weight decay besides biases and 1-D tensors.
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


def existing_parameters(net: nn.Module, names: set[str]) -> set[str]:
    """`net.`-prefixed `names` that are parameters of `net` (timm lists tokens a model may not have)."""
    params = {n for n, _ in net.named_parameters()}
    return {f"net.{n}" for n in names if n in params}


CONV_FAMILIES = ("resnet", "convnet")


def wants_channels_last(backbone: Backbone) -> bool:
    """channels_last helps convolutions (cuDNN's NHWC kernels on GPUs, oneDNN's on CPUs: the
    demo's ConvNet step, forward and backward, one thread, is 15-20% faster and its forward alone
    ~30%; ResNet-18 no slower); transformers gain nothing. The same on every device, so CI runs
    the layout GPUs train in. Training (the Trainer) and evaluation (`trainers.checkpoint.load_backbone`)
    both follow it."""
    return backbone.family in CONV_FAMILIES
