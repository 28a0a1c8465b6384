"""Fast unit tests of the sharding pieces: tar writer, keys and plan, inputs, validation, sizes."""
from __future__ import annotations

import argparse
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from groundfloor.errors import UsageError

from sharding.inputs import InputRecord, discover_inputs
from sharding.build import parquet_bytes
from sharding.plan import group_key, make_groups, plan_shards
from sharding.run import shard_fingerprint
from groundfloor.storage import Storage, join
from sharding.tar_writer import TarWriter
from sharding.validate import ValidImage, validate_image


def write_tar(samples) -> tuple[bytes, TarWriter]:
    sink = io.BytesIO()
    writer = TarWriter(sink)
    for key, members in samples:
        writer.write_sample(key, members)
    writer.close()
    return sink.getvalue(), writer


def test_tar_writer_is_deterministic_and_readable():
    samples = [("a-1", [("0.jpg", b"x" * 700), ("json", b"{}")]), ("b-2", [("0.png", b""), ("1.png", b"yz")])]
    first, writer = write_tar(samples)
    second, _ = write_tar(samples)
    assert first == second and len(first) % 10240 == 0
    assert writer.size == len(first) and writer.num_samples == 2
    import hashlib
    assert writer.sha256 == hashlib.sha256(first).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = [(m.name, m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar]
        assert names == [(n, 0, 0, 0, "", 0o644) for n in ("a-1.0.jpg", "a-1.json", "b-2.0.png", "b-2.1.png")]
        assert tar.extractfile("a-1.0.jpg").read() == b"x" * 700
    lines = writer.index_text().splitlines()
    assert lines[0] == "v1.2 2"
    ext, offset, size, name = lines[1].split()[:4]
    assert (ext, name) == ("0.jpg", "a-1.0.jpg") and first[int(offset):int(offset) + int(size)] == b"x" * 700


@pytest.mark.parametrize("key", ["a.b", "a/b", "a b"])
def test_tar_writer_rejects_bad_keys(key):
    with pytest.raises(ValueError):
        TarWriter(io.BytesIO()).write_sample(key, [("json", b"{}")])


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


def make_folder(root):
    for rel in ("cats/c1/0.jpg", "cats/c1/1.jpg", "dogs/d1/0.jpg", "top.jpg"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"img")


def test_folder_inputs_group_and_label(tmp_path):
    make_folder(tmp_path)
    storage = Storage()
    per_file = discover_inputs(str(tmp_path), storage, "file", "parent")
    assert [(r.group_id, r.label) for r in per_file] == [
        ("cats/c1/0.jpg", "c1"), ("cats/c1/1.jpg", "c1"), ("dogs/d1/0.jpg", "d1"), ("top.jpg", None)]
    per_dir = discover_inputs(str(tmp_path), storage, "dir", "parent")
    assert [(r.group_id, r.label) for r in per_dir] == [
        ("cats/c1", "cats"), ("cats/c1", "cats"), ("dogs/d1", "dogs"), ("top.jpg", None)]
    assert all(r.size == 3 for r in per_dir)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_inputs(tmp_path, kind):
    rows = [{"uri": "imgs/a.jpg", "group": "g1", "label": "x"}, {"uri": "/abs/b.jpg", "group": "", "label": None}]
    path = tmp_path / f"list.{kind}"
    if kind == "csv":
        path.write_text("uri,group,label\nimgs/a.jpg,g1,x\n/abs/b.jpg,,\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    records = discover_inputs(str(path), Storage())
    assert [(r.group_id, r.uri, r.label) for r in records] == [
        ("/abs/b.jpg", "/abs/b.jpg", None), ("g1", str(tmp_path / "imgs/a.jpg"), "x")]


def test_manifest_without_uri_and_bad_jsonl(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.jpg"}\n')
    with pytest.raises(UsageError, match="no 'uri' column"):
        discover_inputs(str(path), Storage())
    path.write_text("{not json\n")
    with pytest.raises(UsageError, match="cannot be parsed"):
        discover_inputs(str(path), Storage())


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_validate_keeps_resizes_and_rejects():
    photo = Image.new("RGB", (40, 20), (10, 200, 30))
    jpeg = encode(photo, "JPEG")
    kept = validate_image(jpeg)
    assert isinstance(kept, ValidImage) and kept.data == jpeg and not kept.reencoded and kept.ext == "jpg"
    small = validate_image(encode(photo, "PNG"), max_side=10)
    assert isinstance(small, ValidImage) and small.reencoded and (small.width, small.height) == (10, 5)
    assert small.ext == "jpg"
    assert validate_image(jpeg, max_pixels=799).reason == "too_many_pixels"
    assert validate_image(b"").reason == "zero_bytes"
    assert validate_image(jpeg[:-200]).reason == "truncated"


def test_join_paths_and_uris():
    assert join("s3://b/pre/", "shards", "x.tar") == "s3://b/pre/shards/x.tar"
    assert join("/data", "shards/", "/x.tar") == "/data/shards/x.tar"


def test_truncated_png_is_quarantined_not_raised():
    png = encode(Image.new("RGB", (64, 64), (1, 2, 3)).rotate(30), "PNG")
    assert validate_image(png[: len(png) * 2 // 3]).reason == "truncated"


def test_build_never_raises_on_an_image(monkeypatch):
    import sharding.build as build

    def explode(*args, **kwargs):
        raise MemoryError("decoder blew up")

    monkeypatch.setattr(build, "validate_image", explode)
    outcome = build._validate(b"\x89PNG....", build.BuildOptions())
    assert outcome.reason == "corrupt" and "decoder blew up" in outcome.detail


@pytest.mark.parametrize("name,size", [("a-1.0.jpg", 0), ("k" * 57 + ".12.png", 700), ("x-y.json", 8**11 - 1),
                                       ("фото-1.json", 5), ("n" * 100, 1), ("d/" + "n" * 100, 1)])
def test_ustar_header_is_what_tarfile_writes(name, size):
    from sharding.tar_writer import ustar_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    assert ustar_header(name, size) == info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
