"""SiT v1's rotation task: a quarter turn per crop drawn on the host, applied on the device.

SiT's first version (Atito et al. 2021, arXiv 2104.03602 v1; its code Sara-Ahmed/SiT at commit
1767b91, datasets/datasets_utils.py `RandomRotation` / `getItem`) rotates each of a sample's two
views on its own by 0, 90, 180 or 270 degrees counter-clockwise (PIL `ROTATE_90` etc.), before
the corruption, and a rotation token predicts which (4-way cross-entropy). `torch.rot90(x, k,
dims=(-2, -1))` turns the same way, so the label is `k`.

Why not in the DALI graph: the un-rotated clean crop still feeds the teacher, and the turn must be
known to the loss; rotating in the pipeline would ship a second copy of every crop. So, as
:mod:`trainers.methods.gmml`, the turns are drawn from `pipeline.params.uniforms(seed, epoch,
sample id)` under a salt of their own (independent of the crop and corruption draws), and the
crops are rotated on the device in four groups (one gather into turn order, three `rot90`s, one
gather back): no per-sample loop, no host sync -- the group sizes are known on the host.
Only square crops can be turned by 90 degrees into the same batch shape; others are refused.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.params import uniforms
from groundfloor.errors import UsageError

__all__ = ["draw_rotations", "rotate"]

_SALT = 0x5369_545F_524F_5434  # "SiT_ROT4": a stream apart from the crop and corruption draws


def draw_rotations(seed: int, epoch: int, ids: np.ndarray, num_views: int) -> np.ndarray:
    """Quarter turns 0-3 of every (view, sample) as int64 [V * B], view-major (as `torch.cat(views)`)."""
    ids = np.asarray(ids, dtype=np.int64)
    u = uniforms(seed ^ _SALT, epoch, ids, num_views)                        # [B, V]
    return np.minimum(np.floor(u.T * 4).astype(np.int64), 3).reshape(-1)


def rotate(images: Tensor, turns: np.ndarray) -> tuple[Tensor, Tensor]:
    """`images` [N, C, H, W] each turned `turns[i]` quarter turns counter-clockwise, and the turns
    as a device tensor (the rotation labels), both from ONE small host-to-device copy."""
    n, _, height, width = images.shape
    turns = np.asarray(turns, dtype=np.int64)
    if turns.shape != (n,) or turns.min(initial=0) < 0 or turns.max(initial=0) > 3:
        raise ValueError(f"rotate needs one quarter turn 0-3 per image; got shape {turns.shape} for {n} images")
    if height != width:
        raise UsageError(f"sit rotation turns square crops only: got {height}x{width} px "
                         "(use square crops or rotation_weight: 0)")
    order = np.argsort(turns, kind="stable")
    counts = np.bincount(turns, minlength=4).tolist()
    packed = torch.from_numpy(np.concatenate([order, np.argsort(order), turns]))
    if images.device.type == "cuda":
        packed = packed.pin_memory()  # asynchronous copy (the caching host allocator keeps it alive)
    packed = packed.to(images.device, non_blocking=True)
    grouped = images.index_select(0, packed[:n]).split(counts)
    turned = torch.cat([torch.rot90(g, k, dims=(-2, -1)) if k else g for k, g in enumerate(grouped)])
    return turned.index_select(0, packed[n:2 * n]), packed[2 * n:]
