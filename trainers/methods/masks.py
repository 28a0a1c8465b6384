"""BEiT-style blockwise patch masks as a pure function of (seed, epoch, sample row, view).

iBOT masks the student's global crops with BEiT's block masking (bytedance/ibot loader.py
`ImageFolderMask.__getitem__`, after microsoft/unilm beit/masking_generator.py): per crop a
prediction ratio is drawn (`get_pred_ratio`: one of the `pred_ratio` entries, each uniform in
mean +- var), then rectangles of area U(low, remaining) and log-uniform aspect ratio are added
until the masked count reaches ratio * h * w; each round tries 10 rectangles and takes the first
one that adds between 1 and `remaining` new patches, and masking stops early when a round adds
none. Official code draws with Python's `random` in the DataLoader workers (so masks depend on
the worker and the epoch order); here every draw is a counter-based uniform of
(seed, epoch, row, view, round), the same function that draws the augmentation parameters
(:func:`pipeline.params.uniforms`), so a sample's masks do not depend on the rank, the batch it
lands in or a resume.

Written in numpy by hand because the algorithm is BEiT's own (no library has it with
counter-based draws); it is vectorised over the batch: round r of every sample is done at once
(the rounds of one sample are sequential, samples are independent), with integral images for
the "already masked" counts. A batch of 64 crops of 14 x 14 costs well under a millisecond per
round on the host, about a dozen rounds.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pipeline.params import uniforms

__all__ = ["block_masks", "MASK_STREAM"]

MASK_STREAM = 0x1B07_3A5C  # separates the mask draws from the augmentation draws of the same rows
_ATTEMPTS = 10  # BEiT/iBOT: `for attempt in range(10)`
_MAX_ROUNDS = 10_000  # never reached: every round adds >= 1 patch or stops the sample


def _stream_seed(seed: int, view: int, round_: int) -> int:
    """A 64-bit seed for one (view, round) stream of `seed` (odd multipliers: distinct streams)."""
    return (seed * 0x9E3779B97F4A7C15 + (view + 1) * 0xD1B54A32D192ED03 + round_ * 0x8CB92BA72F3D8DD7
            + MASK_STREAM) & 0xFFFFFFFFFFFFFFFF


def block_masks(seed: int, epoch: int, rows: Sequence[int] | np.ndarray, view: int, grid: tuple[int, int],
                ratios: Sequence[tuple[float, float]] = ((0.0, 0.0), (0.1, 0.5)),
                aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> np.ndarray:
    """Block masks (len(rows), h, w) bool for crop `view` of samples `rows` in `epoch`.

    `ratios`: the (low, high) ranges of iBOT's `pred_ratio +- pred_ratio_var`; one is chosen
    uniformly per crop (`random.choice`), then a ratio uniform in it. The default is the ViT-S
    recipe `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`: half the crops unmasked, the others
    masked at a ratio in [0.1, 0.5].
    """
    rows = np.asarray(rows, dtype=np.int64)
    h, w = grid
    n = len(rows)
    mask = np.zeros((n, h, w), dtype=bool)
    if n == 0 or not ratios:
        return mask
    first = uniforms(_stream_seed(seed, view, 0), epoch, rows, 2)
    lows = np.array([r[0] for r in ratios], dtype=np.float64)
    highs = np.array([r[1] for r in ratios], dtype=np.float64)
    choice = np.minimum((first[:, 0] * len(ratios)).astype(np.int64), len(ratios) - 1)
    ratio = lows[choice] + first[:, 1] * (highs[choice] - lows[choice])
    high = ratio * h * w  # the masked-patch target of each crop (a float, as in iBOT)
    low = (min(h, w) // 3) ** 2
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    count = np.zeros(n, dtype=np.int64)
    active = count < high
    ii = np.arange(h)[None, None, :, None]
    jj = np.arange(w)[None, None, None, :]
    for round_ in range(1, _MAX_ROUNDS):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        u = uniforms(_stream_seed(seed, view, round_), epoch, rows[idx], 4 * _ATTEMPTS).reshape(len(idx), _ATTEMPTS, 4)
        remaining = (high[idx] - count[idx])[:, None]  # max_mask_patches
        target = low + u[..., 0] * (remaining - low)  # random.uniform(low, max_mask_patches)
        ar = np.exp(log_lo + u[..., 1] * (log_hi - log_lo))
        bh = np.round(np.sqrt(target * ar)).astype(np.int64)  # int(round(.)): both round half to even
        bw = np.round(np.sqrt(target / ar)).astype(np.int64)
        fits = (bw < w) & (bh < h) & (bh >= 0) & (bw >= 0)
        bh_c, bw_c = np.clip(bh, 0, h - 1), np.clip(bw, 0, w - 1)
        top = np.minimum((u[..., 2] * (h - bh_c + 1)).astype(np.int64), h - bh_c)  # random.randint(0, H - h)
        left = np.minimum((u[..., 3] * (w - bw_c + 1)).astype(np.int64), w - bw_c)
        integral = np.zeros((len(idx), h + 1, w + 1), dtype=np.int64)
        integral[:, 1:, 1:] = mask[idx].cumsum(1).cumsum(2)
        b = np.arange(len(idx))[:, None]
        covered = (integral[b, top + bh_c, left + bw_c] - integral[b, top, left + bw_c]
                   - integral[b, top + bh_c, left] + integral[b, top, left])
        new = bh_c * bw_c - covered
        ok = fits & (new > 0) & (new <= remaining)
        took = ok.any(axis=1)
        pick = np.argmax(ok, axis=1)[:, None]
        t, l_ = np.take_along_axis(top, pick, 1), np.take_along_axis(left, pick, 1)
        hh, ww = np.take_along_axis(bh_c, pick, 1), np.take_along_axis(bw_c, pick, 1)
        block = ((ii >= t[:, :, None, None]) & (ii < (t + hh)[:, :, None, None])
                 & (jj >= l_[:, :, None, None]) & (jj < (l_ + ww)[:, :, None, None]))[:, 0]
        mask[idx] |= block & took[:, None, None]
        count[idx] = mask[idx].reshape(len(idx), -1).sum(1)
        active[idx] = took & (count[idx] < high[idx])
    return mask
