"""Acceptance 3 of issue 3: natural views (two different photos of a group per epoch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import Augmentation, ViewConfig, ViewLoader, ViewSpec
from sharding.dataset import read_index

from tests.pipeline.conftest import build_dataset, decoded_photos


@pytest.fixture(scope="module")
def multi_photo_dataset(tmp_path_factory) -> str:
    """12 groups of 2-4 photos plus, from the shared corpus generator, some groups of one."""
    return build_dataset(tmp_path_factory, "multi", num_groups=12, shard_samples=5,
                         min_views=1, max_views=4, seed=3)


def photo_counts(dataset: str) -> dict[str, int]:
    index = read_index(dataset)
    return dict(zip(index.column("key").to_pylist(), index.column("num_views").to_pylist()))


def test_global_views_come_from_different_photos_and_pairs_change(multi_photo_dataset):
    counts = photo_counts(multi_photo_dataset)
    assert any(c >= 2 for c in counts.values()) and any(c == 1 for c in counts.values())
    loader = ViewLoader(multi_photo_dataset, ViewSpec.simclr(size=32), 4, seed=11)
    pairs_by_epoch = []
    for epoch in range(4):
        pairs = {}
        for batch in loader.iter_epoch(epoch):
            for key, sources in zip(batch.keys, batch.view_sources.tolist()):
                n = counts[key]
                assert all(0 <= s < n for s in sources)
                if n >= 2:
                    assert sources[0] != sources[1], f"{key}: both global views from photo {sources[0]}"
                else:
                    assert sources == [0, 0]
                pairs[key] = tuple(sources)
        pairs_by_epoch.append(pairs)
    multi = [k for k, c in counts.items() if c >= 2]
    changed = sum(len({pairs_by_epoch[e][k] for e in range(4)}) > 1 for k in multi)
    assert changed >= len(multi) // 2, "pairs are not redrawn across epochs"


def test_group_of_one_gives_two_different_augmentations(multi_photo_dataset):
    counts = photo_counts(multi_photo_dataset)
    loader = ViewLoader(multi_photo_dataset, ViewSpec.simclr(size=32), 16, seed=2)
    batch = next(loader.iter_epoch(0))
    singles = [i for i, k in enumerate(batch.keys) if counts[k] == 1]
    assert singles
    for i in singles:
        assert not torch.equal(batch.views[0][i], batch.views[1][i])


def test_views_show_the_photo_the_batch_names(multi_photo_dataset):
    """Each global view's pixels match the photo `view_sources` names, not its group mates."""
    plain = Augmentation(center_crop=True, crop_fraction=1.0, flip_p=0, jitter_p=0, grayscale_p=0,
                         blur_p=0)
    spec = ViewSpec(views=[ViewConfig(size=32, augment=plain)] * 2, mean=(0, 0, 0), std=(1, 1, 1))
    photos = decoded_photos(multi_photo_dataset)
    loader = ViewLoader(multi_photo_dataset, spec, 6, seed=4)
    checked = 0
    for batch in loader.iter_epoch(1):
        for i, key in enumerate(batch.keys):
            for v in range(2):
                got = batch.views[v][i].permute(1, 2, 0).numpy()
                errors = {p: np.abs(img - got).mean() for p, img in photos[key].items()}
                named = int(batch.view_sources[i, v])
                assert errors[named] == min(errors.values()) and errors[named] < 0.02
                checked += 1
    assert checked == 2 * len(read_index(multi_photo_dataset))


# ---- data.natural_views: false (every photo its own sample) -------------------------------------

def all_photos(dataset: str) -> set[tuple[str, int]]:
    return {(k, v) for k, n in photo_counts(dataset).items() for v in range(n)}


def test_without_natural_views_every_photo_is_a_sample_seen_once_per_epoch(multi_photo_dataset):
    photos = all_photos(multi_photo_dataset)
    assert len(photos) > len(photo_counts(multi_photo_dataset))  # there are groups of several
    groups = dict(zip(read_index(multi_photo_dataset).column("key").to_pylist(),
                      read_index(multi_photo_dataset).column("group_id").to_pylist()))
    loader = ViewLoader(multi_photo_dataset, ViewSpec.simclr(size=32), 5, seed=7, natural_views=False)
    assert loader.num_samples == len(photos)
    orders = []
    for epoch in range(2):
        seen = []
        for batch in loader.iter_epoch(epoch):
            for i, (key, group, sources) in enumerate(zip(batch.keys, batch.group_ids, batch.view_sources.tolist())):
                assert sources[0] == sources[1], f"{key}: two photos in one sample"
                assert group == groups[key]
                assert not torch.equal(batch.views[0][i], batch.views[1][i])  # two augmentations
                seen.append((key, sources[0]))
        assert len(seen) == len(set(seen)) and set(seen) == photos, f"epoch {epoch}"
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_without_natural_views_ranks_split_the_photos(multi_photo_dataset):
    """3 ranks, drop_last=False: disjoint shares whose union is every photo once."""
    photos = all_photos(multi_photo_dataset)
    seen: list[tuple[str, int]] = []
    for rank in range(3):
        loader = ViewLoader(multi_photo_dataset, ViewSpec.simclr(size=32), 4, rank=rank, world_size=3,
                            seed=1, natural_views=False)
        # the plan is made from shard-level photo counts: it names positions, nothing per sample
        assert len(loader.plan(0).stream_rows) in (len(photos) // 3, len(photos) // 3 + 1)
        for batch in loader.iter_epoch(0):
            seen += [(k, s[0]) for k, s in zip(batch.keys, batch.view_sources.tolist())]
    assert len(seen) == len(set(seen)) and set(seen) == photos


def test_without_natural_views_a_view_shows_its_own_photo(multi_photo_dataset):
    plain = Augmentation(center_crop=True, crop_fraction=1.0, flip_p=0, jitter_p=0, grayscale_p=0,
                         blur_p=0)
    spec = ViewSpec(views=[ViewConfig(size=32, augment=plain)] * 2, mean=(0, 0, 0), std=(1, 1, 1))
    photos = {(key, view): image for key, views in decoded_photos(multi_photo_dataset).items()
              for view, image in views.items()}
    loader = ViewLoader(multi_photo_dataset, spec, 6, seed=4, natural_views=False)
    checked = 0
    for batch in loader.iter_epoch(0):
        for i, key in enumerate(batch.keys):
            got = batch.views[0][i].permute(1, 2, 0).numpy()
            mine = int(batch.view_sources[i, 0])
            assert np.abs(photos[(key, mine)] - got).mean() < 0.02
            checked += 1
    assert checked == len(photos)


def test_train_config_natural_views_defaults_on_and_can_be_switched_off():
    from trainers.config import DataConfig

    assert DataConfig(dataset="x").natural_views is True
    assert DataConfig(dataset="x", natural_views=False).natural_views is False
