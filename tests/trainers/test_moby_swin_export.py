"""A MoBY Swin-T backbone exports to timm's swin_tiny_patch4_window7_224 (strict) and starts a new run."""
from __future__ import annotations

import timm
import torch
from safetensors.torch import load_file

from evaluation.export import export_backbone
from trainers.backbones import build_backbone
from trainers.methods import build_method


def test_moby_swin_tiny_export_loads_strict_into_timm_and_back_through_init_from(tmp_path):
    method = build_method({"name": "moby", "backbone": {"name": "swin_tiny"}, "projection_hidden_dim": 16,
                           "projection_dim": 8, "prediction_hidden_dim": 16, "queue_size": 16}, seed=0)
    with torch.no_grad():  # weights unlike timm's initialisation, so a silently re-initialised key would show
        for p in method.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    backbone = method.eval_backbone.eval()
    info = export_backbone(backbone, tmp_path / "moby_swin_t.safetensors")
    assert (info.metadata["library"], info.metadata["architecture"]) == ("timm", "swin_tiny_patch4_window7_224")
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0).eval()
    model.load_state_dict(load_file(info.weights), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = backbone(x)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        restarted = build_backbone({"name": "swin_tiny", "init_from": str(info.weights)}).eval()
        torch.testing.assert_close(restarted(x), expected, atol=1e-5, rtol=1e-5)
