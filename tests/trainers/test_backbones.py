"""Backbones by name: shapes, width multiplier, small-image stem, errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers.backbones import BACKBONES, BackboneConfig, build_backbone
from groundfloor.errors import UsageError


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


def _moco_v3_sincos_reference(h: int, w: int, embed_dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """facebookresearch/moco-v3 vits.py build_2d_sincos_position_embedding (lines 53-69), verbatim in torch."""
    grid_w = torch.arange(w, dtype=torch.float32)
    grid_h = torch.arange(h, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
    omega = 1. / (temperature**omega)
    out_w = torch.einsum('m,d->md', [grid_w.flatten(), omega])
    out_h = torch.einsum('m,d->md', [grid_h.flatten(), omega])
    pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None, :, :]
    pe_token = torch.zeros([1, 1, embed_dim], dtype=torch.float32)
    return torch.cat([pe_token, pos_emb], dim=1)


def test_moco_v3_vit_small_is_the_papers():
    """vits.py vit_small (115-120): patch 16, 384 wide, 12 blocks, 12 heads (DeiT-S has 6), mlp 4,
    qkv bias, LayerNorm eps 1e-6; fixed sin-cos positions; stop_grad_conv1 freezes the patch projection."""
    net = build_backbone(BackboneConfig(name="vit_small_mocov3", freeze_patch_embedding=True)).net
    assert len(net.blocks) == 12 and net.embed_dim == 384
    assert all(b.attn.num_heads == 12 for b in net.blocks)
    assert net.patch_embed.patch_size == (16, 16) and net.blocks[0].attn.qkv.bias is not None
    assert net.norm.eps == 1e-6 and net.blocks[0].mlp.fc1.out_features == 4 * 384
    assert not net.pos_embed.requires_grad
    torch.testing.assert_close(net.pos_embed.detach(), _moco_v3_sincos_reference(14, 14, 384), rtol=0, atol=0)
    assert not net.patch_embed.proj.weight.requires_grad and not net.patch_embed.proj.bias.requires_grad
    assert float(net.cls_token.detach().std()) < 1e-5  # nn.init.normal_(cls_token, std=1e-6)
    # timm's DeiT-S for contrast: what `vit_small` gives (DINO's architecture)
    deit = build_backbone(BackboneConfig(name="vit_small")).net
    assert deit.blocks[0].attn.num_heads == 6 and deit.pos_embed.requires_grad


def test_moco_v3_vit_trains_everything_but_the_frozen_parts():
    net = build_backbone(BackboneConfig(name="vit_tiny_mocov3", image_size=16, freeze_patch_embedding=True))
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"}
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    trainable = build_backbone(BackboneConfig(name="vit_tiny_mocov3", image_size=16))
    assert {n for n, p in trainable.named_parameters() if not p.requires_grad} == {"net.pos_embed"}



def test_moco_v3_vit_exports_as_a_timm_model(tmp_path):
    """Built with timm.create_model, the MoCo v3 ViT names its architecture: export rebuilds and verifies it."""
    from evaluation.export import export_backbone

    backbone = build_backbone(BackboneConfig(name="vit_tiny_mocov3", image_size=16)).eval()
    info = export_backbone(backbone, tmp_path / "vit.safetensors", verify=True)
    assert info.metadata["library"] == "timm" and "num_heads=2" in info.metadata["build_code"]


@pytest.mark.parametrize(
    "name,family,patch,tokens",
    [("resnet18", "resnet", None, False), ("convnet", "convnet", None, False), ("vit_tiny", "vit", 4, True),
     ("vit_tiny_mocov3", "vit", 4, True), ("swin_nano", "swin", 2, True), ("swin_tiny", "swin", 4, True)],
)
def test_backbones_declare_their_capabilities(name, family, patch, tokens):
    net = build_backbone(BackboneConfig(name=name, image_size=16 if name != "swin_tiny" else 224))
    assert (net.family, net.patch_size, net.token_output) == (family, patch, tokens)
    params = {f"{n}" for n, _ in net.named_parameters()}
    assert net.no_weight_decay() <= params
    if family == "swin":
        assert net.no_weight_decay() and all("relative_position_bias_table" in n for n in net.no_weight_decay())
    if family == "vit":
        assert "net.cls_token" in net.no_weight_decay()


def test_methods_choose_heads_by_family_not_by_name():
    """A ViT registered under any name gets MoCo v3's 3-layer ViT projector (it used to guess from 'vit*')."""
    from trainers.backbones import BACKBONES, register_backbone
    from trainers.methods import build_method

    register_backbone("tiny_transformer", BACKBONES["vit_tiny"])
    try:
        method = build_method({"name": "moco_v3", "backbone": {"name": "tiny_transformer", "image_size": 16},
                               "projection_hidden_dim": 8, "projection_dim": 4, "prediction_hidden_dim": 8})
    finally:
        del BACKBONES["tiny_transformer"]
    assert sum(isinstance(m, nn.Linear) for m in method.projector) == 3


def test_a_builder_must_return_a_backbone():
    from trainers.backbones import BACKBONES, register_backbone

    register_backbone("plain", lambda c: nn.Identity())
    try:
        with pytest.raises(TypeError, match="not a trainers.backbones.Backbone"):
            build_backbone("plain")
    finally:
        del BACKBONES["plain"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "convnet"])
def test_layer_norm_option_has_no_batch_statistics(name):
    """norm: layer (CPC v2) is GroupNorm(1, C): one sample's features never depend on the others'."""
    net = build_backbone({"name": name, "width": 0.25, "norm": "layer", "zero_init_residual": name != "convnet"})
    norms = [m for m in net.modules() if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in norms)
    if name == "resnet50":  # zero_init_residual still zeroes the last norm of each block
        assert all(float(b.bn3.weight.abs().sum()) == 0 for b in net.net.layer1)
    net.train()
    x = torch.randn(3, 3, 32, 32)
    y = x.clone()
    y[1:] *= 10
    torch.testing.assert_close(net(x)[0], net(y)[0])
    assert not [n for n, _ in net.named_buffers() if "running" in n]
