"""The plan: stable safe group keys, shards packed by bytes and samples with groups whole, a seeded
shuffle that mixes classes, and the shard fingerprint that decides a rebuild."""
from __future__ import annotations

from sharding.build import parquet_bytes
from sharding.inputs import InputRecord
from sharding.plan import group_key, make_groups, plan_shards
from sharding.run import shard_fingerprint


def test_group_keys_are_stable_safe_and_unique():
    ids = ["shirts/red shirt.jpg", "shirts/red_shirt.jpg", "фото/кот.png", "x" * 300, ""]
    keys = [group_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert keys[0] == group_key("shirts/red shirt.jpg") == "shirts_red_shirt_jpg-" + keys[0].split("-")[-1]
    for key in keys:
        assert "." not in key and "/" not in key and " " not in key and len(key) <= 57
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in key)


def test_plan_packs_by_bytes_and_samples_and_keeps_groups_whole():
    records = [InputRecord(f"g{g}", f"/in/g{g}/{v}.jpg", None, 100) for g in range(10) for v in range(g % 3 + 1)]
    shuffled = list(reversed(records))
    plan = plan_shards(shuffled, "data", max_bytes=350, max_samples=3, shuffle_seed=None)
    assert plan == plan_shards(records, "data", max_bytes=350, max_samples=3, shuffle_seed=None)  # order-independent
    assert [t.name for t in plan] == [f"data-{i:06d}.tar" for i in range(len(plan))]
    seen = [g.group_id for t in plan for g in t.groups]
    assert seen == sorted({r.group_id for r in records})
    for task in plan:
        assert len(task.groups) <= 3
        assert sum(g.input_bytes for g in task.groups) <= 350 or len(task.groups) == 1
    assert sum(t.num_inputs for t in plan) == len(records)
    data = parquet_bytes(plan[0].rows)
    assert shard_fingerprint(plan[0], {"q": 1}, data) != shard_fingerprint(plan[0], {"q": 2}, data)
    assert shard_fingerprint(plan[0], {"q": 1}, data) != shard_fingerprint(plan[1], {"q": 1}, parquet_bytes(plan[1].rows))


def test_seeded_shuffle_mixes_classes_across_shards_deterministically():
    """Folder-sorted inputs (one class per folder) must not become one class per shard."""
    records = [InputRecord(f"{c}/{i:03d}", f"/in/{c}/{i:03d}.png", c, 10) for c in "abcd" for i in range(50)]
    plan = plan_shards(records, "data", max_samples=50)
    assert plan == plan_shards(list(reversed(records)), "data", max_samples=50)  # independent of listing
    for task in plan:
        labels = [g.label for g in task.groups]
        assert len(set(labels)) == 4 and max(labels.count(c) for c in "abcd") < 25, labels
    assert sorted(g.group_id for t in plan for g in t.groups) == sorted(r.group_id for r in records)
    assert plan != plan_shards(records, "data", max_samples=50, shuffle_seed=1)


def test_groups_take_first_label():
    groups = make_groups([InputRecord("g", "/b.jpg", None), InputRecord("g", "/a.jpg", "cat")])
    assert groups[0].label == "cat" and [r.uri for r in groups[0].inputs] == ["/a.jpg", "/b.jpg"]


def test_a_plain_image_shard_list_has_no_meta_column_so_old_datasets_resume():
    """Shards of image inputs keep the input-list bytes (and fingerprints) they had before
    container inputs added `meta`: a dataset built before that resumes instead of rebuilding."""
    import pyarrow as pa

    from sharding.run import _without_empty_meta

    plain = pa.table({"group_id": [b"g"], "uri": [b"u"], "meta": pa.array([None], pa.binary())})
    kept = pa.table({"group_id": [b"g"], "uri": [b"u"], "meta": pa.array([b'{"a": 1}'], pa.binary())})
    assert _without_empty_meta(plain).column_names == ["group_id", "uri"]
    assert _without_empty_meta(kept).column_names == ["group_id", "uri", "meta"]
