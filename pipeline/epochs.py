"""Exact epochs: which samples each rank sees, in which order, in which batches.

Everything is a pure function of (seed, epoch, rank, world_size) over *shard-level* metadata:
the per-shard sample counts of every root (shards.parquet) and how many samples each root gives
per epoch. Nothing here is an array over the corpus: a plan costs O(shards + this rank's
samples) memory and time, so a rank of a 1e9-sample run plans in the time it takes to sort its
own share.

1. Each root gives `choose` samples per epoch (default: all of them once). ``choose // N``
   whole copies of the root, plus a remainder drawn at shard level: the root's shards in a
   seeded order, whole shards while they fit, then a seeded subset of the next shard. The
   result is a list of *segments* (shard, copy, how many samples of it).
2. The segments of all roots are put in a random order for the epoch and their samples
   concatenated (the *stream order*: each segment is read once, front to back, in tar order).
3. Rank r takes the r-th contiguous slice of that sequence, so a rank reads mostly whole shards
   and at most two partial ones (the split is at sample level, which also covers fewer shards
   than ranks). With ``drop_last=True`` only the first ``(N // (W*B)) * W*B`` samples are used
   and every batch has exactly B samples (the tail that is dropped changes every epoch). With
   ``drop_last=False`` every sample is used once: slices differ by at most one sample, every
   rank yields ``ceil(ceil(N/W)/B)`` batches, and only the last batch(es) of a rank are smaller
   (possibly empty on a rank that has fewer samples than batches, so it never hangs the others).
4. Within a rank, the stream is cut into blocks of `shuffle_block` samples and each block is
   shuffled: the consumption order. A batch is a contiguous run of that order.

A sample's *item id* is ``copy * total_rows + row`` (row: its position in the concatenation of
all roots' shards), unique within an epoch even when a root repeats, and the key of all its
random draws; for one root read once it is the row itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from groundfloor.errors import UsageError


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


@dataclass(frozen=True)
class ShardTable:
    """Shard-level metadata of one or several roots: all a plan needs.

    `counts[s]` samples in shard s (shards of all roots concatenated, root by root),
    `root_of[s]` its root, `choose[r]` samples root r gives per epoch.
    """

    counts: np.ndarray   # int64 [S]
    root_of: np.ndarray  # int32 [S]
    choose: np.ndarray   # int64 [R]

    @classmethod
    def single(cls, counts) -> "ShardTable":
        counts = np.asarray(counts, dtype=np.int64)
        return cls(counts, np.zeros(len(counts), np.int32), np.array([counts.sum()], np.int64))

    @property
    def offsets(self) -> np.ndarray:
        """Row of the first sample of each shard."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def total_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def epoch_samples(self) -> int:
        return int(self.choose.sum())


def _segments(table: ShardTable, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shard, copy, count) of every segment of the epoch, in stream order."""
    shards, copies, counts = [], [], []
    for r, choose in enumerate(table.choose.tolist()):
        own = np.flatnonzero(table.root_of == r)
        size = int(table.counts[own].sum())
        if choose and not size:
            raise UsageError(f"root {r} has no samples but is asked for {choose} per epoch")
        if not choose:
            continue
        whole, rest = divmod(choose, size)
        for c in range(whole):
            shards.append(own)
            copies.append(np.full(len(own), c, np.int32))
            counts.append(table.counts[own])
        if rest:
            order = own[np.random.default_rng([seed, epoch, 3, r]).permutation(len(own))]
            cum = np.cumsum(table.counts[order])
            fits = int(np.searchsorted(cum, rest, side="right"))  # whole shards that fit
            taken = int(cum[fits - 1]) if fits else 0
            pick = order[:fits + (taken < rest)]
            take = table.counts[pick].copy()
            if taken < rest:
                take[-1] = rest - taken
            shards.append(pick)
            copies.append(np.full(len(pick), whole, np.int32))
            counts.append(take)
    if not shards:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    shard, copy, count = (np.concatenate(x) for x in (shards, copies, counts))
    keep = count > 0
    shard, copy, count = shard[keep], copy[keep], count[keep]
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(shard))
    return shard[order].astype(np.int64), copy[order], count[order].astype(np.int64)


def partial_positions(seed: int, epoch: int, shard: int, copy: int, size: int, take: int) -> np.ndarray:
    """Which `take` of a shard's `size` samples a partial segment uses, in tar order."""
    if take >= size:
        return np.arange(size, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 4, shard, copy])
    return np.sort(rng.choice(size, take, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class RankEpoch:
    """One rank's epoch: its samples in stream and consumption order, and its batch sizes.

    `stream_rows` are item ids (see the module docstring) in the order they are read;
    `stream_shards`/`stream_positions` say where each lives (global shard number, position in
    the shard's tar order); `rows` are the same ids in consumption order.
    """

    stream_rows: np.ndarray       # int64 item ids, read order
    stream_shards: np.ndarray     # int32 global shard number of each
    stream_positions: np.ndarray  # int32 position inside its shard
    rows: np.ndarray              # int64 item ids, consumption order (blocks shuffled)
    sizes: list[int]
    block: int
    epoch: int = 0

    def bounds(self, batch: int) -> tuple[int, int]:
        """[start, end) of batch `batch` in consumption order."""
        start = sum(self.sizes[:batch])
        return start, start + self.sizes[batch]


def check_arguments(rank: int, world_size: int, batch_size: int, shuffle_block: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
    if batch_size < 1:
        raise UsageError(f"batch_size={batch_size}: expected an integer >= 1")
    if shuffle_block < 1:
        raise UsageError(f"shuffle_block={shuffle_block}: expected an integer >= 1")


def plan_rank_epoch(table: ShardTable | np.ndarray, *, seed: int, epoch: int, rank: int,
                    world_size: int, batch_size: int, drop_last: bool, shuffle_block: int
                    ) -> RankEpoch:
    """The exact plan of `rank` for `epoch` (see the module docstring). `table` may be a plain
    array of per-shard sample counts (one root, read once)."""
    check_arguments(rank, world_size, batch_size, shuffle_block)
    if not isinstance(table, ShardTable):
        table = ShardTable.single(table)
    seg_shard, seg_copy, seg_count = _segments(table, seed, epoch)
    n = int(seg_count.sum())
    num_batches = batches_per_epoch(n, batch_size, world_size, drop_last)
    if drop_last:
        per_rank = num_batches * batch_size
        start, end = rank * per_rank, (rank + 1) * per_rank
    else:
        start, end = rank * n // world_size, (rank + 1) * n // world_size
    cum = np.concatenate([[0], np.cumsum(seg_count)])
    first = int(np.searchsorted(cum, start, side="right")) - 1
    count = max(0, min(end, n) - start)
    # preallocated, 24 bytes per sample of this rank (no per-segment pieces to concatenate)
    stream_rows = np.empty(count, np.int64)
    stream_shards = np.empty(count, np.int32)
    stream_positions = np.empty(count, np.int32)
    offsets, total = table.offsets, table.total_rows
    filled = 0
    for i in range(max(first, 0), len(seg_count)):
        if cum[i] >= end:
            break
        lo, hi = max(start, cum[i]) - cum[i], min(end, cum[i + 1]) - cum[i]
        s, c, size = int(seg_shard[i]), int(seg_copy[i]), int(table.counts[seg_shard[i]])
        take = slice(filled, filled + int(hi - lo))
        if seg_count[i] == size:
            stream_positions[take] = np.arange(lo, hi)
        else:
            stream_positions[take] = partial_positions(seed, epoch, s, c, size, int(seg_count[i]))[lo:hi]
        stream_shards[take] = s
        stream_rows[take] = stream_positions[take]
        stream_rows[take] += c * total + offsets[s]
        filled += int(hi - lo)
    rows = stream_rows.copy()
    for b, lo in enumerate(range(0, len(rows), shuffle_block)):
        rng = np.random.default_rng([seed, epoch, 2, rank, world_size, b])
        rows[lo:lo + shuffle_block] = rows[lo:lo + shuffle_block][rng.permutation(min(shuffle_block, len(rows) - lo))]
    sizes = batch_sizes(len(rows), num_batches, batch_size)
    return RankEpoch(stream_rows, stream_shards, stream_positions, rows, sizes, shuffle_block, epoch)
