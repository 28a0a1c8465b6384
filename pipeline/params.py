"""Augmentation parameters drawn in numpy, one generator per (seed, epoch, sample).

All randomness of a view lives here, not in DALI: the DALI graph only applies the numbers it is
fed. That makes a batch a pure function of (seed, epoch, sample, view): resuming mid-epoch,
running on CPU or GPU, or changing the batch size gives the same views, and tests can check the
drawn numbers directly. One `rng.random` call per sample draws everything (fast, fixed layout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.spec import Augmentation, ViewSpec

# Columns of the per-view parameter row.
PARAM_COLUMNS = (
    "photo", "slot", "y0", "x0", "y1", "x1", "area", "flip", "jitter", "brightness", "contrast",
    "saturation", "hue_deg", "gray", "blur", "sigma", "window", "solarize",
)
COL = {name: i for i, name in enumerate(PARAM_COLUMNS)}
_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 windows before its fallback
_U_AREA, _U_RATIO = 0, _ATTEMPTS
_U = 2 * _ATTEMPTS  # first column after the crop attempts
_U_I, _U_J, _U_FLIP, _U_JIT, _U_B, _U_C, _U_S, _U_H, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOL, _U_SLOT = range(_U, _U + 13)
_U_WIDTH = _U + 13


def blur_window(sigma: float) -> int:
    """The Gaussian window for `sigma`: radius ceil(3 sigma), as DALI and PIL would use.

    Deriving it from sigma (instead of SimCLR's fixed 10%-of-size kernel) is what keeps blur
    cheap: most draws need 3-9 taps, not 23.
    """
    return 2 * max(1, math.ceil(3 * sigma)) + 1


def crop_window(u_area: np.ndarray, u_ratio: np.ndarray, u_i: float, u_j: float,
                width: int, height: int, aug: Augmentation) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params from given uniforms: (top, left, h, w)."""
    area = width * height
    log_lo, log_hi = math.log(aug.ratio[0]), math.log(aug.ratio[1])
    targets = area * (aug.scale[0] + u_area * (aug.scale[1] - aug.scale[0]))
    ratios = np.exp(log_lo + u_ratio * (log_hi - log_lo))
    ws = np.round(np.sqrt(targets * ratios)).astype(np.int64)
    hs = np.round(np.sqrt(targets / ratios)).astype(np.int64)
    ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    if ok.any():
        k = int(np.argmax(ok))
        w, h = int(ws[k]), int(hs[k])
        top = min(int(u_i * (height - h + 1)), height - h)
        left = min(int(u_j * (width - w + 1)), width - w)
        return top, left, h, w
    # Fallback (torchvision): the whole image, clamped to the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < aug.ratio[0]:
        w, h = width, int(round(width / aug.ratio[0]))
    elif in_ratio > aug.ratio[1]:
        h, w = height, int(round(height * aug.ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_window(width: int, height: int, fraction: float) -> tuple[int, int, int, int]:
    """A centered square of side `fraction` x the shorter side (resize + center crop)."""
    side = max(1, int(round(min(width, height) * fraction)))
    return (height - side) // 2, (width - side) // 2, side, side


@dataclass(frozen=True)
class SampleDraw:
    """Everything random about one sample: which photos, and one parameter row per view."""

    photo_a: int
    photo_b: int
    params: np.ndarray  # [num_views, len(PARAM_COLUMNS)] float64


def draw_sample(spec: ViewSpec, seed: int, epoch: int, row: int,
                photo_sizes: dict[int, tuple[int, int]]) -> SampleDraw:
    """Draw the views of sample `row` (its index.parquet row) for `epoch`.

    `photo_sizes` maps each *valid* photo index of the group to its (width, height). Groups
    with >= 2 valid photos give two different photos to the two global views (natural views);
    local views crop either of them; a group of one gives all views from its one photo.
    """
    rng = np.random.default_rng([seed, epoch, row])
    photos = sorted(photo_sizes)
    num_views = len(spec.views)
    u = rng.random((num_views + 1, _U_WIDTH))
    if spec.num_global >= 2 and len(photos) >= 2:
        first = int(u[0, 0] * len(photos))
        second = int(u[0, 1] * (len(photos) - 1))
        photo_a = photos[first]
        photo_b = photos[second + (second >= first)]
    else:
        photo_a = photo_b = photos[0] if spec.num_global < 2 else photos[int(u[0, 0] * len(photos))]
    out = np.zeros((num_views, len(PARAM_COLUMNS)))
    for v, view in enumerate(spec.views):
        aug, uv, row_out = view.augment, u[v + 1], out[v]
        if view.kind == "global":
            slot = min(v, 1)
        else:
            slot = int(uv[_U_SLOT] < 0.5)
        if photo_a == photo_b:
            slot = 0
        photo = photo_b if slot else photo_a
        width, height = photo_sizes[photo]
        if aug.center_crop:
            top, left, h, w = center_window(width, height, aug.crop_fraction)
        else:
            top, left, h, w = crop_window(uv[_U_AREA:_U_AREA + _ATTEMPTS], uv[_U_RATIO:_U_RATIO + _ATTEMPTS],
                                          uv[_U_I], uv[_U_J], width, height, aug)
        sigma = aug.blur_sigma[0] + uv[_U_SIGMA] * (aug.blur_sigma[1] - aug.blur_sigma[0])
        row_out[:] = (
            photo, slot, top, left, top + h, left + w, (h * w) / (width * height),
            uv[_U_FLIP] < aug.flip_p,
            uv[_U_JIT] < aug.jitter_p,
            1 + aug.brightness * (2 * uv[_U_B] - 1),
            1 + aug.contrast * (2 * uv[_U_C] - 1),
            1 + aug.saturation * (2 * uv[_U_S] - 1),
            360.0 * aug.hue * (2 * uv[_U_H] - 1),
            uv[_U_GRAY] < aug.grayscale_p,
            uv[_U_BLUR] < aug.blur_p,
            sigma, blur_window(sigma),
            uv[_U_SOL] < aug.solarize_p,
        )
    return SampleDraw(photo_a, photo_b, out)


def batch_arguments(params: np.ndarray, view: int) -> dict[str, np.ndarray]:
    """Per-sample DALI argument arrays of view `view` from stacked rows [B, num_views, P].

    Grayscale is folded into the colour twist (saturation 0 after jitter is the same affine
    map), so one conditional op does both; a view with neither skips it.
    """
    p = params[:, view]
    jitter, gray = p[:, COL["jitter"]] > 0, p[:, COL["gray"]] > 0
    ones = np.ones(len(p))
    saturation = np.where(jitter, p[:, COL["saturation"]], ones) * (~gray)
    return {
        "from_b": p[:, COL["slot"]] > 0,
        "roi_start": np.ascontiguousarray(p[:, [COL["y0"], COL["x0"]]], dtype=np.float32),
        "roi_end": np.ascontiguousarray(p[:, [COL["y1"], COL["x1"]]], dtype=np.float32),
        "mirror": p[:, COL["flip"]].astype(np.int32),
        "twist": jitter | gray,
        "brightness": np.where(jitter, p[:, COL["brightness"]], ones).astype(np.float32),
        "contrast": np.where(jitter, p[:, COL["contrast"]], ones).astype(np.float32),
        "saturation": saturation.astype(np.float32),
        "hue": np.where(jitter, p[:, COL["hue_deg"]], 0.0).astype(np.float32),
        "blur": p[:, COL["blur"]] > 0,
        "sigma": p[:, COL["sigma"]].astype(np.float32),
        "window": p[:, COL["window"]].astype(np.int32),
        "solarize": p[:, COL["solarize"]] > 0,
    }
