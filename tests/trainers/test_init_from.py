"""backbone.init_from: a local torchvision / timm / safetensors / training checkpoint gives the source's features."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from trainers.backbones import build_backbone
from trainers.methods import build_method
from groundfloor.errors import UsageError


def _features_close(ours, expected) -> None:
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_resnet18_from_a_torchvision_state_dict_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=1000).eval()
    for m in source.modules():  # non-trivial BN statistics, so that buffers must be copied too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    ours = build_backbone({"name": "resnet18", "init_from": str(path)}).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(source.avgpool(source.layer4(source.layer3(source.layer2(source.layer1(
            source.maxpool(source.relu(source.bn1(source.conv1(images))))))))), 1)
        _features_close(ours(images), expected)


def test_timm_vit_from_a_safetensors_file_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=64,
                               depth=2, num_heads=2, num_classes=7, dynamic_img_size=True).eval()
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    ours = build_backbone({"name": "vit_tiny", "image_size": 16, "init_from": str(path)}).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _features_close(ours(images), source.forward_head(source.forward_features(images), pre_logits=True))


def test_timm_swin_from_a_wrapped_state_dict_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, patch_size=2,
                               embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=2, num_classes=5).eval()
    path = tmp_path / "swin.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    ours = build_backbone({"name": "swin_nano", "image_size": 16, "init_from": str(path)}).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _features_close(ours(images), source.forward_head(source.forward_features(images), pre_logits=True))


def test_a_method_starts_from_our_training_checkpoint_and_its_copies_too(tmp_path):
    config = {"name": "byol", "backbone": {"name": "convnet", "width": 0.25}, "projection_hidden_dim": 8,
              "projection_dim": 4, "prediction_hidden_dim": 8}
    trained = build_method(config, seed=3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"method": trained.state_dict(), "step": 10}, path)
    started = build_method({**config, "backbone": {**config["backbone"], "init_from": str(path)}}, seed=0)
    for (name, a), b in zip(trained.backbone.state_dict().items(), started.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(started.target_backbone.net[0].weight, trained.backbone.net[0].weight)  # EMA copy starts there too


def test_a_wrong_file_is_one_line_naming_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(UsageError) as error:
        build_backbone({"name": "resnet18", "init_from": str(path)})
    message = str(error.value)
    assert "\n" not in message and "does not fit resnet18" in message
    assert "unexpected keys [layer1.0.bn3.bias" in message and "layer1.0.conv1.weight file (64, 64, 1, 1) model (64, 64, 3, 3)" in message
    assert "init_strict: false" in message


def test_missing_keys_are_named_and_the_opt_out_loads_the_rest(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"missing keys \[layer4\.1\.bn2\.weight\]"):
        build_backbone({"name": "resnet18", "init_from": str(path)})
    with pytest.warns(UserWarning, match=r"missing keys \[layer4\.1\.bn2\.weight\]"):
        ours = build_backbone({"name": "resnet18", "init_from": str(path), "init_strict": False})
    assert torch.equal(ours.net.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_foreign_files_are_one_line(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save({"foo": torch.zeros(3)}, path)
        match = "no key matches"
    else:
        path.write_bytes(content)
        match = "not a readable checkpoint"
    with pytest.raises(UsageError, match=match) as error:
        build_backbone({"name": "resnet18", "init_from": str(path)})
    assert "\n" not in str(error.value)


def test_a_missing_path_is_named():
    with pytest.raises(UsageError, match="no such file"):
        build_backbone({"name": "convnet", "init_from": "/nonexistent/weights.pth"})
