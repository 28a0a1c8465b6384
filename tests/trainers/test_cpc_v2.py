"""CPC v2's own properties: the context network sees only rows above, patches never share
statistics (layer norm), the eval backbone pools the patch grid, bad grids fail in one line."""
from __future__ import annotations

import pytest
import torch

from tests.trainers.tiny import TINY_CONFIGS
from trainers.methods import build_method
from trainers.methods.cpc_v2 import ContextNetwork, PatchGridBackbone, patch_grid
from groundfloor.errors import UsageError


def test_patch_grid_cuts_overlapping_patches_row_major():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    patches = patch_grid(images, 8, 4)
    assert patches.shape == (2, 3, 3, 3, 8, 8)
    assert torch.equal(patches[1, 2, 1], images[1, :, 8:16, 4:12])  # row 2 starts at 8 px, column 1 at 4 px


@pytest.mark.parametrize("kernel,blocks", [(1, 1), (3, 2), (5, 3)])
def test_context_row_i_sees_no_latent_below_it(kernel, blocks):
    torch.manual_seed(0)
    net = ContextNetwork(dim=6, hidden=4, kernel=kernel, blocks=blocks, offsets=[1])
    latents = torch.randn(2, 5, 4, 6)
    context = net.blocks(latents.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    for row in range(5):
        changed = latents.clone()
        changed[:, row + 1 :] += torch.randn_like(changed[:, row + 1 :])
        if row > 0 and kernel > 1:  # not vacuous: the row just above does reach row `row`
            above = latents.clone()
            above[:, row - 1] += 1.0
            after_above = net.blocks(above.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            assert not torch.allclose(after_above[:, row], context[:, row])
        after = net.blocks(changed.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(after[:, : row + 1], context[:, : row + 1], atol=0, rtol=0)


def test_one_images_patch_latents_do_not_depend_on_other_images_in_train_mode():
    method = build_method(TINY_CONFIGS["cpc_v2"], seed=0).train()
    grid = PatchGridBackbone(method.backbone, 8, 4)
    images = torch.randn(3, 3, 16, 16)
    others = images.clone()
    others[1:] = torch.randn(2, 3, 16, 16) * 5
    torch.testing.assert_close(grid.grid(images)[0], grid.grid(others)[0], atol=1e-6, rtol=1e-6)
    assert not any("BatchNorm" in type(m).__name__ for m in method.modules())  # layer norm: nothing to sync


def test_eval_backbone_is_the_mean_patch_vector_of_the_whole_image():
    method = build_method(TINY_CONFIGS["cpc_v2"], seed=0).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = method.eval_backbone(images)
        patches = patch_grid(images, 8, 4).reshape(18, 3, 8, 8)
        expected = method.backbone(patches).view(2, 9, -1).mean(dim=1)
    assert features.shape == (2, method.feature_dim)
    torch.testing.assert_close(features, expected)
    assert {id(p) for p in method.eval_backbone.parameters()} == {id(p) for p in method.backbone.parameters()}


def test_training_step_uses_both_views_or_the_first():
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    plain = dict(TINY_CONFIGS["cpc_v2"], patch_color_drop_p=0.0, patch_flip_p=0.0)
    both = build_method(plain, seed=0)
    first = build_method(dict(plain, use_both_views=False), seed=0)
    loss_both, logs = both.training_step(views, 0)
    assert set(logs) == {"loss"} and not logs["loss"].requires_grad
    expected = (both.view_loss(both.eval_backbone.grid(views[0])) + both.view_loss(both.eval_backbone.grid(views[1]))) / 2
    torch.testing.assert_close(loss_both, expected)
    torch.testing.assert_close(first.training_step(views, 0)[0], first.view_loss(first.eval_backbone.grid(views[0])))


@pytest.mark.parametrize(
    "config,match",
    [
        ({"backbone": {"name": "convnet", "norm": "batch"}}, r"CPC v2 uses layer norm"),
        ({"min_offset": 3, "max_offset": 2}, r"min_offset=3 > max_offset=2"),
        ({"context_kernel": 2}, r"context_kernel=2 must be odd"),
    ],
)
def test_bad_configuration_raises_one_clear_line(config, match):
    with pytest.raises(UsageError, match=match) as error:
        build_method({"name": "cpc_v2", **config})
    assert "\n" not in str(error.value)


def test_a_grid_too_short_for_max_offset_is_a_usage_error():
    method = build_method(dict(TINY_CONFIGS["cpc_v2"], max_offset=3), seed=0)
    with pytest.raises(UsageError, match=r"the patch grid has 3 rows; max_offset=3 needs more"):
        method.training_step([torch.randn(2, 3, 16, 16)] * 2, 0)
    with pytest.raises(UsageError, match=r"smaller than patch_size=8"):
        method.eval_backbone(torch.randn(2, 3, 6, 6))


def test_colour_dropping_keeps_one_channel_and_flips_mirror_each_patch():
    method = build_method(dict(TINY_CONFIGS["cpc_v2"], patch_color_drop_p=1.0, patch_flip_p=1.0), seed=0)
    patches = patch_grid(torch.rand(2 * 4, 3, 16, 16) + 0.1, 8, 4)  # 2 views of 4 images, all pixels > 0
    out = method.augment_patches(patches, step=3, views=2)
    kept = (out != 0).flatten(4).any(dim=-1)  # (8, 3, 3, 3): which channels of each patch survive
    assert torch.equal(kept.sum(dim=-1), torch.ones(8, 3, 3, dtype=torch.long))
    channel = kept.float().argmax(dim=-1)
    assert len(channel.unique()) == 3  # the kept channel is drawn, not fixed
    for n, r, c in [(0, 0, 0), (5, 2, 1)]:
        k = int(channel[n, r, c])
        torch.testing.assert_close(out[n, r, c, k], patches[n, r, c, k].flip(-1))
    again = method.augment_patches(patches, step=3, views=2)
    assert torch.equal(out, again) and not torch.equal(out, method.augment_patches(patches, step=4, views=2))


def test_patch_augmentation_off_is_a_no_op_and_half_changes_some_patches():
    """(That rank r takes rows r*B..(r+1)*B of the global draw is checked end to end by the 2-rank test.)"""
    method = build_method(dict(TINY_CONFIGS["cpc_v2"], patch_color_drop_p=0.5, patch_flip_p=0.5), seed=0)
    patches = patch_grid(torch.rand(2 * 4, 3, 16, 16) + 0.1, 8, 4)
    none = build_method(dict(TINY_CONFIGS["cpc_v2"], patch_color_drop_p=0.0, patch_flip_p=0.0), seed=0)
    assert none.augment_patches(patches, 0, 2) is patches
    out = method.augment_patches(patches, 0, 2)
    changed = (out != patches).flatten(3).any(dim=-1)
    assert 0 < int(changed.sum()) < changed.numel()  # p = 0.5: some patches changed, some not


def test_export_refuses_the_patch_grid_rather_than_export_a_patch_network_as_an_image_one():
    from evaluation.export import export_recipe

    method = build_method(TINY_CONFIGS["cpc_v2"], seed=0)
    with pytest.raises(UsageError, match="cannot export a PatchGridBackbone backbone"):
        export_recipe(method.eval_backbone)


def test_a_train_config_whose_views_are_too_small_for_the_grid_fails_before_any_worker():
    from tests.trainers.tiny import train_config

    train_config(TINY_CONFIGS["cpc_v2"]).method_config()  # 16 px: 3 rows, max_offset 2: fine
    with pytest.raises(UsageError, match=r"16 px views give a grid of 3 rows of 8 px patches \(stride 4\); max_offset=3"):
        train_config(dict(TINY_CONFIGS["cpc_v2"], max_offset=3)).method_config()
    with pytest.raises(UsageError, match=r"16 px views give a grid of 0 rows of 20 px patches"):
        train_config(dict(TINY_CONFIGS["cpc_v2"], patch_size=20)).method_config()
