"""The heads layer by layer against the official code that defines them."""
from __future__ import annotations

import pytest
from torch import nn

from tests.trainers.tiny import CONVNET
from trainers.heads import simclr_projection_head
from trainers.methods import build_method


def layers(module: nn.Module) -> list[tuple]:
    """(kind, in, out, bias, affine, bn-shift trainable) per layer: what the official code pins down."""
    out = []
    for m in module:
        if isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append(("bn", m.num_features, m.affine, m.affine and m.bias.requires_grad))
        else:
            out.append((type(m).__name__,))
    return out


def test_simclr_head_is_tf2_projection_head():
    """google-research/simclr tf2/model.py ProjectionHead (lines 169-186), LinearLayer (119-154):
    3 layers; hidden dense layers input-wide, no dense bias (use_bias and not use_bn), BN with
    center=True and scale, ReLU; output dense 128 without bias, BN center=False (no beta), no ReLU."""
    head = simclr_projection_head(2048, 128)
    assert layers(head) == [
        ("linear", 2048, 2048, False), ("bn", 2048, True, True), ("ReLU",),
        ("linear", 2048, 2048, False), ("bn", 2048, True, True), ("ReLU",),
        ("linear", 2048, 128, False), ("bn", 128, True, False),
    ]
    assert float(head[-1].bias.abs().sum()) == 0.0 and head[-1].weight.requires_grad  # scale, no shift


def test_simclr_method_uses_the_head_and_leaves_the_frozen_shift_out_of_the_optimizer():
    method = build_method({"name": "simclr", "backbone": CONVNET, "projection_dim": 16}, seed=0)
    width = method.feature_dim
    assert layers(method.projector)[-2:] == [("linear", width, 16, False), ("bn", 16, True, False)]
    assert len([m for m in method.projector if isinstance(m, nn.Linear)]) == 3
    optimized = {id(p) for g in method.parameter_groups(1e-6) for p in g["params"]}
    assert id(method.projector[-1].bias) not in optimized and id(method.projector[-1].weight) in optimized


@pytest.mark.parametrize("backbone,predictor_last_bn,projector_layers", [
    (CONVNET, False, 2),                                      # MoCo_ResNet: builder.py lines 105, 109
    ({"name": "vit_tiny_mocov3", "image_size": 16}, True, 3),  # MoCo_ViT: builder.py lines 118, 122
])
def test_moco_v3_heads_are_build_mlp(backbone, predictor_last_bn, projector_layers):
    """facebookresearch/moco-v3 moco/builder.py _build_mlp (36-52): Linear(bias=False), BN, ReLU
    between layers, BatchNorm1d(affine=False) after the last one iff last_bn."""
    method = build_method({"name": "moco_v3", "backbone": backbone, "projection_hidden_dim": 32,
                           "projection_dim": 16, "prediction_hidden_dim": 24}, seed=0)
    d = method.feature_dim
    hidden = [("linear", d, 32, False), ("bn", 32, True, True), ("ReLU",)]
    if projector_layers == 3:
        hidden += [("linear", 32, 32, False), ("bn", 32, True, True), ("ReLU",)]
    assert layers(method.projector) == hidden + [("linear", 32, 16, False), ("bn", 16, False, False)]
    predictor = [("linear", 16, 24, False), ("bn", 24, True, True), ("ReLU",), ("linear", 24, 16, False)]
    assert layers(method.predictor) == predictor + ([("bn", 16, False, False)] if predictor_last_bn else [])
    assert [x[:3] for x in layers(method.momentum_projector)] == [x[:3] for x in layers(method.projector)]  # frozen copy


def test_moco_v3_resnet_defaults_are_main_moco_py():
    method = build_method({"name": "moco_v3", "backbone": {"name": "resnet18", "width": 0.125}}, seed=0)
    assert method.config.temperature == 1.0  # --moco-t default 1.0
    assert method.config.backbone.zero_init_residual  # main_moco.py line 186
    blocks = [m for m in method.backbone.modules() if type(m).__name__ == "BasicBlock"]
    assert blocks and all(float(b.bn2.weight.detach().abs().sum()) == 0.0 for b in blocks)
