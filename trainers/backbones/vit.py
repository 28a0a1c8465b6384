"""Vision Transformers on timm: the plain ViT and MoCo v3's ViT, both with a masked token forward.

Invariants: features are what `net(images)` returns (the pooled class token), and
:func:`vit_tokens` with no mask gives exactly those features plus the patch tokens, so masked
and patch methods (iBOT, SiT) see the same network as the plain ones. Every model is built by
`timm.create_model(name)`, so export can rebuild it by name. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from groundfloor.errors import UsageError
from trainers.backbones.base import Backbone, BackboneConfig, existing_parameters

__all__ = ["MoCoV3ViTBackbone", "ViTBackbone", "sincos_position_embedding", "vit_tokens"]


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


class TimmViTBase(Backbone):
    """What every ViT backbone here shares: a timm VisionTransformer in `self.net` whose pooled
    output is the class token, the token forward of the masked-patch methods, timm's no-decay list."""

    family = "vit"
    classifier_prefixes = ("head.",)
    token_output = True
    net: nn.Module

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def forward_tokens(self, images: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
        return vit_tokens(self.net, images, mask, mask_token)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that take no weight decay (timm's list, those that exist)."""
        return existing_parameters(self.net, self.net.no_weight_decay())


class ViTBackbone(TimmViTBase):
    """A timm VisionTransformer returning the class token (dynamic image size for multi-crop)."""

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



def sincos_position_embedding(grid_size: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos position embedding with a zero class-token row, (1, 1+h*w, dim).

    Line for line facebookresearch/moco-v3 vits.py `build_2d_sincos_position_embedding`,
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


class MoCoV3ViTBackbone(TimmViTBase):
    """MoCo v3's ViT (vits.py `VisionTransformerMoCo`) on timm's VisionTransformer.

    ViT-S/16: 384 wide, 12 blocks, 12 heads (DeiT-S/timm's vit_small has 6), fixed 2-D sin-cos
    position embedding (not learned), MoCo v3's initialisation (xavier-uniform with Q, K, V
    treated separately, cls token N(0, 1e-6)), and optionally a frozen patch embedding
    (`stop_grad_conv1`; the paper's ViT recipes use it).
    """

    def __init__(self, config: BackboneConfig, embed_dim: int = 384, depth: int = 12, num_heads: int = 12,
                 model_name: str = "vit_small_patch16_224") -> None:
        super().__init__()
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
        for name, m in net.named_modules():  # vits.py VisionTransformerMoCo.__init__'s initialisation
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

