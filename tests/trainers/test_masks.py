"""iBOT's block masks: BEiT's algorithm exactly, and a pure function of (seed, epoch, row, crop)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.params import uniforms
from trainers.methods.masks import _stream_seed, block_masks

RATIOS = [(0.0, 0.0), (0.1, 0.5)]
ASPECT = (0.3, 1 / 0.3)


def official_reference(seed, epoch, row, view, H, W, ratios=RATIOS, aspect=ASPECT):
    """bytedance/ibot loader.py ImageFolderMask.__getitem__ (pred_shape 'block') line by line,
    one sample at a time, with random.uniform/randint/choice replaced by the same counter-based
    uniforms the library uses (round r, attempt a: columns 4a..4a+3)."""
    first = uniforms(_stream_seed(seed, view, 0), epoch, np.array([row]), 2)[0]
    lo, hi = ratios[min(int(first[0] * len(ratios)), len(ratios) - 1)]  # random.choice
    high = (lo + first[1] * (hi - lo)) * H * W  # get_pred_ratio() * H * W
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    mask = np.zeros((H, W), dtype=bool)
    mask_count, round_ = 0, 0
    while mask_count < high:
        round_ += 1
        u = uniforms(_stream_seed(seed, view, round_), epoch, np.array([row]), 40)[0].reshape(10, 4)
        max_mask_patches = high - mask_count
        delta = 0
        for attempt in range(10):
            low = (min(H, W) // 3) ** 2
            target_area = low + (max_mask_patches - low) * u[attempt, 0]
            aspect_ratio = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[attempt, 1])
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < W and h < H:
                top = int(u[attempt, 2] * (H - h + 1))
                left = int(u[attempt, 3] * (W - w + 1))
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask


@pytest.mark.parametrize("grid", [(14, 14), (7, 7), (4, 4), (6, 9)])
@pytest.mark.parametrize("ratios", [RATIOS, [(0.3, 0.3)], [(0.1, 0.5)]])
def test_vectorised_masks_equal_the_official_loop(grid, ratios):
    rows = np.arange(40) * 7919 + 3
    got = block_masks(11, 2, rows, 1, grid, ratios, ASPECT)
    for b, row in enumerate(rows):
        np.testing.assert_array_equal(got[b], official_reference(11, 2, int(row), 1, *grid, ratios=ratios))


def test_masks_are_a_function_of_seed_epoch_row_and_crop_only():
    rows = np.arange(100, 132)
    full = block_masks(0, 3, rows, 0, (14, 14))
    perm = np.random.default_rng(0).permutation(len(rows))
    np.testing.assert_array_equal(block_masks(0, 3, rows[perm], 0, (14, 14)), full[perm])  # batch order
    np.testing.assert_array_equal(block_masks(0, 3, rows[8:20], 0, (14, 14)), full[8:20])   # batch split
    for other in (block_masks(1, 3, rows, 0, (14, 14)), block_masks(0, 4, rows, 0, (14, 14)),
                  block_masks(0, 3, rows, 1, (14, 14))):
        assert not np.array_equal(other, full)  # seed, epoch and crop each change the draw


def test_half_the_crops_are_masked_at_a_ratio_up_to_one_half():
    masks = block_masks(0, 0, np.arange(2000), 0, (14, 14))
    ratio = masks.reshape(len(masks), -1).mean(1)
    assert 0.45 < float((ratio > 0).mean()) < 0.55  # mask probability 0.5 (pred_ratio 0 or 0.3 +- 0.2)
    masked = ratio[ratio > 0]
    assert masked.max() <= 0.5 + 1 / 196 and np.median(masked) > 0.2
    # blocks, not scattered patches: most masked patches have a masked 4-neighbour
    m = masks[ratio > 0]
    neighbour = np.zeros_like(m)
    neighbour[:, 1:] |= m[:, :-1]
    neighbour[:, :-1] |= m[:, 1:]
    neighbour[:, :, 1:] |= m[:, :, :-1]
    neighbour[:, :, :-1] |= m[:, :, 1:]
    assert (m & neighbour).sum() / m.sum() > 0.95


def test_no_rows_no_masks():
    assert block_masks(0, 0, np.array([], dtype=np.int64), 0, (4, 4)).shape == (0, 4, 4)
