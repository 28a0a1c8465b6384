"""Elastic exact epochs: a global batch's samples do not depend on the number of ranks, so a run
resumed on another number of workers still sees every sample exactly once (issue 22)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline import ViewLoader, ViewSpec
from pipeline.epochs import ShardTable, plan_rank_epoch

GLOBAL_BATCH = 12
LAYOUTS = {
    "uneven shards": ShardTable.single([50, 7, 31, 64, 3, 85]),  # 240 samples
    "two roots, one repeated": ShardTable(np.array([40, 40, 33, 20, 17], np.int64),
                                          np.array([0, 0, 0, 1, 1], np.int32), np.array([113, 91], np.int64)),
}


def global_batches(table, world_size: int, *, epoch: int = 1, drop_last: bool = True,
                   shuffle_block: int = 40) -> list[list[int]]:
    """Each global batch as the ranks' batches concatenated in rank order."""
    plans = [plan_rank_epoch(table, seed=5, epoch=epoch, rank=r, world_size=world_size,
                             batch_size=GLOBAL_BATCH // world_size, drop_last=drop_last,
                             shuffle_block=shuffle_block) for r in range(world_size)]
    assert len({len(p.sizes) for p in plans}) == 1, "ranks plan different numbers of batches"
    out = []
    for b in range(len(plans[0].sizes)):
        out.append([int(x) for p in plans for x in p.rows[slice(*p.bounds(b))]])
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("drop_last", [True, False])
def test_global_batches_do_not_depend_on_the_number_of_workers(layout, drop_last):
    reference = global_batches(LAYOUTS[layout], 1, drop_last=drop_last)
    assert len(reference) >= 15
    for world_size in (2, 3, 4, 6):
        assert global_batches(LAYOUTS[layout], world_size, drop_last=drop_last) == reference, world_size


def test_global_batches_change_with_the_epoch():
    table = LAYOUTS["uneven shards"]
    assert global_batches(table, 2, epoch=1) != global_batches(table, 2, epoch=2)


@pytest.mark.parametrize("before,after,drop_last", [(4, 3, False), (2, 6, False), (6, 4, True), (1, 4, True)])
@pytest.mark.parametrize("stop", [1, 7])
def test_an_epoch_resumed_on_another_worker_count_sees_every_sample_once(before, after, drop_last, stop):
    table = LAYOUTS["uneven shards"]
    first = global_batches(table, before, drop_last=drop_last)[:stop]
    rest = global_batches(table, after, drop_last=drop_last)[stop:]
    seen = Counter(x for batch in first + rest for x in batch)
    assert set(seen.values()) == {1}
    expected = 240 if not drop_last else (240 // GLOBAL_BATCH) * GLOBAL_BATCH
    assert len(seen) == expected


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 6])
def test_a_rank_s_read_blocks_and_consumption_blocks_hold_the_same_samples(world_size):
    """What the producer relies on to hand over a block once all of it has been read."""
    for rank in range(world_size):
        plan = plan_rank_epoch(LAYOUTS["two roots, one repeated"], seed=1, epoch=0, rank=rank,
                               world_size=world_size, batch_size=GLOBAL_BATCH // world_size,
                               drop_last=False, shuffle_block=30)
        for lo in range(0, len(plan.rows), plan.block):
            assert sorted(plan.rows[lo:lo + plan.block]) == sorted(plan.stream_rows[lo:lo + plan.block])
        assert np.all(np.diff(plan.stream_rows) != 0)


def test_a_rank_reads_mostly_its_own_part_of_each_block():
    """Sorting each global batch by stream position before slicing keeps a rank's reads local:
    with 4 ranks, a rank's samples of a block span far less than the block."""
    table = ShardTable.single([1000] * 8)
    plan = plan_rank_epoch(table, seed=0, epoch=0, rank=1, world_size=4, batch_size=64,
                           drop_last=True, shuffle_block=2048)
    for lo in range(0, len(plan.rows), plan.block):
        shards = plan.stream_shards[lo:lo + plan.block]
        positions = plan.stream_positions[lo:lo + plan.block]
        span = sum(int(np.ptp(positions[shards == s])) + 1 for s in np.unique(shards))
        assert span < 0.5 * 2048  # a slice spread over the whole block would span ~2048


def test_real_loaders_give_the_same_global_batches_for_1_2_and_3_workers(uneven_dataset):
    spec = ViewSpec.simclr(size=32)

    def keys(world_size: int) -> list[list[str]]:
        per_rank = []
        for rank in range(world_size):
            loader = ViewLoader(uneven_dataset, spec, 6 // world_size, rank=rank, world_size=world_size,
                                seed=3, drop_last=True, shuffle_block=12)
            per_rank.append([b.keys for b in loader.iter_epoch(1)])
        return [[k for rank in per_rank for k in rank[b]] for b in range(len(per_rank[0]))]

    reference = keys(1)
    assert reference and keys(2) == reference and keys(3) == reference
