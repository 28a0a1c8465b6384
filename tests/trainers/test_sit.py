"""SiT: the GMML corruptions against the official loop, their per-sample purity, the method's checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.params import uniforms
from tests.trainers.tiny import TINY_CONFIGS, make_trainer, make_views, view_batch
from trainers import losses
from trainers.backbones import build_backbone
from trainers.methods import SampleIds, build_method
from trainers.methods import gmml
from trainers.methods import rotation as rotation_module
from trainers.methods.gmml import GMMLSettings, apply_gmml, draw_gmml
from trainers.methods.rotation import draw_rotations, rotate
from trainers.methods.sit import _vit_tokens_with
from groundfloor.errors import UsageError


def official_corruption(clean, seed, epoch, ids, s: GMMLSettings):
    """datasets_utils.py GMML_drop_rand_patches / GMML_replace_list, one crop at a time with Python
    scalars and the official `while mask.sum() < n_drop_pix` loop, from the documented uniform slots."""
    views, batch = 2, len(ids)
    _, channels, height, width = clean.shape
    k, a = s.max_blocks, s.align
    per_view = 4 + 8 * k
    u = uniforms(seed ^ gmml._SALT, epoch, np.asarray(ids), views * per_view).reshape(batch, views, per_view)
    out, masks = clean.clone(), torch.zeros(views * batch, 1, height, width, dtype=torch.bool)
    for v in range(views):
        for b in range(batch):
            row, uu = v * batch + b, u[b, v]
            replace = uu[0] < s.replace_probability
            start = (b // s.group_size) * s.group_size
            length = min(start + s.group_size, batch) - start
            donor = v * batch + start + int(uu[1] * length)       # randint(0, n_imgs) within the group
            p = s.replace_fraction if replace else s.drop_fraction
            n_drop_pix = (min(0.5, p) + (uu[3] if replace else uu[2]) * (p - min(0.5, p))) * height * width
            rects = uu[4 + 4 * k:] if replace else uu[4:4 + 4 * k]
            mask = torch.zeros(height, width)
            i = 0
            while mask.sum() < n_drop_pix:
                ur, uc, uh, uw = rects[4 * i:4 * i + 4]
                r = (int(ur * (height - a)) // a) * a
                c = (int(uc * (width - a)) // a) * a
                h = round(min(a + int(uh * (int(height * s.max_block_fraction) - a)), height - r) / a) * a
                w = round(min(a + int(uw * (int(width * s.max_block_fraction) - a)), width - c) / a) * a
                out[row, :, r:r + h, c:c + w] = clean[donor, :, r:r + h, c:c + w] if replace else 0.0
                mask[r:r + h, c:c + w] = 1
                i += 1
            masks[row, 0] = mask.bool()
    return out, masks


@pytest.mark.parametrize("side,align,group", [(16, 1, 4), (28, 1, 64), (28, 4, 3), (20, 2, 1)])
def test_gmml_equals_the_official_loop(side, align, group):
    s = GMMLSettings(align=align, group_size=group)
    ids = np.array([7, 3, 100, 12, 5, 6, 40])
    clean = torch.randn(2 * len(ids), 3, side, side, generator=torch.Generator().manual_seed(0))
    corrupted, mask, short = apply_gmml(clean, draw_gmml(1, 2, ids, 2, side, side, s), s.max_blocks)
    expected, expected_mask = official_corruption(clean, 1, 2, ids, s)
    assert torch.equal(mask, expected_mask)
    assert torch.equal(corrupted, expected)
    assert float(short) == 0.0


def test_gmml_numbers_match_the_official_recipe():
    """Coverage >= 0.5 (drop, zeros) or >= 0.3 (replace, donor pixels), about half replaced,
    donors from the sample's own group."""
    s = GMMLSettings(group_size=16)
    ids = np.arange(1000, 1064)
    table = draw_gmml(0, 0, ids, 2, 28, 28, s)
    replace, donor = table[:, -2].astype(bool), table[:, -1]
    assert 0.35 < replace.mean() < 0.65
    rows = np.arange(128)
    assert np.array_equal(donor // 16, rows // 16)  # within the group (and the view: groups never straddle views)
    clean = torch.randn(128, 3, 28, 28) + 5.0        # no pixel is 0 before the corruption
    corrupted, mask, _ = apply_gmml(clean, table, s.max_blocks)
    coverage = mask.float().mean(dim=(1, 2, 3)).numpy()
    assert (coverage[~replace] >= 0.5).all() and (coverage[replace] >= 0.3).all()
    assert (coverage[replace] < coverage[~replace].min()).mean() > 0.5  # replace covers less
    dropped = (corrupted == 0).all(dim=1, keepdim=True)
    assert torch.equal(dropped[~torch.from_numpy(replace)], mask[~torch.from_numpy(replace)])
    assert torch.equal(corrupted[~mask.expand_as(corrupted)], clean[~mask.expand_as(clean)])


def test_gmml_draws_are_pure_functions_of_seed_epoch_and_sample_id():
    s = GMMLSettings(group_size=1)  # donor = self: every column is then per sample
    ids = np.array([5, 9, 2, 31])
    order = np.array([2, 0, 3, 1])
    table = draw_gmml(0, 3, ids, 2, 16, 16, s).reshape(2, 4, -1)
    shuffled = draw_gmml(0, 3, ids[order], 2, 16, 16, s).reshape(2, 4, -1)
    assert np.array_equal(shuffled[:, :, :-1], table[:, order, :-1])  # another batch order: the same draws
    assert not np.array_equal(draw_gmml(0, 4, ids, 2, 16, 16, s), table.reshape(8, -1))  # another epoch
    assert not np.array_equal(draw_gmml(1, 3, ids, 2, 16, 16, s), table.reshape(8, -1))  # another seed
    # a stream of its own: not the pipeline's crop uniforms of the same samples
    assert not np.allclose(uniforms(0, 3, ids, 4), uniforms(0 ^ gmml._SALT, 3, ids, 4))


def test_gmml_refuses_crops_too_small_for_the_alignment():
    with pytest.raises(UsageError, match=r"crops of 16x16 px are too small for drop_align=4"):
        draw_gmml(0, 0, np.arange(2), 2, 16, 16, GMMLSettings(align=4))


def test_vit_tokens_are_the_forward_and_its_patches():
    backbone = build_backbone({"name": "vit_tiny", "image_size": 16}).eval()
    x = torch.randn(3, 3, 16, 16)
    features, patches = backbone.forward_tokens(x)
    assert torch.equal(features, backbone(x)) and patches.shape == (3, 16, 64)
    with pytest.raises(UsageError, match="backbone family 'convnet' has no patch tokens"):
        build_backbone("convnet").forward_tokens(x)


def test_sit_step_reconstructs_pixels_and_logs_its_parts():
    method = build_method(TINY_CONFIGS["sit"], seed=0)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    loss, logs = method.training_step(views, 0, samples=SampleIds(0, 0, np.arange(4)))
    assert set(logs) == {"loss", "contrastive", "reconstruction", "corruption_short", "rotation", "rotation_accuracy"}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0 for v in logs.values())
    torch.testing.assert_close(loss.detach(), logs["contrastive"] + logs["reconstruction"] + logs["rotation"])
    _, patches = method.backbone.forward_tokens(views[0])
    assert method.reconstruction_head(patches, (4, 4)).shape == (4, 3, 16, 16)
    loss.backward()
    assert method.reconstruction_head.to_pixels.weight.grad.abs().sum() > 0
    assert method.rotation_head.weight.grad.abs().sum() > 0 and method.rotation_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    assert "rotation_token" in method.no_weight_decay_names()


def test_sit_without_rotation_is_the_official_step():
    """rotation_weight 0 (the full recipe's default): no rotation parameters, logs or loss term."""
    method = build_method({**TINY_CONFIGS["sit"], "rotation_weight": 0.0}, seed=0)
    assert not hasattr(method, "rotation_head") and not hasattr(method, "rotation_token")
    loss, logs = method.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], 0,
                                      samples=SampleIds(0, 0, np.arange(4)))
    assert set(logs) == {"loss", "contrastive", "reconstruction", "corruption_short"}
    torch.testing.assert_close(loss.detach(), logs["contrastive"] + logs["reconstruction"])
    assert method.no_weight_decay_names() == set()


def test_uncertainty_weighting_learns_v1s_task_weights():
    method = build_method({**TINY_CONFIGS["sit"], "uncertainty_weighting": True, "reconstruction_weight": 2.0}, seed=0)
    assert method.task_log_variances.tolist() == [1.0, 1.0, 1.0]  # v1: nn.Parameter(torch.tensor([1.0])) each
    loss, logs = method.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], 0,
                                      samples=SampleIds(0, 0, np.arange(4)))
    w = float(np.exp(-1.0))
    expected = w * (logs["contrastive"] + 0.5 * 2.0 * logs["reconstruction"] + logs["rotation"]) + 1.5
    torch.testing.assert_close(loss.detach(), expected)
    assert {"contrastive_learned_weight", "reconstruction_learned_weight", "rotation_learned_weight"} <= set(logs)
    torch.testing.assert_close(logs["rotation_learned_weight"], torch.tensor(w))
    loss.backward()
    assert (method.task_log_variances.grad != 0).all()
    groups = method.parameter_groups(0.05)
    plain = [p for g in groups if g["norm_or_bias"] for p in g["params"]]
    assert any(p is method.task_log_variances for p in plain) and any(p is method.rotation_token for p in plain)


def test_rotation_draws_are_pure_functions_of_seed_epoch_and_sample_id_apart_from_the_corruption():
    ids = np.array([5, 9, 2, 31, 77, 4])
    order = np.array([2, 0, 5, 3, 1, 4])
    turns = draw_rotations(0, 3, ids, 2).reshape(2, 6)
    assert np.array_equal(draw_rotations(0, 3, ids[order], 2).reshape(2, 6), turns[:, order])  # batch order
    assert np.array_equal(draw_rotations(0, 3, ids[:2], 2).reshape(2, 2), turns[:, :2])        # batch size
    many = np.arange(4000)
    base = draw_rotations(0, 0, many, 2)
    assert not np.array_equal(draw_rotations(0, 1, many, 2), base)  # another epoch
    assert not np.array_equal(draw_rotations(1, 0, many, 2), base)  # another seed
    assert np.abs(np.bincount(base, minlength=4) / len(base) - 0.25).max() < 0.02
    # independent of the corruption (and of the pipeline's crops): streams of their own, and the turn
    # says nothing about whether a crop is replaced
    assert rotation_module._SALT != gmml._SALT
    assert not np.allclose(uniforms(0 ^ rotation_module._SALT, 0, many, 2), uniforms(0 ^ gmml._SALT, 0, many, 2))
    assert not np.allclose(uniforms(0 ^ rotation_module._SALT, 0, many, 2), uniforms(0, 0, many, 2))
    replace = uniforms(0 ^ gmml._SALT, 0, many, 2 * (4 + 8 * GMMLSettings().max_blocks))[:, 0] < 0.5  # view 1
    for k in range(4):
        assert 0.45 < replace[base[:4000] == k].mean() < 0.55


def test_rotate_turns_each_crop_counter_clockwise_as_its_draw_says():
    images = torch.randn(9, 2, 5, 5)
    turns = np.array([3, 0, 1, 2, 1, 3, 0, 2, 2])
    turned, labels = rotate(images, turns)
    assert torch.equal(turned, torch.stack([torch.rot90(x, int(k), dims=(-2, -1)) for x, k in zip(images, turns)]))
    assert labels.tolist() == turns.tolist()
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 2] = 1.0  # top right; a quarter turn counter-clockwise (PIL ROTATE_90) takes it top left
    assert rotate(corner, np.array([1]))[0][0, 0, 0, 0] == 1.0
    with pytest.raises(UsageError, match=r"square crops only: got 4x6 px"):
        rotate(torch.zeros(2, 3, 4, 6), np.array([0, 1]))


def test_the_rotation_token_forward_is_timms_forward():
    backbone = build_backbone({"name": "vit_tiny", "image_size": 16}).eval()
    x = torch.randn(3, 3, 16, 16)
    features, patches, extra = _vit_tokens_with(backbone.net, x, None)
    expected = backbone.forward_tokens(x)
    assert extra is None and torch.equal(features, expected[0]) and torch.equal(patches, expected[1])
    d = backbone.feature_dim
    features, patches, extra = _vit_tokens_with(backbone.net, x, torch.randn(1, 1, d))
    assert features.shape == (3, d) and patches.shape == (3, 16, d) and extra.shape == (3, d)


def test_the_step_reconstructs_the_turned_clean_crop_and_the_teacher_sees_it_unturned():
    method = build_method(TINY_CONFIGS["sit"], seed=0)
    views = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    keys = SampleIds(0, 0, np.arange(4))
    _, logs = method.training_step(views, 0, samples=keys)
    clean = torch.cat(views)
    turns = draw_rotations(0, 0, keys.rows, 2)
    assert len(set(turns.tolist())) > 1
    with torch.no_grad():
        target, labels = rotate(clean, turns)
        corrupted, mask, _ = apply_gmml(target, draw_gmml(0, 0, keys.rows, 2, 16, 16, method.gmml), method.gmml.max_blocks)
        features, patches, token = _vit_tokens_with(method.backbone.net, corrupted, method.rotation_token)
        reconstruction = method.reconstruction_head(patches, (4, 4))
        torch.testing.assert_close(logs["reconstruction"], losses.sit_reconstruction(reconstruction, target, mask))
        assert not torch.allclose(logs["reconstruction"], losses.sit_reconstruction(reconstruction, clean, mask))
        torch.testing.assert_close(logs["rotation"], losses.sit_rotation(method.rotation_head(token), labels))
        # the teacher's input is the un-turned clean stack: its keys from `clean` give the logged contrast
        t1, t2 = method.teacher_head(method.teacher_backbone(clean)).chunk(2)
        s1, s2 = method.head(features).chunk(2)
        torch.testing.assert_close(logs["contrastive"], losses.moco_v3(s1, s2, t1, t2, 0.2))


def test_the_rotation_head_learns_on_tiny_data():
    """40 steps on 8 structured 16 px crops: the rotation loss falls well below chance (log 4)."""
    torch.manual_seed(0)
    method = build_method({**TINY_CONFIGS["sit"], "rotation_weight": 5.0}, seed=0)
    ramp = torch.linspace(0, 1, 16)
    base = torch.stack([ramp[:, None] * ramp[None, :]] * 3)  # brightest at the bottom right
    views = [base + 0.1 * torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(v)) for v in range(2)]
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    seen, accuracy = [], []
    for step in range(40):  # each step turns the crops afresh (the epoch changes the draws)
        loss, logs = method.training_step(views, step, samples=SampleIds(0, step, np.arange(8)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.append(float(logs["rotation"]))
        accuracy.append(float(logs["rotation_accuracy"]))
    # measured: first 3 ~1.42, last 5 ~0.37 (accuracy ~0.95; chance 0.25)
    assert np.mean(seen[:3]) > 1.2 and np.mean(seen[-5:]) < 0.4 * np.log(4), seen
    assert np.mean(accuracy[-5:]) > 0.7, accuracy


@pytest.mark.parametrize("config,call,match", [
    ({"backbone": {"name": "convnet"}}, None, r"sit needs a ViT backbone .*'convnet' is a convnet"),
    ({}, lambda m: m.training_step([torch.randn(2, 3, 16, 16)] * 2, 0), r"needs samples=SampleIds"),
    ({}, lambda m: m.training_step([torch.randn(2, 3, 18, 18)] * 2, 0, samples=SampleIds(0, 0, np.arange(2))),
     r"crops of 18x18 px are not a multiple of the patch size 4"),
    ({}, lambda m: m.training_step([torch.randn(2, 3, 16, 20)] * 2, 0, samples=SampleIds(0, 0, np.arange(2))),
     r"sit rotation turns square crops only: got 16x20 px \(use square crops or rotation_weight: 0\)"),
])
def test_sit_bad_use_is_one_clear_line(config, call, match):
    with pytest.raises(UsageError, match=match) as error:
        method = build_method({**TINY_CONFIGS["sit"], **config}, seed=0)
        call(method)
    assert "\n" not in str(error.value)


def test_the_trainer_hands_each_micro_batch_its_own_sample_ids():
    trainer = make_trainer(TINY_CONFIGS["sit"], 2, gradient_accumulation_steps=2)
    batch = view_batch(make_views(TINY_CONFIGS["sit"], 1)[0], 3)
    parts = trainer._sample_ids(batch, 2)
    assert [p.rows.tolist() for p in parts] == [c.tolist() for c in batch.rows.chunk(2)]
    assert all(p.seed == trainer.config.seed and p.epoch == batch.epoch for p in parts)
    assert torch.isfinite(trainer.train_step(batch)["loss"])
    assert make_trainer(TINY_CONFIGS["simclr"], 2)._sample_ids(batch, 1) == []  # other methods: nothing


def test_the_tiny_equivalence_batches_exercise_both_paths_and_foreign_donors():
    """Guards the 2-ranks == 1-rank test against a vacuous pass: its first batch (ids 0-7, 16 px,
    groups of 4) has dropped and replaced crops, and a donor that is another sample."""
    s = GMMLSettings(group_size=TINY_CONFIGS["sit"]["replace_group_size"])
    table = draw_gmml(0, 0, np.arange(8), 2, 16, 16, s)
    replace, donor = table[:, -2].astype(bool), table[:, -1]
    assert replace.any() and (~replace).any()
    assert (donor[replace] != np.arange(16)[replace]).any()
    assert set(draw_rotations(0, 0, np.arange(8), 2).tolist()) == {0, 1, 2, 3}  # and every quarter turn
