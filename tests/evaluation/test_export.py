"""Exported backbones load strict=True into the library model and give the same features."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from trainers.backbones import BackboneConfig, build_backbone
from evaluation.export import export_backbone, load_exported, read_export_metadata
from groundfloor.errors import UsageError


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).flatten(1)


def _randomise_bn_stats(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so a lost buffer would change the features."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(1 + torch.rand(m.num_features, generator=g))


def test_resnet18_loads_strict_into_torchvision_resnet18(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet18"))
    _randomise_bn_stats(backbone)
    info = export_backbone(backbone, tmp_path / "r18.safetensors", metadata={"method": "simclr"})

    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    missing_unexpected = model.load_state_dict(load_file(info.weights), strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_features(model, x), _features(backbone, x), atol=1e-5, rtol=1e-5)
    meta = read_export_metadata(info.weights)
    assert meta["architecture"] == "resnet18" and meta["library"] == "torchvision" and meta["method"] == "simclr"
    assert json.loads(info.sidecar.read_text())["load_code"] == meta["load_code"]


def test_small_stem_quarter_width_resnet_rebuilds_from_its_metadata_without_viewstream(tmp_path):
    torch.manual_seed(1)
    backbone = build_backbone(BackboneConfig(name="resnet18", width=0.25, small_images=True))
    _randomise_bn_stats(backbone)
    info = export_backbone(backbone, tmp_path / "small.safetensors")
    assert "small-image stem" in " ".join(info.metadata["notes"])
    x = torch.randn(3, 3, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    torch.save(_features(backbone, x), tmp_path / "expected.pt")

    # A fresh interpreter that runs only the stored load code (isolated: no cwd on sys.path).
    script = (f"{info.metadata['load_code']}\n"
              "import sys, torch\n"
              "assert not any(m.split('.')[0] in ('viewstream', 'trainers', 'pipeline', 'sharding') for m in sys.modules)\n"
              "x = torch.load('x.pt', weights_only=True)\n"
              "with torch.no_grad(): y = model(x)\n"
              "torch.testing.assert_close(y, torch.load('expected.pt', weights_only=True), atol=1e-5, rtol=1e-5)\n"
              "print('OK', tuple(y.shape))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "OK (3, 128)"


def test_timm_vit_loads_strict_into_timm_model(tmp_path):
    import timm

    torch.manual_seed(2)
    backbone = build_backbone(BackboneConfig(name="vit_tiny", image_size=32))
    info = export_backbone(backbone, tmp_path / "vit.safetensors")
    assert info.metadata["library"] == "timm"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=4,
                              embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True)
    model.load_state_dict(load_file(info.weights), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_features(model, x), _features(backbone, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_features(load_exported(info.weights), x), _features(backbone, x))


def test_convnet_exports_as_plain_sequential_and_bad_paths_are_usage_errors(tmp_path):
    backbone = build_backbone(BackboneConfig(name="convnet", width=0.5))
    _randomise_bn_stats(backbone)
    info = export_backbone(backbone, tmp_path / "c.safetensors")
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(_features(load_exported(info.weights), x), _features(backbone, x))
    with pytest.raises(UsageError, match="must end in .safetensors"):
        export_backbone(backbone, tmp_path / "c.pt")
    with pytest.raises(UsageError, match="cannot export a Sequential containing GELU"):
        export_backbone(torch.nn.Sequential(torch.nn.GELU()), tmp_path / "g.safetensors")
