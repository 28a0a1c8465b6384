"""Issue 11: several roots (local and S3) read as one dataset, with exact per-root epoch sizes."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import ViewLoader, ViewSpec
from pipeline.epochs import ShardTable, plan_rank_epoch
from pipeline.roots import Root, epoch_sizes, parse_roots
from sharding.dataset import read_index
from groundfloor.storage import Storage
from tests.helpers.s3_server import moto_s3_server
from tests.pipeline.conftest import build_dataset
from groundfloor.errors import UsageError

SPEC = ViewSpec.simclr(size=32)


@pytest.fixture(scope="module")
def three_roots(tmp_path_factory, uneven_dataset, two_shard_dataset):
    """[local 23 samples, s3 11 samples, local 7 samples] and the S3 endpoint."""
    third = build_dataset(tmp_path_factory, "third", num_groups=11, shard_samples=3, seed=4)
    with moto_s3_server() as endpoint:
        storage = Storage(endpoint)
        storage.s3.create_bucket(Bucket="roots")
        for entry in storage.list_files(third):
            storage.s3.upload_file(entry.uri, "roots", f"third/{entry.relpath}")
        yield [uneven_dataset, "s3://roots/third", two_shard_dataset], third, endpoint


def keys_of(*roots: str) -> Counter:
    return Counter(k for root in roots for k in read_index(root).column("key").to_pylist())


def epoch(roots, endpoint, rank, world_size, epoch_number=0, batch_size=4, **kw):
    loader = ViewLoader(roots, SPEC, batch_size, rank=rank, world_size=world_size, seed=11,
                        endpoint_url=endpoint, **kw)
    return loader, list(loader.iter_epoch(epoch_number))


@pytest.mark.integration
def test_three_roots_three_ranks_cover_each_sample_once_and_resume_exactly(three_roots):
    roots, third, endpoint = three_roots
    expected = keys_of(roots[0], third, roots[2])
    for epoch_number in (0, 1):
        runs = [epoch(roots, endpoint, r, 3, epoch_number) for r in range(3)]
        counts = {len(batches) for _, batches in runs}
        assert counts == {runs[0][0].batches_per_epoch}  # equal batches per rank
        seen = Counter(k for _, batches in runs for b in batches for k in b.keys)
        assert seen == expected  # every sample of every root exactly once
        groups = {k: g for _, batches in runs for b in batches for k, g in zip(b.keys, b.group_ids)}
        assert len(groups) == len(expected)
    # resume mid-epoch on rank 1: bit-identical to the uninterrupted epoch
    loader, reference = epoch(roots, endpoint, 1, 3, 1)
    seen = []
    for batch in ViewLoader(roots, SPEC, 4, rank=1, world_size=3, seed=11,
                            endpoint_url=endpoint).iter_epoch(1):
        seen.append(batch)
        if len(seen) == 2:
            break
    fresh = ViewLoader(roots, SPEC, 4, rank=1, world_size=3, seed=11, endpoint_url=endpoint)
    resumed = list(fresh.iter_epoch(seen[-1].position.epoch, seen[-1].position.batch))
    assert len(seen + resumed) == len(reference)
    for x, y in zip(seen + resumed, reference):
        assert x.keys == y.keys and x.position == y.position
        assert torch.equal(x.view_sources, y.view_sources)
        assert all(torch.equal(a, b) for a, b in zip(x.views, y.views))


@pytest.mark.integration
def test_per_root_repeat_and_choose_are_honoured_exactly(three_roots):
    roots, third, endpoint = three_roots
    spec = [{"root": roots[0], "repeat": 2}, {"root": roots[1], "choose": 5}, roots[2]]
    # keys may repeat across roots: a sample is (root, row in root), from the item id
    index_keys = [read_index(r).column("key").to_pylist() for r in (roots[0], third, roots[2])]
    starts = np.cumsum([0] + [len(k) for k in index_keys])
    chosen = []
    for epoch_number in (0, 1):
        runs = [epoch(spec, endpoint, r, 2, epoch_number, batch_size=5) for r in range(2)]
        assert runs[0][0].num_samples == 2 * 23 + 5 + 7
        ids = [int(i) for _, batches in runs for b in batches for i in b.rows.tolist()]
        keys = [k for _, batches in runs for b in batches for k in b.keys]
        assert len(ids) == len(set(ids)) == 2 * 23 + 5 + 7  # two copies are two draws
        seen: Counter = Counter()
        for item, key in zip(ids, keys):
            row = item % starts[-1]
            root = int(np.searchsorted(starts, row, side="right")) - 1
            assert index_keys[root][row - starts[root]] == key
            seen[root, row - starts[root]] += 1
        assert all(seen[0, i] == 2 for i in range(23)) and all(seen[2, i] == 1 for i in range(7))
        picked = sorted(i for i in range(11) if seen[1, i])
        assert len(picked) == 5 and all(seen[1, i] == 1 for i in picked)
        assert sum(seen.values()) == 58
        chosen.append(picked)
    assert chosen[0] != chosen[1]  # the subset of a partly read root changes with the epoch


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_plan_honours_choose_repeat_and_proportion_exactly(world_size):
    counts = np.array([5, 7, 3, 9, 2, 4], np.int64)
    root_of = np.array([0, 0, 1, 1, 2, 2], np.int32)
    roots = [Root("a", proportion=3), Root("b", repeat=1.5), Root("c", proportion=1)]
    sizes = [12, 12, 6]
    choose = epoch_sizes(roots, sizes, epoch_size=50)
    assert choose == [24, 18, 8]  # b takes 18, the 32 left split 3:1
    table = ShardTable(counts, root_of, np.array(choose, np.int64))
    offsets = table.offsets
    root_of_row = np.repeat(root_of, counts)
    for epoch_number in range(3):
        plans = [plan_rank_epoch(table, seed=2, epoch=epoch_number, rank=r, world_size=world_size,
                                 batch_size=4, drop_last=False, shuffle_block=5)
                 for r in range(world_size)]
        ids = np.concatenate([p.rows for p in plans])
        assert len(ids) == len(set(ids.tolist())) == sum(choose)
        rows = ids % table.total_rows
        per_root = np.bincount(root_of_row[rows], minlength=3)
        assert per_root.tolist() == choose
        # a root repeated k whole times gives each of its samples k or k+1 times
        for r, (n, k) in enumerate(zip(sizes, choose)):
            times = np.bincount(rows[root_of_row[rows] == r] - offsets[root_of == r][0], minlength=n)
            assert set(times.tolist()) <= {k // n, k // n + 1}
        for p in plans:  # positions point into the shard each sample is said to be in
            assert np.all(p.stream_positions < counts[p.stream_shards])
            assert np.all(p.stream_rows % table.total_rows == offsets[p.stream_shards] + p.stream_positions)


def test_bad_root_lists_are_one_line_errors():
    with pytest.raises(UsageError, match="at most one"):
        parse_roots([{"root": "a", "repeat": 2, "choose": 3}])
    with pytest.raises(UsageError, match="twice"):
        parse_roots(["a", "a/"])
    with pytest.raises(UsageError, match="non-empty"):
        parse_roots([])
    with pytest.raises(UsageError, match="must be a number"):
        parse_roots([{"root": "a", "choose": 2.5}])
    with pytest.raises(UsageError, match="epoch_size"):
        epoch_sizes([Root("a")], [3], epoch_size=10)


def test_a_training_config_takes_a_list_of_roots(uneven_dataset, two_shard_dataset):
    from trainers.config import DataConfig, dataset_arg, dataset_roots

    data = DataConfig(dataset=[uneven_dataset, {"root": two_shard_dataset, "choose": 3}],
                      verify="none")
    assert dataset_roots(data.dataset) == [uneven_dataset, two_shard_dataset]
    loader = ViewLoader(dataset_arg(data.dataset), SPEC, 4, verify=data.verify)
    assert loader.num_samples == 23 + 3
    assert sum(len(b) for b in loader.iter_epoch(0)) == 26
    with pytest.raises(Exception, match="at most one"):
        DataConfig(dataset=[{"root": "a", "repeat": 1, "choose": 2}])
