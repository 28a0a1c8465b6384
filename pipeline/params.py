"""Augmentation parameters drawn in numpy as a pure function of (seed, epoch, sample, view).

All randomness of a view lives here, not in DALI: the DALI graph only applies the numbers it is
fed. That makes a batch a pure function of (seed, epoch, sample, view): resuming mid-epoch,
running on CPU or GPU, or changing the batch size gives the same views, and tests can check the
drawn numbers directly.

The uniforms come from a counter-based generator (the SplitMix64 finalizer applied to
(seed, epoch, sample row, slot)), evaluated for a whole batch in a few array operations:
creating a seeded numpy Generator per sample costs ~20-100 us, which on a 2-core machine is a
noticeable share of the time DALI needs for the sample itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.spec import MAX_GLOBAL_VIEWS, ViewSpec

# Columns of the per-view parameter row. "photo" is the group's photo the view shows, "slot" the
# graph input it reads (0: photo a, 1: photo b, g >= 2: global view g's own photo). "width"/"height"
# are the header size of the view's photo, the bounds the DALI graph clamps its decode windows to
# (`pipeline.decode_windows`).
PARAM_COLUMNS = (
    "photo", "slot", "y0", "x0", "y1", "x1", "area", "flip", "jitter", "brightness", "contrast",
    "saturation", "hue_deg", "gray", "blur", "sigma", "window", "solarize", "width", "height",
)
COL = {name: i for i, name in enumerate(PARAM_COLUMNS)}
_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 windows before its fallback
_U_AREA, _U_RATIO = 0, _ATTEMPTS
_U = 2 * _ATTEMPTS  # first column after the crop attempts
_U_I, _U_J, _U_FLIP, _U_JIT, _U_B, _U_C, _U_S, _U_H, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOL, _U_SLOT = range(_U, _U + 13)
_U_WIDTH = _U + 13
assert MAX_GLOBAL_VIEWS <= _U_WIDTH  # the photo picks are the first slots of counter row 0


def blur_window(sigma: float) -> int:
    """The Gaussian window for `sigma`: radius ceil(3 sigma) (DALI's own default rule).

    Deriving it from sigma (instead of SimCLR's fixed 10%-of-size kernel) is what keeps blur
    cheap: most draws need 3-9 taps, not 23.
    """
    return 2 * max(1, math.ceil(3 * sigma)) + 1


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijective mix of uint64 with good avalanche."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, rows: np.ndarray, count: int) -> np.ndarray:
    """[len(rows), count] uniforms in [0, 1): slot j of sample `row` in `epoch` under `seed`."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        key = _splitmix(key ^ _splitmix(np.array([epoch + 1], dtype=np.uint64) * _GOLDEN))
        stream = _splitmix(key ^ (np.asarray(rows, dtype=np.uint64) * _GOLDEN))[:, None]
        bits = _splitmix(stream + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _view_table(spec: ViewSpec) -> dict[str, np.ndarray]:
    """Per-view recipe numbers as arrays [V], so a whole batch is drawn with array maths."""
    augs = [v.augment for v in spec.views]
    table = {name: np.array([getattr(a, name) for a in augs], dtype=np.float64) for name in (
        "flip_p", "jitter_p", "brightness", "contrast", "saturation", "hue", "grayscale_p",
        "blur_p", "solarize_p", "crop_fraction")}
    table["scale_lo"] = np.array([a.scale[0] for a in augs])
    table["scale_hi"] = np.array([a.scale[1] for a in augs])
    table["log_ratio_lo"] = np.log([a.ratio[0] for a in augs])
    table["log_ratio_hi"] = np.log([a.ratio[1] for a in augs])
    table["ratio_lo"] = np.array([a.ratio[0] for a in augs])
    table["ratio_hi"] = np.array([a.ratio[1] for a in augs])
    table["sigma_lo"] = np.array([a.blur_sigma[0] for a in augs])
    table["sigma_hi"] = np.array([a.blur_sigma[1] for a in augs])
    table["center"] = np.array([a.center_crop for a in augs])
    table["local"] = np.array([v.kind == "local" for v in spec.views])
    return table


def crop_windows(u: np.ndarray, width: np.ndarray, height: np.ndarray, t: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision's RandomResizedCrop.get_params for [B, V] views at once: top, left, h, w.

    Ten attempts draw an area fraction in `scale` and a log-uniform aspect ratio; the first
    window that fits wins; otherwise the whole image clamped to the allowed ratios (centered).
    """
    area = (width * height)[..., None]
    targets = area * (t["scale_lo"][:, None] + u[..., _U_AREA:_U_AREA + _ATTEMPTS]
                      * (t["scale_hi"] - t["scale_lo"])[:, None])
    ratios = np.exp(t["log_ratio_lo"][:, None] + u[..., _U_RATIO:_U_RATIO + _ATTEMPTS]
                    * (t["log_ratio_hi"] - t["log_ratio_lo"])[:, None])
    ws = np.round(np.sqrt(targets * ratios))
    hs = np.round(np.sqrt(targets / ratios))
    ok = (ws > 0) & (ws <= width[..., None]) & (hs > 0) & (hs <= height[..., None])
    first = np.argmax(ok, axis=-1)[..., None]
    w = np.take_along_axis(ws, first, -1)[..., 0]
    h = np.take_along_axis(hs, first, -1)[..., 0]
    top = np.minimum(np.floor(u[..., _U_I] * (height - h + 1)), height - h)
    left = np.minimum(np.floor(u[..., _U_J] * (width - w + 1)), width - w)
    # fallback: whole image clamped to the ratio range, centered
    in_ratio = width / height
    fw = np.where(in_ratio > t["ratio_hi"], np.round(height * t["ratio_hi"]), width)
    fh = np.where(in_ratio < t["ratio_lo"], np.round(width / t["ratio_lo"]), height)
    fits = ok.any(axis=-1)
    h, w = np.where(fits, h, fh), np.where(fits, w, fw)
    top = np.where(fits, top, (height - fh) // 2)
    left = np.where(fits, left, (width - fw) // 2)
    return top, left, h, w


def center_windows(width: np.ndarray, height: np.ndarray, fraction: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centered squares of side `fraction` x the shorter side (resize + center crop)."""
    side = np.maximum(1, np.round(np.minimum(width, height) * fraction))
    return (height - side) // 2, (width - side) // 2, side, side


@dataclass(frozen=True)
class SampleDraw:
    """Everything random about one sample: which photos, and one parameter row per view.

    `photos[g]` is the photo global view g reads (`slot` g of `params`); a spec with one global
    view still has two entries (photo a = photo b), the pair the DALI graph always takes.
    """

    photos: tuple[int, ...]
    params: np.ndarray  # [num_views, len(PARAM_COLUMNS)] float64

    @property
    def photo_a(self) -> int:
        return self.photos[0]

    @property
    def photo_b(self) -> int:
        return self.photos[1]


def _pick_globals(num_global: int, u0: np.ndarray, photos: list[int]) -> tuple[int, ...]:
    """The photos of the global views: as many different ones as the group's good photos allow.

    Photo j is drawn uniformly from those not drawn yet with uniform `u0[j]`, so the first two
    are the natural pair of a two-view spec for any number of global views. A group with fewer
    good photos than global views fills the rest by cycling through its picks in draw order
    (pick j % n): those views are further augmentations of the same photos.
    """
    if num_global < 2:
        return photos[0], photos[0]  # one global view (eval, embedding): the group's first photo
    remaining, picks = list(photos), []
    for j in range(min(num_global, len(photos))):
        picks.append(remaining.pop(int(u0[j] * len(remaining))))
    return tuple(picks[j % len(picks)] for j in range(num_global))


def pick_uniforms(seed: int, epoch: int, rows: np.ndarray, num_global: int = 2) -> np.ndarray:
    """[len(rows), max(2, num_global)]: the uniforms `draw_batch` picks each sample's photos with
    (the first of its counter slots: the same numbers whatever `num_global`)."""
    return uniforms(seed, epoch, rows, max(2, num_global))


def pick_photos(num_global: int, u: tuple[float, ...], candidates: list[int]) -> tuple[int, ...]:
    """The photos `draw_batch` gives the global views of a sample whose usable photos are
    `candidates` (`u`: its `pick_uniforms`): lets the reader check only these."""
    return _pick_globals(num_global, np.asarray(u), candidates)


def draw_batch(spec: ViewSpec, seed: int, epoch: int, rows: list[int],
               photo_sizes: list[dict[int, tuple[int, int]]],
               candidates: list[list[int] | None] | None = None) -> list[SampleDraw]:
    """Draw the views of samples `rows` (index.parquet rows) for `epoch`.

    `candidates[i]` are the photos of sample i not known bad (default: those in
    `photo_sizes[i]`); `photo_sizes[i]` maps at least the picked ones to (width, height). The
    G global views of a group with >= G valid photos show G different photos (natural views);
    a group with fewer cycles through its photos in draw order (`_pick_globals`), a group of one
    gives all views from its one photo. Local views crop photo a or b (the first two global
    views' photos, each with probability 1/2; photo a alone when they are the same). Global
    view g >= 2 reads slot g: a photo of its own, even when it repeats photo a or b.
    """
    num_views, t = len(spec.views), _view_table(spec)
    u = uniforms(seed, epoch, np.asarray(rows), (num_views + 1) * _U_WIDTH).reshape(
        len(rows), num_views + 1, _U_WIDTH)
    num_global = spec.num_global
    pools = [c if c is not None else sorted(sizes) for c, sizes in
             zip(candidates or [None] * len(rows), photo_sizes)]
    picks = [_pick_globals(num_global, u[i, 0], pool) for i, pool in enumerate(pools)]
    uv = u[:, 1:]
    views = np.arange(num_views)
    slot = np.where(t["local"], uv[..., _U_SLOT] < 0.5, views == 1).astype(np.int64)
    same = np.array([p[0] == p[1] for p in picks])[:, None]
    slot = np.where((views >= 2) & ~t["local"], views, slot & ~same)
    photo = np.take_along_axis(np.array(picks, dtype=np.int64).reshape(len(rows), -1), slot, 1)
    table = np.ones((len(rows), max(max(sizes) for sizes in photo_sizes) + 1, 2))
    for i, sizes in enumerate(photo_sizes):
        for p, wh in sizes.items():
            table[i, p] = wh
    width = np.take_along_axis(table[..., 0], photo, 1)
    height = np.take_along_axis(table[..., 1], photo, 1)
    top, left, h, w = crop_windows(uv, width, height, t)
    ctop, cleft, ch, cw = center_windows(width, height, t["crop_fraction"])
    center = t["center"]
    top, left = np.where(center, ctop, top), np.where(center, cleft, left)
    h, w = np.where(center, ch, h), np.where(center, cw, w)
    sigma = t["sigma_lo"] + uv[..., _U_SIGMA] * (t["sigma_hi"] - t["sigma_lo"])
    columns = {
        "photo": photo, "slot": slot, "y0": top, "x0": left, "y1": top + h, "x1": left + w,
        "area": h * w / (width * height),
        "flip": uv[..., _U_FLIP] < t["flip_p"],
        "jitter": uv[..., _U_JIT] < t["jitter_p"],
        "brightness": 1 + t["brightness"] * (2 * uv[..., _U_B] - 1),
        "contrast": 1 + t["contrast"] * (2 * uv[..., _U_C] - 1),
        "saturation": 1 + t["saturation"] * (2 * uv[..., _U_S] - 1),
        "hue_deg": 360.0 * t["hue"] * (2 * uv[..., _U_H] - 1),
        "gray": uv[..., _U_GRAY] < t["grayscale_p"],
        "blur": uv[..., _U_BLUR] < t["blur_p"],
        "sigma": sigma,
        "window": 2 * np.maximum(1, np.ceil(3 * sigma)) + 1,
        "solarize": uv[..., _U_SOL] < t["solarize_p"],
        "width": width, "height": height,
    }
    params = np.stack([np.asarray(columns[name], dtype=np.float64) for name in PARAM_COLUMNS], -1)
    return [SampleDraw(p, params[i]) for i, p in enumerate(picks)]


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


_FILL_SALT = 0x46494C4C  # "FILL": the hole-filling draws have a stream of their own


def fill_sources(seed: int, epoch: int, rows: list[int], ok: list[bool]) -> list[int]:
    """For each planned slot of a rank's batch, the slot whose sample fills it.

    A good slot is its own source; a hole (a sample skipped as unreadable or undecodable) is
    filled by repeating one of the batch's good samples, picked by (seed, epoch, the hole's
    item id), so every rank keeps the planned batch size (the collectives of the step need equal
    shapes) and a resumed run fills the same way. No good slot: every slot is returned as is.
    """
    good = [i for i, g in enumerate(ok) if g]
    if not good or len(good) == len(ok):
        return list(range(len(ok)))
    holes = [i for i, g in enumerate(ok) if not g]
    u = uniforms(seed ^ _FILL_SALT, epoch, np.asarray([rows[i] for i in holes], dtype=np.int64), 1)[:, 0]
    sources = list(range(len(ok)))
    for hole, x in zip(holes, u.tolist()):
        sources[hole] = good[min(int(x * len(good)), len(good) - 1)]
    return sources
