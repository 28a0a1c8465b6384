"""Exact epochs: which samples each rank sees, in which order, in which batches.

Everything is a pure function of (seed, epoch, rank, world_size) over index.parquet:

1. The shards are put in a random order for the epoch and their samples concatenated (the
   *stream order*: each shard is read once, front to back).
2. Rank r takes the r-th contiguous slice of that sequence, so a rank reads mostly whole shards
   and at most two partial ones (the split is at sample level, which also covers fewer shards
   than ranks). With ``drop_last=True`` only the first ``(N // (W*B)) * W*B`` samples are used
   and every batch has exactly B samples (the tail that is dropped changes every epoch). With
   ``drop_last=False`` every sample is used once: slices differ by at most one sample, every
   rank yields ``ceil(ceil(N/W)/B)`` batches, and only the last batch(es) of a rank are smaller
   (possibly empty on a rank that has fewer samples than batches, so it never hangs the others).
3. Within a rank, the stream is cut into blocks of `shuffle_block` samples and each block is
   shuffled: the consumption order. A batch is a contiguous run of that order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from viewstream.errors import UsageError


@dataclass(frozen=True, order=True)
class DataPosition:
    """Where a run is in its data: the next batch to read is `batch` of `epoch`."""

    epoch: int
    batch: int

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_dict(cls, data: dict) -> "DataPosition":
        return cls(int(data["epoch"]), int(data["batch"]))


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """How many batches every rank yields per epoch (the same for all ranks and epochs)."""
    if drop_last:
        return num_samples // (batch_size * world_size)
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)


def batch_sizes(num_rank_samples: int, num_batches: int, batch_size: int) -> list[int]:
    """Sizes of a rank's batches: full batches first, the shortfall taken from the last ones.

    Batches are kept non-empty while there are samples enough; a rank with fewer samples than
    batches gets empty batches at the end.
    """
    sizes = [batch_size] * num_batches
    deficit = num_batches * batch_size - num_rank_samples
    for keep_one in (1, 0):
        for i in range(num_batches - 1, -1, -1):
            take = min(deficit, sizes[i] - keep_one)
            if take > 0:
                sizes[i] -= take
                deficit -= take
    return sizes


def stream_order(shard_of_row: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """All rows in the epoch's stream order: shards in a random order, rows in index order."""
    if len(shard_of_row) == 0:
        return np.zeros(0, dtype=np.int64)
    shards, shard_number = np.unique(shard_of_row, return_inverse=True)
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(shards))
    by_shard = np.argsort(shard_number, kind="stable")  # rows grouped by shard, index order kept
    starts = np.concatenate([[0], np.cumsum(np.bincount(shard_number, minlength=len(shards)))])
    return np.concatenate([by_shard[starts[s]:starts[s + 1]] for s in order])


@dataclass(frozen=True)
class RankEpoch:
    """One rank's epoch: rows in stream and consumption order, and its batch sizes."""

    stream_rows: np.ndarray   # rows in the order they are read
    rows: np.ndarray          # rows in the order they are consumed (blocks shuffled)
    sizes: list[int]
    block: int

    def bounds(self, batch: int) -> tuple[int, int]:
        """[start, end) of batch `batch` in consumption order."""
        start = sum(self.sizes[:batch])
        return start, start + self.sizes[batch]


def plan_rank_epoch(shard_of_row: np.ndarray, *, seed: int, epoch: int, rank: int, world_size: int,
                    batch_size: int, drop_last: bool, shuffle_block: int) -> RankEpoch:
    """The exact plan of `rank` for `epoch` (see the module docstring)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
    if batch_size < 1:
        raise UsageError(f"batch_size={batch_size}: expected an integer >= 1")
    if shuffle_block < 1:
        raise UsageError(f"shuffle_block={shuffle_block}: expected an integer >= 1")
    n = len(shard_of_row)
    order = stream_order(shard_of_row, seed, epoch)
    num_batches = batches_per_epoch(n, batch_size, world_size, drop_last)
    if drop_last:
        per_rank = num_batches * batch_size
        start, end = rank * per_rank, (rank + 1) * per_rank
    else:
        start, end = rank * n // world_size, (rank + 1) * n // world_size
    stream_rows = order[start:end]
    rows = stream_rows.copy()
    for b, lo in enumerate(range(0, len(rows), shuffle_block)):
        rng = np.random.default_rng([seed, epoch, 2, rank, world_size, b])
        rows[lo:lo + shuffle_block] = rng.permutation(rows[lo:lo + shuffle_block])
    sizes = batch_sizes(len(rows), num_batches, batch_size)
    return RankEpoch(stream_rows, rows, sizes, shuffle_block)
