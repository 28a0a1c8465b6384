"""Acceptance 6 of issue 3: bad data inside a shard is skipped, logged and counted."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile

import pytest

from pipeline import ViewLoader, ViewSpec
from sharding.dataset import read_index, shard_uri

from tests.pipeline.conftest import build_dataset

SPEC = ViewSpec.simclr(size=32)


def rewrite_shard(path: str, edit) -> None:
    """Rewrite a shard tar, passing each (name, bytes) through `edit` (None drops the member)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            out = edit(name, data)
            if out is None:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(out)
            tar.addfile(info, io.BytesIO(out))
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A dataset with: one view replaced by garbage (sha256 mismatch), one view replaced by
    garbage whose sha256 the JSON records (undecodable), one view missing, and one group of
    one whose only photo is garbage (the whole sample is skipped)."""
    root = build_dataset(tmp_path_factory, "damaged", num_groups=14, shard_samples=5, seed=5)
    index = read_index(root)
    rows = list(zip(index.column("shard").to_pylist(), index.column("key").to_pylist(),
                    index.column("num_views").to_pylist(), index.column("view_exts").to_pylist()))
    multi = [r for r in rows if r[2] >= 3]
    single = [r for r in rows if r[2] == 1]
    assert len(multi) >= 3 and single
    (s1, k1, _, e1), (s2, k2, _, e2), (s3, k3, _, e3) = multi[:3]
    s4, k4, _, e4 = single[0]
    garbage = b"this is not an image" * 20
    edits = {
        (s1, f"{k1}.1.{e1[1]}"): lambda d: garbage,                      # sha256 mismatch
        (s2, f"{k2}.2.{e2[2]}"): lambda d: garbage,                      # undecodable (sha fixed below)
        (s2, f"{k2}.json"): lambda d: fix_sha(d, 2, garbage),
        (s3, f"{k3}.0.{e3[0]}"): lambda d: None,                         # missing view
        (s4, f"{k4}.0.{e4[0]}"): lambda d: garbage,                      # only photo bad
    }
    for shard in {s for s, _ in edits}:
        rewrite_shard(shard_uri(root, shard), lambda name, data, shard=shard:
                      edits.get((shard, name), lambda d: d)(data))
    return root, {"mismatch": k1, "undecodable": k2, "missing": k3, "skipped": k4}, len(rows)


def fix_sha(meta_bytes: bytes, view: int, data: bytes) -> bytes:
    meta = json.loads(meta_bytes)
    meta["sha256"][view] = hashlib.sha256(data).hexdigest()
    return json.dumps(meta).encode()


def test_bad_members_are_skipped_logged_and_counted(damaged, caplog):
    """Only the photos an epoch draws are checked (sha256, header): a bad photo is counted in
    the epochs that draw it, never used, and its group still gives views from the others."""
    root, keys, num_samples = damaged
    loader = ViewLoader(root, SPEC, 4, seed=1)
    reasons: set[str] = set()
    for epoch in range(6):
        before = loader.stats.as_dict()
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            batches = list(loader.iter_epoch(epoch))
        assert len(batches) == loader.batches_per_epoch  # the batch count never changes
        seen = [k for b in batches for k in b.keys]
        assert keys["skipped"] not in seen
        assert len(set(seen)) == num_samples - 1
        assert len(seen) == num_samples  # the hole is filled by repeating a good sample
        assert [len(b) for b in batches] == loader.plan(epoch).sizes
        for name in ("mismatch", "undecodable", "missing"):
            assert keys[name] in seen  # the group's other photos still make views
        stats = loader.stats.as_dict()
        assert stats["skipped_samples"] - before["skipped_samples"] == 1
        assert stats["filled"] - before["filled"] == 1
        assert 1 <= stats["bad_photos"] - before["bad_photos"] <= 4
        reasons |= set(stats["reasons"])
        for batch in batches:  # bad photos are never named as a view's source
            for key, sources in zip(batch.keys, batch.view_sources.tolist()):
                if key == keys["missing"]:
                    assert 0 not in sources
                if key == keys["undecodable"]:
                    assert 2 not in sources
                if key == keys["mismatch"]:
                    assert 1 not in sources
    assert reasons == {"sha256_mismatch", "undecodable", "missing_view", "no_good_view"}
    assert loader.stats.reasons["no_good_view"] == 6
    text = caplog.text
    assert "sha256_mismatch" in text and "undecodable" in text and "missing_view" in text


def test_verify_none_skips_the_sha256_check_only(damaged):
    root, keys, _ = damaged
    loader = ViewLoader(root, SPEC, 4, seed=1, verify="none")
    for epoch in range(4):
        list(loader.iter_epoch(epoch))
    assert "sha256_mismatch" not in loader.stats.reasons  # garbage is still caught by its header
    assert loader.stats.reasons["undecodable"] >= 1 and loader.stats.reasons["no_good_view"] == 4
    with pytest.raises(Exception, match="verify"):
        ViewLoader(root, SPEC, 4, verify="md5")


def test_truncated_images_without_a_recorded_sha256_are_caught(tmp_path_factory):
    """DALI would abort the batch on a truncated JPEG/PNG; the end-marker check drops it."""
    root = build_dataset(tmp_path_factory, "truncated_images", num_groups=6, shard_samples=6,
                         seed=8, min_views=2, max_views=2)
    index = read_index(root)
    shard = index.column("shard").to_pylist()[0]
    exts = index.column("view_exts").to_pylist()
    keys = index.column("key").to_pylist()
    assert {e[0] for e in exts} == {"jpg", "png"}
    truncate = {f"{k}.0.{e[0]}" for k, e in zip(keys, exts)}

    def edit(name, data):
        if name.endswith(".json"):
            meta = json.loads(data)
            meta.pop("sha256")
            return json.dumps(meta).encode()
        return data[: len(data) * 2 // 3] if name in truncate else data

    rewrite_shard(shard_uri(root, shard), edit)
    loader = ViewLoader(root, SPEC, 3)
    batches = list(loader.iter_epoch(0))
    assert sorted(k for b in batches for k in b.keys) == sorted(keys)
    assert all((b.view_sources == 1).all() for b in batches)  # only the intact photos are used
    reasons = loader.stats.reasons  # a PNG cut before its first IDAT already fails PIL's open
    assert loader.stats.bad_photos == 6 and set(reasons) <= {"truncated", "undecodable"}
    assert reasons["truncated"] >= 4


@pytest.mark.parametrize("pipelines", [1, 2])
def test_a_photo_only_dali_chokes_on_is_dropped_and_the_epoch_goes_on(tmp_path_factory, pipelines):
    """A PNG with damaged compressed data, its sha256 recorded after the damage, passes the
    cheap checks; DALI aborts the batch; the loader drops that sample and carries on. With two
    pipelines, the batches in flight in both are rechecked and replayed in order."""
    root = build_dataset(tmp_path_factory, "damaged_png", num_groups=8, shard_samples=8,
                         seed=9, min_views=1, max_views=1, formats=("png",))
    index = read_index(root)
    shard, keys = index.column("shard").to_pylist()[0], index.column("key").to_pylist()
    victim = keys[3]

    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        start = out.find(b"IDAT") + 20
        for i in range(start, start + 30):
            out[i] ^= 0x55
        return bytes(out)

    broken = {}

    def edit(name, data):
        if name.startswith(f"{victim}.0."):
            broken["data"] = damage(data)
            return broken["data"]
        if name == f"{victim}.json":
            return fix_sha(data, 0, damage(photo_of(root, shard, victim)))
        return data

    rewrite_shard(shard_uri(root, shard), edit)
    loader = ViewLoader(root, SPEC, 3, seed=0, pipelines=pipelines)
    batches = list(loader.iter_epoch(0))
    assert len(batches) == loader.batches_per_epoch
    seen = [k for b in batches for k in b.keys]
    assert victim not in seen and sorted(set(seen)) == sorted(k for k in keys if k != victim)
    assert len(seen) == len(keys) and loader.stats.filled == 1  # its slot repeats a good sample
    assert loader.stats.reasons == {"decode_failed": 1}
    again = list(loader.iter_epoch(1))  # the rebuilt pipeline keeps working
    assert victim not in [k for b in again for k in b.keys]


def photo_of(root: str, shard: str, key: str) -> bytes:
    with tarfile.open(shard_uri(root, shard)) as tar:
        for info in tar:
            if info.name.startswith(f"{key}.0."):
                return tar.extractfile(info).read()
    raise KeyError(key)


def test_a_truncated_shard_ends_cleanly(tmp_path_factory):
    root = build_dataset(tmp_path_factory, "truncated", num_groups=8, shard_samples=4, seed=6)
    index = read_index(root)
    shard = index.column("shard").to_pylist()[0]
    path = shard_uri(root, shard)
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    loader = ViewLoader(root, SPEC, 3, seed=0)
    batches = list(loader.iter_epoch(0))
    assert len(batches) == loader.batches_per_epoch
    seen = [k for b in batches for k in b.keys]
    assert [len(b) for b in batches] == loader.plan(0).sizes  # every slot filled
    assert 4 <= len(set(seen)) < 8
    assert loader.stats.skipped_samples == 8 - len(set(seen)) == loader.stats.filled


def test_a_missing_shard_raises_instead_of_hanging(tmp_path_factory):
    root = build_dataset(tmp_path_factory, "gone", num_groups=6, shard_samples=3, seed=7)
    shutil.rmtree(shard_uri(root, ""), ignore_errors=True)
    loader = ViewLoader(root, SPEC, 2)
    with pytest.raises(Exception, match="No such file"):
        list(loader.iter_epoch(0))


def test_every_rank_keeps_its_planned_batch_size_when_a_sample_is_skipped(damaged):
    """The skipped group's rank fills the hole, so both ranks' batches have equal shapes (the
    step's gathers need them equal; a mismatch aborts gloo and hangs NCCL)."""
    root, keys, _ = damaged
    loaders = [ViewLoader(root, SPEC, 3, rank=r, world_size=2, seed=1, drop_last=True) for r in range(2)]
    per_rank = [list(loader.iter_epoch(2)) for loader in loaders]
    assert sum(loader.stats.filled for loader in loaders) == 1  # the skipped group was planned
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]] == [3] * len(per_rank[0])
    assert all(tuple(v.shape) == (3, 3, 32, 32) for batches in per_rank for b in batches for v in b.views)
    assert keys["skipped"] not in {k for batches in per_rank for b in batches for k in b.keys}


def test_fill_sources_repeats_good_slots_deterministically():
    from pipeline.params import fill_sources

    rows, ok = [10, 11, 12, 13, 14], [True, False, True, False, True]
    sources = fill_sources(3, 1, rows, ok)
    assert sources == fill_sources(3, 1, rows, ok)
    assert [sources[i] for i in (0, 2, 4)] == [0, 2, 4] and all(ok[sources[i]] for i in (1, 3))
    assert {tuple(fill_sources(s, 1, rows, ok)) for s in range(20)} != {tuple(sources)}  # drawn, not fixed
    assert fill_sources(3, 1, rows, [False] * 5) == list(range(5))


def test_evaluation_loaders_leave_holes_unfilled(damaged):
    """Features and embeddings hold each readable sample once: no repeats with fill_holes=False."""
    root, keys, num_samples = damaged
    loader = ViewLoader(root, SPEC, 4, seed=1, fill_holes=False)
    seen = [k for b in loader.iter_epoch(0) for k in b.keys]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == num_samples - 1
    assert loader.stats.filled == 0
