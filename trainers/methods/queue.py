"""A queue of embeddings from earlier global batches (MoCo's keys, SwAV's codes, MoBY's keys).

Every rank enqueues the ALL-GATHERED batch in rank order, so the queue is identical on every
rank and equal to single-process training with the concatenated batch. Two orders, as the papers
keep them: `ring` overwrites the oldest rows at a pointer (MoCo `_dequeue_and_enqueue`), and
`newest_first` shifts the queue back by one global batch and writes the new rows in front (SwAV
main_swav.py). The pointer and fill count are buffers (in `state_dict`, so a resume continues the
same queue) mirrored as host integers, so `is_full` and the write position never sync the device.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers import distributed
from groundfloor.errors import UsageError

__all__ = ["EmbeddingQueue", "upgrade_legacy_queue_keys"]


class EmbeddingQueue(nn.Module):
    """`size` rows of width `dim` (per slot: `slots` independent queues fed in one collective).

    `features` has shape (size, dim), or (slots, size, dim) with `slots`; `init="unit_normal"`
    starts from l2-normalised Gaussian rows (MoCo, MoBY), `"zeros"` from zeros (SwAV, which
    does not read the queue until it is full).
    """

    def __init__(self, size: int, dim: int, *, slots: int | None = None, order: Literal["ring", "newest_first"] = "ring",
                 init: Literal["zeros", "unit_normal"] = "zeros", owner: str = "queue") -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"{owner}: queue size and dim must be >= 1, got {size}, {dim}")
        self.size, self.dim, self.slots, self.order, self.owner = size, dim, slots, order, owner
        shape = (size, dim) if slots is None else (slots, size, dim)
        features = F.normalize(torch.randn(shape), dim=-1) if init == "unit_normal" else torch.zeros(shape)
        self.register_buffer("features", features)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._pointer = 0  # host mirrors of the two buffers
        self._filled = 0

    @property
    def is_full(self) -> bool:
        """Every row holds an enqueued embedding (host-side: no device sync)."""
        return self._filled >= self.size

    def snapshot(self) -> Tensor:
        """A copy of the queue to compute a loss with, before this step's enqueue changes it."""
        return self.features.clone()

    @torch.no_grad()
    def enqueue(self, local: Tensor) -> None:
        """Gather `local` ((B, dim), or (slots, B, dim)) from all ranks and write it in."""
        rows = local if self.slots is None else local.transpose(0, 1)  # (B, slots, dim): one gather
        new = distributed.gather(rows.contiguous())
        if self.slots is not None:
            new = new.transpose(0, 1)
        batch = new.shape[-2]
        if self.size % batch:
            raise UsageError(f"{self.owner} queue_size={self.size} is not divisible by the global batch {batch}")
        new = new.to(self.features.dtype)
        if self.order == "ring":
            start = self._pointer
            self.features[..., start : start + batch, :] = new
            self._pointer = (start + batch) % self.size
        else:
            self.features[..., batch:, :] = self.features[..., :-batch, :].clone()
            self.features[..., :batch, :] = new
        self._filled = min(self._filled + batch, self.size)
        self.pointer.fill_(self._pointer)
        self.filled.fill_(self._filled)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # one sync per resume, not per step
        self._pointer, self._filled = int(self.pointer), int(self.filled)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, slots={self.slots}, order={self.order}"


def upgrade_legacy_queue_keys(state_dict: dict[str, Any], prefix: str, *, queue: EmbeddingQueue | None,
                              pointer_key: str | None, filled_key: str | None, filled_default: int = 0) -> None:
    """Rename, in place, the queue buffers of checkpoints written before EmbeddingQueue existed.

    Old MoCo v2 / SwAV checkpoints kept `queue` and `queue_pointer` / `queue_filled` on the method;
    they now live under `queue.` (features, pointer, filled). Without a queue (SwAV queue_size 0)
    the old, empty buffers are dropped.
    """
    old = prefix + "queue"
    if old not in state_dict or prefix + "queue.features" in state_dict:
        return
    features = state_dict.pop(old)
    pointer = state_dict.pop(prefix + pointer_key, None) if pointer_key else None
    filled = state_dict.pop(prefix + filled_key, None) if filled_key else None
    if queue is None:
        return
    state_dict[prefix + "queue.features"] = features
    state_dict[prefix + "queue.pointer"] = pointer if pointer is not None else torch.zeros((), dtype=torch.long)
    state_dict[prefix + "queue.filled"] = filled if filled is not None else torch.tensor(filled_default)
