"""`timm:<model_name>` backbones: every supported family builds, trains one step and exports; names
timm does not know or whose interface does not fit are one-line UsageErrors."""
from __future__ import annotations

import pytest
import torch

from evaluation.export import export_backbone, load_exported
from tests.trainers.tiny import make_trainer, view_batch
from trainers.backbones import BackboneConfig, build_backbone
from trainers.methods import parse_method_config
from groundfloor.errors import UsageError

# (timm name, family, feature dim, patch size, crop px): timm's own test models where it has one
FAMILIES = [
    ("test_resnet", "convnet", 96, None, 32),
    ("test_convnext", "convnet", 64, None, 32),
    ("test_efficientnet", "convnet", 256, None, 32),
    ("regnetx_002", "convnet", 368, None, 32),
    ("test_vit", "vit", 64, 16, 32),
    ("deit_tiny_distilled_patch16_224", "vit", 192, 16, 32),  # DeiT: 2 prefix tokens
    ("swin_tiny_patch4_window7_224", "swin", 768, 4, 32),
]


@pytest.mark.parametrize("model,family,dim,patch,px", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_model_by_name_declares_its_capabilities(model, family, dim, patch, px):
    net = build_backbone(BackboneConfig(name=f"timm:{model}", image_size=px))
    assert (net.family, net.feature_dim, net.patch_size, net.token_output) == (family, dim, patch, family != "convnet")
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, px, px)).shape == (2, dim)
    if family == "vit":
        assert {"net.pos_embed", "net.cls_token"} <= net.no_weight_decay()
        features, tokens = net.forward_tokens(torch.randn(2, 3, px, px))
        assert features.shape == (2, dim) and tokens.shape == (2, (px // patch) ** 2, dim)
    elif family == "swin":
        assert any("relative_position_bias_table" in n for n in net.no_weight_decay())
    else:
        with pytest.raises(UsageError, match="no patch tokens"):
            net.forward_tokens(torch.randn(2, 3, px, px))


@pytest.mark.parametrize("model,family,dim,patch,px", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_model_trains_one_step_through_the_trainer(model, family, dim, patch, px):
    backbone = {"name": f"timm:{model}", "image_size": px}
    if family == "vit":  # the masked method, 4 x 4 patches of the 32 px crops
        method = dict(name="ibot", backbone={**backbone, "patch_size": 8}, out_dim=32, patch_out_dim=32,
                      hidden_dim=32, bottleneck_dim=16)
    else:
        method = dict(name="simclr", backbone=backbone, projection_hidden_dim=32, projection_dim=16)
    trainer = make_trainer(method, total_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.method.backbone.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    for step in range(2):  # the warm-up's LR is 0 at step 0
        logs = trainer.train_step(view_batch([torch.randn(8, 3, px, px, generator=g) for _ in range(2)], step))
        assert torch.isfinite(logs["loss"])
    moved = [n for n, p in trainer.method.backbone.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(moved) > 0.5 * len(before)  # not all: timm zero-initialises the last BN of residual blocks


@pytest.mark.parametrize("model,family,dim,patch,px", FAMILIES[:5], ids=[f[0] for f in FAMILIES[:5]])
def test_timm_model_exports_as_a_timm_model(model, family, dim, patch, px, tmp_path):
    net = build_backbone(BackboneConfig(name=f"timm:{model}", image_size=px)).eval()
    info = export_backbone(net, tmp_path / "b.safetensors")  # verified: rebuilt model, same features
    assert info.metadata["library"] == "timm" and info.metadata["architecture"] == model
    x = torch.randn(2, 3, px, px)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(info.weights)(x), net(x))


def test_unknown_timm_name_is_a_one_line_usage_error():
    with pytest.raises(UsageError, match=r"^backbone timm:resnet_nonexistent: timm \S+ has no model 'resnet_nonexistent'"):
        build_backbone("timm:resnet_nonexistent")


def test_timm_family_without_a_fitting_interface_is_refused():
    with pytest.raises(UsageError, match="a timm 'mobilevit' model; timm: backbones support the timm families convnext"):
        build_backbone("timm:mobilevit_xxs")


def test_timm_options_that_do_not_apply_are_refused():
    with pytest.raises(UsageError, match="width/small_images"):
        build_backbone(BackboneConfig(name="timm:test_resnet", small_images=True))
    with pytest.raises(UsageError, match="patch_size/freeze_patch_embedding apply to ViT/Swin only"):
        build_backbone(BackboneConfig(name="timm:test_resnet", patch_size=8))


def test_ibot_refuses_a_convnet_and_configs_accept_timm_names():
    assert parse_method_config({"name": "simclr", "backbone": {"name": "timm:test_resnet"}}).backbone.name == "timm:test_resnet"
    with pytest.raises(UsageError, match="ibot needs a ViT backbone"):
        make_trainer(dict(name="ibot", backbone={"name": "timm:test_resnet"}, out_dim=8, patch_out_dim=8))
