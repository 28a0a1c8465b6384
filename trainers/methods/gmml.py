"""SiT's GMML corruptions: per-sample draws on the host, one vectorised application on the device.

What is drawn (Sara-Ahmed/SiT datasets/datasets_utils.py, used by main.py):
- `GMML_drop_rand_patches` (`DataAugmentationSiT`, every crop): rectangles are added until they
  cover >= f * H * W pixels, f ~ U(min(0.5, p), p) with p = `--drop_perc` 0.5; a rectangle's top
  and left are `(randint(0, side - align) // align) * align`, its height and width
  `randint(align, int(0.3 * side))` clipped at the border and rounded to a multiple of `align`
  (`--drop_align` 1); covered pixels become 0 (`--drop_type zeros`: the dataset mean after
  normalisation);
- `GMML_replace_list` (main.py `collate_batch`, per crop): each sample with probability 1/2
  (its `rep_drop` for the default drop_type "noise") is instead corrupted afresh from its clean
  crop, with rectangles covering `--drop_replace` 0.3 pasted from the same crop of a random
  sample of the batch (`randint(0, n_imgs)`: possibly itself).
The mask is the union of the rectangles; the reconstruction loss reads it.

Why not in the DALI graph: the corruption needs the clean crop too (the reconstruction target
and the teacher's input), the replacement mixes samples, and "rectangles until a coverage is
reached" is a data-dependent loop. So the numbers are drawn on the host as `pipeline.params`
draws crops, from its counter-based `uniforms(seed, epoch, sample id)` under a salt of their own
(independent of the crop draws), moved to the device in ONE small copy per step, and applied
there with fixed-size tensor ops: `max_blocks` updates of an [N, H, W] mask in which a sample
that reached its coverage takes no more rectangles -- the official `while` loop without a host
sync, and without a per-sample loop of tiny kernels (slow on a GPU). `max_blocks` 128 is about
twice the most a 224 px, align 1 crop needed in 300 simulated official draws (74; mean 41);
`corruption_short` logs the share of crops that stopped short of their coverage.

Donors: the official code picks them from a rank's own batch (each GPU collates its 64), so its
result depends on the per-GPU batch size. Here they come from fixed groups of `group_size`
consecutive samples of a rank's (micro-)batch, so the corruptions do not depend on the number of
ranks while the per-rank batch is a multiple of the group; every other number is a pure
function of (seed, epoch, sample id, view).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pipeline.params import uniforms
from groundfloor.errors import UsageError

__all__ = ["GMMLSettings", "check_image_size", "draw_gmml", "apply_gmml"]

_SALT = 0x5369_545F_474D_4D4C  # "SiT_GMML": a stream apart from the pipeline's crop draws


@dataclass(frozen=True)
class GMMLSettings:
    """The corruption's numbers (defaults: SiT main.py)."""

    drop_fraction: float = 0.5          # --drop_perc
    replace_fraction: float = 0.3       # --drop_replace
    replace_probability: float = 0.5    # GMML_replace_list rep_drop = 1 / (len("noise".split("-")) + 1)
    align: int = 1                      # --drop_align
    max_block_fraction: float = 0.3     # GMML_drop_rand_patches max_block_sz
    max_blocks: int = 128               # rectangles drawn per crop (the loop bound; see module doc)
    group_size: int = 64                # donors come from groups of this many consecutive samples


def _rectangles(u: np.ndarray, height: int, width: int, s: GMMLSettings) -> np.ndarray:
    """[..., K, 4] uniforms -> int [..., K, 4] (top, left, h, w) as GMML_drop_rand_patches draws them."""
    a = s.align
    out = np.empty(u.shape, dtype=np.int64)
    for axis, side in ((0, height), (1, width)):
        most = int(side * s.max_block_fraction)
        start = (np.floor(u[..., axis] * (side - a)).astype(np.int64) // a) * a          # randint(0, side - a)
        size = a + np.floor(u[..., axis + 2] * (most - a)).astype(np.int64)              # randint(a, most)
        size = np.round(np.minimum(size, side - start) / a).astype(np.int64) * a         # Python round: half-even
        out[..., axis], out[..., axis + 2] = start, size
    return out


def check_image_size(height: int, width: int, s: GMMLSettings) -> None:
    """UsageError unless the official draws are defined at this crop size."""
    for side in (height, width):
        if int(side * s.max_block_fraction) <= s.align or side <= s.align:
            raise UsageError(
                f"sit corruption: crops of {height}x{width} px are too small for drop_align={s.align} "
                f"(rectangles up to {s.max_block_fraction} of a side must be wider than the alignment); "
                "use larger crops or a smaller drop_align")


def draw_gmml(seed: int, epoch: int, ids: np.ndarray, num_views: int, height: int, width: int,
              s: GMMLSettings) -> np.ndarray:
    """The corruption of every (view, sample) as ONE int64 array [V * B, 4K + 3], view-major.

    Columns: K rectangles (top, left, h, w) of the path the sample takes, the pixel count it must
    reach (the official float target rounded up: `covered < target` reads the same on integers),
    1 if it takes the replace path, and its donor's row in the view-major [V * B] stack.
    """
    check_image_size(height, width, s)
    k = s.max_blocks
    ids = np.asarray(ids, dtype=np.int64)
    batch = len(ids)
    per_view = 4 + 8 * k
    u = uniforms(seed ^ _SALT, epoch, ids, num_views * per_view).reshape(batch, num_views, per_view)
    u = u.transpose(1, 0, 2)                                                    # [V, B, slots]
    replace = u[..., 0] < s.replace_probability
    position = np.arange(batch)
    group_start = (position // s.group_size) * s.group_size
    group_len = np.minimum(group_start + s.group_size, batch) - group_start
    donor = group_start + np.minimum(np.floor(u[..., 1] * group_len).astype(np.int64), group_len - 1)
    donor = donor + np.arange(num_views)[:, None] * batch                       # row in the [V * B] stack
    fractions = np.where(replace, s.replace_fraction, s.drop_fraction)
    lows = np.minimum(0.5, fractions)
    fraction = lows + np.where(replace, u[..., 3], u[..., 2]) * (fractions - lows)
    target = np.ceil(fraction * height * width).astype(np.int64)
    drop_blocks = _rectangles(u[..., 4:4 + 4 * k].reshape(num_views, batch, k, 4), height, width, s)
    replace_blocks = _rectangles(u[..., 4 + 4 * k:].reshape(num_views, batch, k, 4), height, width, s)
    blocks = np.where(replace[..., None, None], replace_blocks, drop_blocks).reshape(num_views, batch, 4 * k)
    table = np.concatenate([blocks, target[..., None], replace[..., None], donor[..., None]], axis=-1)
    return table.reshape(num_views * batch, 4 * k + 3)


def _to_device(table: np.ndarray, device: torch.device) -> Tensor:
    """One host-to-device copy; pinned on CUDA so it is asynchronous (the caching host
    allocator keeps the buffer alive until the copy is done)."""
    t = torch.from_numpy(np.ascontiguousarray(table, dtype=np.int32))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def apply_gmml(clean: Tensor, table: np.ndarray, max_blocks: int) -> tuple[Tensor, Tensor, Tensor]:
    """Corrupt the view-major stack `clean` [V * B, C, H, W] as `table` (:func:`draw_gmml`) says.

    Returns the corrupted images, the mask [V * B, 1, H, W] (bool) and the share of crops whose
    rectangles stopped short of their coverage (0-d, for the logs). No host sync.
    """
    n, _, height, width = clean.shape
    if table.shape != (n, 4 * max_blocks + 3):
        raise ValueError(f"corruption table has shape {table.shape}; expected ({n}, {4 * max_blocks + 3})")
    t = _to_device(table, clean.device).long()
    blocks = t[:, :4 * max_blocks].view(n, max_blocks, 4)
    target, replace, donor = t[:, -3], t[:, -2].bool(), t[:, -1]
    ys = torch.arange(height, device=clean.device)
    xs = torch.arange(width, device=clean.device)
    top, left, h, w = blocks.unbind(-1)                                          # [N, K] each
    rows = ((ys >= top[..., None]) & (ys < (top + h)[..., None])).float()        # [N, K, H]
    cols = ((xs >= left[..., None]) & (xs < (left + w)[..., None])).float()      # [N, K, W]
    # float 0/1 masks: the fastest of bool/uint8/float on CPU (measured), as good on a GPU
    mask = torch.zeros(n, height, width, device=clean.device)
    for k in range(max_blocks):
        still_open = (mask.view(n, -1).sum(dim=1) < target).float()              # the official `while`
        if clean.device.type == "cpu" and not still_open.any():
            break  # free on the host; the same result (the rest would add nothing)
        torch.maximum(mask, (rows[:, k] * still_open[:, None])[:, :, None] * cols[:, k, None, :], out=mask)
    short = (mask.view(n, -1).sum(dim=1) < target).float().mean()
    mask = mask.bool()[:, None]
    fill = torch.where(replace[:, None, None, None], clean[donor], torch.zeros((), dtype=clean.dtype,
                                                                               device=clean.device))
    return torch.where(mask, fill, clean), mask, short

