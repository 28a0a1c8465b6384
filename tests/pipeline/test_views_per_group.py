"""`data.views_per_group`: G global views per sample, G different photos of its group while it has them."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import Augmentation, ViewConfig, ViewLoader, ViewSpec
from pipeline.dali_graph import feed_arrays
from pipeline.decode_windows import plan_decodes
from pipeline.params import draw_batch, pick_photos, pick_uniforms
from pipeline.samples import ReadStats, SampleRef, check_sample
from sharding.dataset import read_index
from sharding.format import view_member

from tests.pipeline.conftest import build_dataset, decoded_photos
from tests.pipeline.test_roi_decode import MAX_LEVELS, MEAN_LEVELS, PIXELS, PLAIN, draws_of, views_of

G = 3


@pytest.fixture(scope="module")
def groups_dataset(tmp_path_factory) -> str:
    """14 groups of 1-6 photos: 5 with more than 3 (the third photo is a real draw), some with
    exactly 3, 2 and 1."""
    return build_dataset(tmp_path_factory, "views_per_group", num_groups=14, shard_samples=5,
                         min_views=1, max_views=6, seed=5)


def photo_counts(dataset: str) -> dict[str, int]:
    index = read_index(dataset)
    return dict(zip(index.column("key").to_pylist(), index.column("num_views").to_pylist()))


def expected_sources(sources: list[int], n: int) -> None:
    """The documented rule: distinct photos while the group has them, then its picks cycled."""
    distinct = min(G, n)
    assert len(set(sources[:distinct])) == distinct, f"{sources}: repeated photo among {n}"
    assert sources == [sources[j % distinct] for j in range(G)], f"{sources}: not cycled in draw order"
    assert all(0 <= s < n for s in sources)


def old_pick_pair(num_global: int, u0, photos: list[int]) -> tuple[int, int]:
    """The two-photo pick as it was before views_per_group (the reference k = 2 must keep)."""
    if num_global < 2:
        return photos[0], photos[0]
    first = int(u0[0] * len(photos))
    if len(photos) < 2:
        return photos[first], photos[first]
    second = int(u0[1] * (len(photos) - 1))
    return photos[first], photos[second + (second >= first)]


# ---- draws (pure functions, no DALI) -----------------------------------------------------------

def test_two_global_views_pick_exactly_the_old_pairs():
    rows = np.arange(500)
    u = pick_uniforms(7, 3, rows, 2)
    pools = [list(range(1 + r % 6)) for r in rows.tolist()]
    for i, pool in enumerate(pools):
        assert pick_photos(2, tuple(u[i]), pool) == old_pick_pair(2, u[i], pool)
    spec = ViewSpec.simclr(size=32)
    sizes = [{p: (40 + p, 48) for p in pool} for pool in pools]
    draws = draw_batch(spec, 7, 3, rows.tolist(), sizes)
    assert [d.photos for d in draws] == [old_pick_pair(2, u[i], pool) for i, pool in enumerate(pools)]


def test_more_global_views_keep_the_first_two_views_of_the_pair():
    """G = 3 adds a third view: the pair's photos and all parameters of views 0 and 1 are unchanged."""
    rows = list(range(200))
    sizes = [{p: (40 + p, 48 + r % 5) for p in range(1 + r % 5)} for r in rows]
    two = draw_batch(ViewSpec.simclr(size=32), 1, 0, rows, sizes)
    three = draw_batch(ViewSpec.simclr(size=32).with_global_views(G), 1, 0, rows, sizes)
    for a, b in zip(two, three):
        assert b.photos[:2] == a.photos
        np.testing.assert_array_equal(b.params[:2], a.params)


def test_draws_give_distinct_photos_then_cycle_and_locals_crop_the_pair():
    rows = list(range(300))
    sizes = [{p: (40, 40) for p in range(1 + r % 5)} for r in rows]
    spec = ViewSpec.multicrop(global_size=32, local_size=16, num_local=4).with_global_views(G)
    assert [v.kind for v in spec.views] == ["global"] * G + ["local"] * 4
    seen_third = Counter()
    for r, draw in zip(rows, draw_batch(spec, 0, 2, rows, sizes)):
        n = len(sizes[r])
        photos = list(draw.photos)
        expected_sources(photos, n)
        assert draw.params[:G, 0].tolist() == photos  # column "photo" names each global view's photo
        assert draw.params[:G, 1].tolist() == [0, 0 if photos[0] == photos[1] else 1, 2]  # slot
        assert set(draw.params[G:, 0].tolist()) <= {photos[0], photos[1]}  # local crops: photo a or b
        if n >= G:
            seen_third[photos[2]] += 1
    assert len(seen_third) >= 3, "the third photo is not drawn over the group"


def test_a_bad_picked_photo_is_replaced_by_another_distinct_one():
    """The reader checks only the G picked photos and re-picks among the good ones."""
    def jpeg(shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (24, 20), (shade, shade, shade)).save(out, "JPEG")
        return out.getvalue()

    rows = np.arange(40)
    u = pick_uniforms(0, 0, rows, G)
    for row in rows.tolist():
        ref = SampleRef(row, "s", f"k{row}", ("jpg",) * 4, u=tuple(u[row]))
        bad = pick_photos(G, ref.u, [0, 1, 2, 3])[1]
        members = {view_member(ref.key, i, "jpg"): jpeg(40 * i) for i in range(4) if i != bad}
        members[view_member(ref.key, bad, "jpg")] = b"not a jpeg"
        loaded = check_sample(ref, members, ReadStats(), verify=False,
                              pick=lambda r, c: pick_photos(G, r.u, c))
        assert bad not in loaded.candidates and len(loaded.candidates) == 3
        picked = pick_photos(G, ref.u, loaded.candidates)
        assert len(set(picked)) == G and set(picked) <= set(loaded.photos)


def test_a_view_of_its_own_photo_decodes_its_own_window():
    start = np.array([[[0, 0], [2, 2], [1, 1]]], float)
    end = start + 10
    plan = plan_decodes(start, end, np.array([8, 8, 8]), np.full((1, 3, 2), 40), np.array([[0, 1, 2]]))
    assert plan.own[0].tolist() == [False, False, True]
    assert (plan.origin[0, 2] == plan.view_anchor[0, 2]).all()


# ---- real DALI CPU pipelines --------------------------------------------------------------------

def test_every_sample_once_per_epoch_with_distinct_photos(groups_dataset):
    counts = photo_counts(groups_dataset)
    assert {min(c, G + 1) for c in counts.values()} == {1, 2, 3, 4}, "the dataset lacks a group size"
    loader = ViewLoader(groups_dataset, ViewSpec.simclr(size=32).with_global_views(G), 4, seed=9)
    for epoch in range(2):
        keys = []
        for batch in loader.iter_epoch(epoch):
            assert len(batch.views) == G and batch.view_sources.shape[1] == G
            for key, sources in zip(batch.keys, batch.view_sources.tolist()):
                expected_sources(sources, counts[key])
                keys.append(key)
        assert sorted(keys) == sorted(counts), f"epoch {epoch} does not see every sample once"


def test_every_view_shows_the_photo_the_batch_names(groups_dataset):
    """The third global view reads its own photo (not photo a or b) in the DALI graph."""
    plain = Augmentation(center_crop=True, crop_fraction=1.0, flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0)
    spec = ViewSpec(views=[ViewConfig(size=32, augment=plain)] * G, mean=(0, 0, 0), std=(1, 1, 1))
    photos = decoded_photos(groups_dataset)
    checked = 0
    for batch in ViewLoader(groups_dataset, spec, 5, seed=4).iter_epoch(0):
        for i, key in enumerate(batch.keys):
            for v in range(G):
                got = batch.views[v][i].permute(1, 2, 0).numpy()
                errors = {p: np.abs(img - got).mean() for p, img in photos[key].items()}
                named = int(batch.view_sources[i, v])
                assert errors[named] == min(errors.values()) and errors[named] < 0.02
                checked += 1
    assert checked == G * len(read_index(groups_dataset))


@pytest.mark.parametrize("epoch, start", [(0, 1), (1, 2)])
def test_resume_mid_epoch_gives_the_same_draws_and_pixels(groups_dataset, epoch, start):
    spec = ViewSpec.simclr(size=32).with_global_views(G)
    full = list(ViewLoader(groups_dataset, spec, 3, seed=6).iter_epoch(epoch))
    resumed = list(ViewLoader(groups_dataset, spec, 3, seed=6).iter_epoch(epoch, start))
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
        assert a.keys == b.keys and torch.equal(a.view_sources, b.view_sources)
        for x, y in zip(a.views, b.views):
            assert torch.equal(x, y)


def test_three_views_extend_the_two_view_batches(groups_dataset):
    """G = 3 leaves the first two views' pixels exactly as G = 2 (the default) makes them."""
    two = list(ViewLoader(groups_dataset, ViewSpec.simclr(size=32), 4, seed=2).iter_epoch(0))
    three = list(ViewLoader(groups_dataset, ViewSpec.simclr(size=32).with_global_views(G), 4, seed=2).iter_epoch(0))
    assert len(two) == len(three)
    for a, b in zip(two, three):
        assert a.keys == b.keys and torch.equal(a.view_sources, b.view_sources[:, :2])
        assert torch.equal(a.views[0], b.views[0]) and torch.equal(a.views[1], b.views[1])


@pytest.fixture(scope="module")
def photo_groups(tmp_path_factory) -> list[list[np.ndarray]]:
    """12 groups of 1-4 textured 400-500 px JPEGs (real decode windows, not whole 32 px photos)."""
    from testbed.scale import write_photo_corpus

    root = tmp_path_factory.mktemp("roi_photos_g")
    write_photo_corpus(str(root), 12, (1, 4), seed=4)
    return [[np.fromfile(f, dtype=np.uint8) for f in sorted(folder.glob("*.jpg"))]
            for folder in sorted(p for p in root.glob("*/*") if p.is_dir())]


def test_roi_views_equal_full_decode_views_with_three_global_views(photo_groups):
    """The third view's own decode window gives the pixels a whole-photo decode gives."""
    spec = ViewSpec(views=[ViewConfig(size=96, augment=Augmentation(**PLAIN))] * G
                    + [ViewConfig(size=48, kind="local", augment=Augmentation(scale=(0.05, 0.14), **PLAIN))] * 2,
                    **PIXELS)
    draws = draws_of(spec, photo_groups, epoch=1)
    assert any(d.photos[2] not in d.photos[:2] for d in draws)
    roi, _, _ = views_of(spec, photo_groups, roi_decode=True, epoch=1)
    full, _, _ = views_of(spec, photo_groups, roi_decode=False, epoch=1)
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(roi, full)])
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())
    params = np.stack([d.params for d in draws])
    enc = [[g[d.photos[v]] for g, d in zip(photo_groups, draws)] for v in range(2)]
    with pytest.raises(ValueError, match="enc_more"):
        feed_arrays(spec, enc[0], enc[1], np.array([d.photo_a == d.photo_b for d in draws]), params)


def test_without_natural_views_every_view_augments_the_one_photo(groups_dataset):
    counts = photo_counts(groups_dataset)
    loader = ViewLoader(groups_dataset, ViewSpec.simclr(size=32).with_global_views(G), 5, seed=7,
                        natural_views=False)
    seen = []
    for batch in loader.iter_epoch(0):
        for i, (key, sources) in enumerate(zip(batch.keys, batch.view_sources.tolist())):
            assert sources == [sources[0]] * G, f"{key}: several photos in one sample"
            assert not torch.equal(batch.views[0][i], batch.views[2][i])  # another augmentation
            seen.append((key, sources[0]))
    assert sorted(seen) == sorted((k, p) for k, n in counts.items() for p in range(n))
