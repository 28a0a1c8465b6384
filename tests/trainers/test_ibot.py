"""iBOT's pieces the loss tests do not reach: the masked forward, masks per sample, SampleIds."""
from __future__ import annotations

import numpy as np
import torch

from pipeline import DataPosition, ViewBatch
from tests.trainers.tiny import TINY_CONFIGS, make_trainer
from trainers.backbones import BackboneConfig, build_backbone
from trainers.methods import SampleIds, build_method


def test_masked_forward_replaces_patch_embeddings_before_the_blocks():
    net = build_backbone(BackboneConfig(name="vit_tiny", image_size=16)).eval()
    token = torch.randn(1, net.feature_dim)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        features, tokens = net.forward_tokens(x)
        torch.testing.assert_close(features, net(x))  # the unmasked path is the plain forward
        none = torch.zeros(3, 4, 4, dtype=torch.bool)
        torch.testing.assert_close(net.forward_tokens(x, none, token)[1], tokens)
        every = torch.ones(3, 4, 4, dtype=torch.bool)
        masked_features, masked_tokens = net.forward_tokens(x, every, token)
    # every patch is the token (+ its position): the images no longer matter
    torch.testing.assert_close(masked_features[0], masked_features[1])
    torch.testing.assert_close(masked_tokens[0], masked_tokens[2])
    assert not torch.allclose(masked_tokens, tokens)


def test_masks_follow_the_samples_not_their_place_in_the_batch():
    method = build_method(TINY_CONFIGS["ibot"], seed=0)
    rows = np.array([5, 17, 2, 40], dtype=np.int64)
    a = method.masks(SampleIds(0, 1, rows), 4, (4, 4), torch.device("cpu"))
    b = method.masks(SampleIds(0, 1, rows[::-1].copy()), 4, (4, 4), torch.device("cpu"))
    for view_a, view_b in zip(a, b):
        assert torch.equal(view_a, view_b.flip(0))
    assert not torch.equal(a[0], a[1])  # the two global crops get their own masks
    assert all(m.dtype == torch.bool and m.shape == (4, 4, 4) for m in a)


def test_the_trainer_hands_each_micro_batch_its_sample_ids():
    trainer = make_trainer(TINY_CONFIGS["ibot"], gradient_accumulation_steps=2)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)] + [torch.randn(4, 3, 8, 8) for _ in range(2)]
    batch = ViewBatch(views=views, keys=list("abcd"), group_ids=list("abcd"), labels=None, label_vocabulary=[],
                      view_sources=torch.zeros(4, 4, dtype=torch.long), rows=torch.tensor([9, 3, 7, 1]),
                      epoch=2, batch=0, position=DataPosition(2, 1))
    parts = trainer._sample_ids(batch, 2)
    assert [p.rows.tolist() for p in parts] == [[9, 3], [7, 1]] and {(p.seed, p.epoch) for p in parts} == {(0, 2)}
    assert torch.isfinite(trainer.train_step(batch)["loss"])
    assert make_trainer(TINY_CONFIGS["dino"])._sample_ids(batch, 1) == []  # other methods get nothing new


def test_shared_head_uses_one_last_layer_for_cls_and_patches():
    method = build_method(TINY_CONFIGS["ibot"], seed=0)
    assert method.head.last_layer2 is None and method.head.last_layer_scale is None
    cls, patches = torch.randn(2, 64), torch.randn(2, 3, 64)
    with torch.no_grad():
        out_cls, out_patch = method.head.forward_tokens(cls, patches)
        torch.testing.assert_close(out_cls, method.head(cls))
        torch.testing.assert_close(out_patch[:, 1], method.head(patches[:, 1]))
    separate = build_method(TINY_CONFIGS["ibot_separate_heads"], seed=0)
    with torch.no_grad():
        assert separate.head.forward_tokens(cls, patches)[1].shape == (2, 3, 24)


def test_the_exported_backbone_is_the_teacher_vit(tmp_path):
    from evaluation.export import export_backbone

    method = build_method(TINY_CONFIGS["ibot"], seed=0)
    info = export_backbone(method.eval_backbone, tmp_path / "ibot.safetensors")  # verified rebuild
    assert method.eval_backbone is method.teacher_backbone and info.metadata["library"] == "timm"
    assert not any("mask_token" in k for k in method.eval_backbone.state_dict())
