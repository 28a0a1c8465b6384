"""Acceptance 1 (exact epochs) and 2 (resume) of issue 3."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import DataPosition, ViewLoader, ViewSpec
from pipeline.epochs import batch_sizes, batches_per_epoch, plan_rank_epoch
from sharding.dataset import read_index
from groundfloor.errors import UsageError

SPEC = ViewSpec.simclr(size=32)


def shards_of(counts: list[int]) -> np.ndarray:
    return np.asarray(counts, dtype=np.int64)  # a plan needs only per-shard sample counts


@pytest.mark.parametrize("counts", [[6, 6, 6, 5], [9, 1, 3], [4, 3], [1], [17]])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_plan_covers_every_sample_once_with_equal_batch_counts(counts, world_size, batch_size):
    shards = shards_of(counts)
    n = int(shards.sum())
    for drop_last in (False, True):
        plans = [plan_rank_epoch(shards, seed=3, epoch=1, rank=r, world_size=world_size,
                                 batch_size=batch_size, drop_last=drop_last, shuffle_block=4)
                 for r in range(world_size)]
        expected_batches = batches_per_epoch(n, batch_size, world_size, drop_last)
        assert all(len(p.sizes) == expected_batches for p in plans)
        seen = Counter(int(r) for p in plans for r in p.rows)
        assert all(c == 1 for c in seen.values())
        assert all(sum(p.sizes) == len(p.rows) for p in plans)
        if drop_last:
            assert all(s == batch_size for p in plans for s in p.sizes)
            assert len(seen) == expected_batches * batch_size * world_size
        else:
            assert sorted(seen) == list(range(n))
            for p in plans:  # only the tail is short
                assert p.sizes == sorted(p.sizes, reverse=True)
            for b in range(expected_batches):  # each global batch split as evenly as it goes
                split = [p.sizes[b] for p in plans]
                assert max(split) - min(split) <= 1


def test_batch_sizes_take_the_shortfall_from_the_end():
    assert batch_sizes(10, 3, 4) == [4, 4, 2]
    assert batch_sizes(4, 2, 4) == [3, 1]
    assert batch_sizes(1, 3, 4) == [1, 0, 0]
    assert batch_sizes(0, 2, 4) == [0, 0]


def test_plan_rejects_bad_rank():
    with pytest.raises(UsageError, match="rank=2"):
        plan_rank_epoch(shards_of([3]), seed=0, epoch=0, rank=2, world_size=2, batch_size=1,
                        drop_last=False, shuffle_block=4)


def run_epoch(dataset: str, epoch: int, world_size: int, batch_size: int, **kw):
    """keys per rank per batch, from real ViewLoaders (one per simulated rank)."""
    out = []
    for rank in range(world_size):
        loader = ViewLoader(dataset, SPEC, batch_size, rank=rank, world_size=world_size, seed=7, **kw)
        batches = list(loader.iter_epoch(epoch))
        assert len(batches) == loader.batches_per_epoch
        out.append([b.keys for b in batches])
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("fixture", ["uneven_dataset", "two_shard_dataset"])
def test_each_key_once_per_epoch_across_ranks(request, fixture, world_size):
    dataset = request.getfixturevalue(fixture)
    per_rank = run_epoch(dataset, 0, world_size, batch_size=2)
    assert len({len(batches) for batches in per_rank}) == 1, "ranks yield different batch counts"
    keys = [k for batches in per_rank for batch in batches for k in batch]
    all_keys = read_index(dataset).column("key").to_pylist()
    assert sorted(keys) == sorted(all_keys)


def test_drop_last_gives_full_batches_on_every_rank(uneven_dataset):
    per_rank = run_epoch(uneven_dataset, 0, 3, batch_size=3, drop_last=True)
    assert all(len(batches) == 23 // 9 for batches in per_rank)
    keys = [k for batches in per_rank for batch in batches for k in batch]
    assert all(len(batch) == 3 for batches in per_rank for batch in batches)
    assert len(set(keys)) == len(keys) == 18


def test_rank_without_data_yields_empty_batches_and_never_blocks(two_shard_dataset):
    per_rank = run_epoch(two_shard_dataset, 0, 3, batch_size=4)  # 7 samples over 3 ranks
    assert [len(b) for b in per_rank] == [1, 1, 1]
    loader = ViewLoader(two_shard_dataset, SPEC, 8, rank=0, world_size=8)  # 7 samples, 8 ranks
    batches = list(loader.iter_epoch(0))
    assert len(batches) == 1 and len(batches[0]) == 0
    assert [tuple(v.shape) for v in batches[0].views] == [(0, 3, 32, 32)] * 2


def test_order_changes_with_epoch_and_is_reproducible_from_seed(uneven_dataset):
    first = run_epoch(uneven_dataset, 0, 2, batch_size=4)
    second = run_epoch(uneven_dataset, 1, 2, batch_size=4)
    again = run_epoch(uneven_dataset, 1, 2, batch_size=4)
    assert second == again
    assert first != second
    assert sorted(itertools.chain(*itertools.chain(*first))) == \
        sorted(itertools.chain(*itertools.chain(*second)))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys == y.keys and x.batch == y.batch and x.position == y.position
        assert torch.equal(x.view_sources, y.view_sources)
        for vx, vy in zip(x.views, y.views):
            assert torch.equal(vx, vy)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_yields_exactly_the_batches_of_an_uninterrupted_run(uneven_dataset, stop_after):
    spec = ViewSpec.multicrop(global_size=32, local_size=16, num_local=2)
    full = ViewLoader(uneven_dataset, spec, 3, rank=1, world_size=2, seed=5, shuffle_block=5)
    reference = list(full.iter_epoch(2))
    assert len(reference) == full.batches_per_epoch == 4

    interrupted = ViewLoader(uneven_dataset, spec, 3, rank=1, world_size=2, seed=5, shuffle_block=5)
    seen = []
    for batch in interrupted.iter_epoch(2):
        seen.append(batch)
        if len(seen) == stop_after:
            break
    position = DataPosition.from_dict(seen[-1].position.as_dict())  # as a checkpoint stores it
    assert position == DataPosition(2, stop_after)
    # the same loader (pipeline rebuilt) and a fresh one (a restarted process) both resume exactly
    resumed_same = list(interrupted.iter_epoch(position.epoch, position.batch))
    fresh = ViewLoader(uneven_dataset, spec, 3, rank=1, world_size=2, seed=5, shuffle_block=5)
    resumed_fresh = list(fresh.iter_epoch(position.epoch, position.batch))
    assert_same_batches(seen + resumed_same, reference)
    assert_same_batches(resumed_fresh, reference[stop_after:])
    assert reference[-1].position == DataPosition(3, 0)


def test_one_open_epoch_iterator_per_loader(uneven_dataset):
    loader = ViewLoader(uneven_dataset, SPEC, 4)
    first = loader.iter_epoch(0)
    next(first)
    with pytest.raises(UsageError, match="still open"):
        next(loader.iter_epoch(1))
    first.close()
    assert len(list(loader.iter_epoch(1))) == loader.batches_per_epoch
