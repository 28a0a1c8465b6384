"""Which pixels of each photo the DALI graph decodes: integer decode windows, computed on the host.

A view's crop window [y0, y1) x [x0, x1) (`pipeline.params`: absolute pixels drawn from the
header size) is resized to size x size by DALI's antialiased linear resize, whose filter is a
triangle of radius max(1, extent / size) input pixels per axis (DALI
dali/kernels/imgproc/resample/params.h, `DefaultFilterRadius`; linear + antialias selects the
triangular filter when scaling down). So an output pixel reads at most that far outside the
window. The decode window pads the window by `margin = ceil(radius) + 1` per side (the + 1
covers the half-pixel centre convention) and clamps it to the image:

    anchor = max(0, floor(start) - margin)        stop = min(image, ceil(end) + margin)

Invariants: 0 <= anchor < stop <= image size per axis; the decode window holds the crop window
and every pixel inside the image that the resize filter reads; where the pad is cut off it is cut
at the image border, where a resize of the whole photo clamps too. So a view resized from the
decode window (its ROI shifted by -anchor) reads the pixels a resize of the whole photo reads.
Measured on JPEGs (tests/pipeline/test_roi_decode.py): libjpeg-turbo's ROI decode is exact, and
the views differ from full-decode views by at most 1 (of 255) on ~1e-5 of the values (float
rounding of the shifted filter positions); with no pad they differ by up to 13.

A photo several views crop (a group of one: both global views; local crops of a global view's
photo) is decoded once as the bounding box of its views' decode windows when that box is smaller
than the sum of their areas; otherwise each view decodes its own window. Decode cost is taken as
proportional to the decoded area; the entropy decoding a JPEG needs up to a window's last row is
ignored, which only undercounts the benefit of the shared decode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def view_windows(start: np.ndarray, end: np.ndarray, size: np.ndarray, image: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Decode windows (anchor, stop), int64 [..., 2] in (y, x), of crop windows [start, end).

    `start`/`end`: [..., 2] (y, x) absolute pixels; `size`: the view's output side, broadcast
    against [...]; `image`: [..., 2] (height, width) of each window's photo.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    image = np.asarray(image, np.int64)
    radius = np.maximum(1.0, (end - start) / np.asarray(size, np.float64)[..., None])
    margin = np.ceil(radius).astype(np.int64) + 1
    anchor = np.clip(np.floor(start).astype(np.int64) - margin, 0, image - 1)
    stop = np.clip(np.ceil(end).astype(np.int64) + margin, anchor + 1, image)
    return anchor, stop


@dataclass(frozen=True)
class DecodePlan:
    """What a batch decodes, in (y, x) pixels; photo 0 is the sample's photo a, 1 its photo b.

    Each photo has one shared decode (`photo_anchor`/`photo_stop`): the union of its views'
    windows when `union`, else the window of its lowest-numbered view. A view with `own` set
    decodes its own window (`view_anchor`/`view_stop`) instead; `origin` is the top-left of
    whichever decoded image the view is resized from, so its ROI there is [start, end) - origin.
    View 0 is never `own` (it is photo a's lowest view); a photo no view crops (photo b of a
    group of one, which is photo a) gets photo a's window and is never decoded. A view of slot
    >= 2 (global view g >= 2, a photo input of its own) is always `own`.
    """

    photo_anchor: np.ndarray  # [B, 2, 2] int64
    photo_stop: np.ndarray    # [B, 2, 2] int64
    view_anchor: np.ndarray   # [B, V, 2] int64
    view_stop: np.ndarray     # [B, V, 2] int64
    own: np.ndarray           # [B, V] bool
    origin: np.ndarray        # [B, V, 2] int64
    union: np.ndarray         # [B, 2] bool


def _area(anchor: np.ndarray, stop: np.ndarray) -> np.ndarray:
    return np.prod(stop - anchor, axis=-1)


def plan_decodes(start: np.ndarray, end: np.ndarray, sizes: np.ndarray, image: np.ndarray,
                 slot: np.ndarray) -> DecodePlan:
    """The decode plan of a batch: crop windows `start`/`end` [B, V, 2] (y, x), view output sides
    `sizes` [V], photo sizes `image` [B, V, 2] (height, width) and `slot` [B, V] (0: the view
    crops photo a, 1: photo b, g >= 2: the photo of global view g, decoded for that view alone)."""
    slot = np.asarray(slot).astype(np.int64)
    batch, num_views = slot.shape
    anchor, stop = view_windows(start, end, np.asarray(sizes)[None, :], image)
    area = _area(anchor, stop)
    rows, views = np.arange(batch), np.arange(num_views)
    photo_anchor = np.zeros((batch, 2, 2), np.int64)
    photo_stop = np.zeros((batch, 2, 2), np.int64)
    union = np.zeros((batch, 2), bool)
    own = np.zeros((batch, num_views), bool)
    for photo in (0, 1):
        member = slot == photo
        box_anchor = np.where(member[..., None], anchor, np.iinfo(np.int64).max).min(axis=1)
        box_stop = np.where(member[..., None], stop, -1).max(axis=1)
        joined = (member.sum(axis=1) >= 2) & (_area(box_anchor, box_stop) < (area * member).sum(axis=1))
        first = np.argmax(member, axis=1)  # lowest view of the photo (0 when it has none)
        union[:, photo] = joined
        photo_anchor[:, photo] = np.where(joined[:, None], box_anchor, anchor[rows, first])
        photo_stop[:, photo] = np.where(joined[:, None], box_stop, stop[rows, first])
        own |= member & ~joined[:, None] & (views[None, :] != first[:, None])
    own |= slot >= 2
    unused = ~(slot == 1).any(axis=1)  # photo b of a group of one: photo a, never decoded
    photo_anchor[unused, 1], photo_stop[unused, 1] = photo_anchor[unused, 0], photo_stop[unused, 0]
    shared_origin = photo_anchor[rows[:, None], np.minimum(slot, 1)]
    origin = np.where(own[..., None], anchor, shared_origin)
    return DecodePlan(photo_anchor, photo_stop, anchor, stop, own, origin, union)
