"""Exact, elastic epochs: which samples each rank sees, in which order, in which batches.

Everything is a pure function of (seed, epoch) over *shard-level* metadata (the per-shard sample
counts of every root and how many samples each root gives per epoch), and the number of ranks
only decides how each global batch is split. Nothing here is an array over the corpus: a rank
holds O(shards + its own samples) and passes once over the epoch's positions in bounded pieces.

1. Each root gives `choose` samples per epoch (default: all of them once). ``choose // N``
   whole copies of the root, plus a remainder drawn at shard level: the root's shards in a
   seeded order, whole shards while they fit, then a seeded subset of the next shard. The
   result is a list of *segments* (shard, copy, how many samples of it).
2. The segments of all roots are put in a random order for the epoch and their samples
   concatenated: the *stream*, read front to back in tar order within each segment.
3. The epoch uses the first ``(N // B) * B`` stream positions with ``drop_last=True`` (B: the
   global batch, batch_size x world_size), all N otherwise. They are cut into global blocks of
   L positions (`shuffle_block` rounded up to a multiple of B) and each block is shuffled by
   (seed, epoch, block): the *consumption order*. Global batch b is positions [bB, (b+1)B) of
   it, so its set of samples and their order depend on (seed, epoch, B), not on the ranks.
4. Rank r of W takes the r-th of W equal slices of each global batch, the batch sorted by stream
   position (the last, short global batch of ``drop_last=False`` is split as evenly as it goes:
   some ranks may get an empty batch, never a different number of batches). Concatenating the
   ranks' batches in rank order gives the global batch, the same for every W that divides B:
   a run resumed at global batch k on another number of ranks sees every sample exactly once
   (mosaicml/streaming keeps the global order fixed over canonical nodes to the same end).
   Sorting by stream position keeps each rank's reads local: within a block a rank reads mostly
   its own 1/W of the block's stream, front to back.

A sample's *item id* is ``copy * total_rows + row`` (row: its position in the concatenation of
all roots' shards), unique within an epoch even when a root repeats, and the key of all its
random draws; for one root read once it is the row itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

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
    """One rank's epoch: its samples in read and consumption order, and its batch sizes.

    `stream_rows` are item ids (see the module docstring) in read order (stream position);
    `stream_shards`/`stream_positions` say where each lives (global shard number, position in
    the shard's tar order); `rows` are the same ids in consumption order (batch by batch).
    Invariant the producer relies on: for every k, `rows[k*block:(k+1)*block]` and
    `stream_rows[k*block:(k+1)*block]` hold the same ids (a rank's share of global block k).
    """

    stream_rows: np.ndarray       # int64 item ids, read order
    stream_shards: np.ndarray     # int32 global shard number of each
    stream_positions: np.ndarray  # int32 position inside its shard
    rows: np.ndarray              # int64 item ids, consumption order
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


def global_block(global_batch: int, shuffle_block: int) -> int:
    """Positions shuffled together: `shuffle_block` rounded up to whole global batches, so a
    global batch never straddles two blocks."""
    return -(-shuffle_block // global_batch) * global_batch


POSITIONS_PER_PIECE = 1 << 20  # consumption positions permuted at once (bounds transient memory)


def _consumption_pieces(seed: int, epoch: int, used: int, block: int) -> Iterator[np.ndarray]:
    """The consumption order of stream positions [0, used), in pieces of whole blocks; each
    block is shuffled by (seed, epoch, block number) alone."""
    per_piece = max(1, POSITIONS_PER_PIECE // block)
    for first in range(0, -(-used // block), per_piece):
        lo = first * block
        hi = min(used, (first + per_piece) * block)
        whole = (hi - lo) // block
        grid = np.arange(lo, lo + whole * block, dtype=np.int64).reshape(whole, block)
        for k in range(whole):
            np.random.default_rng([seed, epoch, 2, first + k]).shuffle(grid[k])
        tail = np.arange(lo + whole * block, hi, dtype=np.int64)
        np.random.default_rng([seed, epoch, 2, first + whole]).shuffle(tail)
        yield np.concatenate([grid.reshape(-1), tail])


def _rank_share(positions: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's slice of one global batch: the batch sorted by stream position, cut in W
    slices as evenly as it goes (equal when W divides its size)."""
    lo = rank * len(positions) // world_size
    hi = (rank + 1) * len(positions) // world_size
    if hi - lo == len(positions):
        return np.sort(positions)
    if hi == lo:
        return positions[:0]
    kth = [lo, hi - 1] if hi - 1 > lo else [lo]
    return np.sort(np.partition(positions, kth)[lo:hi])


def _rank_positions(seed: int, epoch: int, used: int, global_batch: int, block: int, rank: int,
                    world_size: int) -> tuple[np.ndarray, list[int]]:
    """(stream positions of this rank in consumption order, its batch sizes)."""
    mine: list[np.ndarray] = []
    sizes: list[int] = []
    per_rank = global_batch // world_size
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    for piece in _consumption_pieces(seed, epoch, used, block):
        full = len(piece) // global_batch
        if full:
            grid = piece[:full * global_batch].reshape(full, global_batch)
            kth = [lo, hi - 1] if hi - 1 > lo else [lo]
            share = np.sort(np.partition(grid, kth, axis=1)[:, lo:hi], axis=1)
            mine.append(share.reshape(-1))
            sizes += [per_rank] * full
        if len(piece) > full * global_batch:  # the short last global batch (drop_last=False)
            share = _rank_share(piece[full * global_batch:], rank, world_size)
            mine.append(share)
            sizes.append(len(share))
    return (np.concatenate(mine) if mine else np.zeros(0, np.int64)), sizes


def plan_rank_epoch(table: ShardTable | np.ndarray, *, seed: int, epoch: int, rank: int,
                    world_size: int, batch_size: int, drop_last: bool, shuffle_block: int
                    ) -> RankEpoch:
    """The exact plan of `rank` for `epoch` (see the module docstring); `batch_size` is per rank.
    `table` may be a plain array of per-shard sample counts (one root, read once)."""
    check_arguments(rank, world_size, batch_size, shuffle_block)
    if not isinstance(table, ShardTable):
        table = ShardTable.single(table)
    seg_shard, seg_copy, seg_count = _segments(table, seed, epoch)
    n = int(seg_count.sum())
    global_batch = batch_size * world_size
    used = (n // global_batch) * global_batch if drop_last else n
    block = global_block(global_batch, shuffle_block)
    consumed, sizes = _rank_positions(seed, epoch, used, global_batch, block, rank, world_size)
    sizes += [0] * (batches_per_epoch(n, batch_size, world_size, drop_last) - len(sizes))
    # where each position lives: its segment, then its shard, copy and place in the tar
    cum = np.concatenate([[0], np.cumsum(seg_count)])
    order = np.argsort(consumed, kind="stable")
    stream = consumed[order]
    seg = np.searchsorted(cum, stream, side="right") - 1
    positions = stream - cum[seg]
    shards = seg_shard[seg]
    copies = seg_copy[seg].astype(np.int64)
    for i in np.unique(seg[seg_count[seg] != table.counts[shards]]).tolist():  # partial segments
        s, c = int(seg_shard[i]), int(seg_copy[i])
        at = seg == i
        chosen = partial_positions(seed, epoch, s, c, int(table.counts[s]), int(seg_count[i]))
        positions[at] = chosen[positions[at]]
    stream_rows = copies * table.total_rows + table.offsets[shards] + positions
    rows = np.empty_like(stream_rows)
    rows[order] = stream_rows
    return RankEpoch(stream_rows, shards.astype(np.int32), positions.astype(np.int32), rows, sizes,
                     block // world_size, epoch)
