"""Acceptance 4: a corpus of hostile inputs exits 0 and accounts for every input:
views in shards + quarantined rows = input files, each quarantine row with a known reason."""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharding.dataset import load_manifest, read_index, read_quarantine, read_shards, shard_uri
from sharding.build import text
from sharding.validate import REASONS

from tests.sharding.conftest import run_cli

MAX_PIXELS = 50_000  # --max-pixels for the run; every "good" image here is far smaller


def _save(image: Image.Image, path: Path, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A 100-byte PNG whose header claims 30000 x 30000 pixels."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def make_hostile_corpus(root: Path) -> dict[str, str | None]:
    """Write the corpus; returns relative path -> expected quarantine reason (None: sharded)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    expect: dict[str, str | None] = {}

    def put(rel: str, reason: str | None, image=None, fmt=None, data=None, **kw):
        path = root / rel
        if image is not None:
            _save(image, path, fmt, **kw)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        expect[rel] = reason

    jpeg = _save(photo, root / "ok.jpg", "JPEG", quality=90)
    expect["ok.jpg"] = None
    png = _save(photo, root / "ok_rgb.png", "PNG")
    expect["ok_rgb.png"] = None
    put("gray.png", None, photo.convert("L"), "PNG")
    put("zero.jpg", "zero_bytes", data=b"")
    put("text.jpg", "not_an_image", data=b"<html>not a photo</html>")
    put("random.png", "not_an_image", data=rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    put("notes.txt", "not_an_image", data=b"a README that wandered in")
    put("truncated.jpg", "truncated", data=jpeg[: len(jpeg) // 2])
    put("truncated.png", "truncated", data=png[: len(png) * 2 // 3])
    put("bomb.png", "too_many_pixels", data=bomb_png())
    put("big.png", "too_many_pixels", Image.new("RGB", (300, 300), (9, 9, 9)), "PNG")
    put("cmyk.jpg", None, Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")
    put("deep16.png", None, Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG")
    put("palette.png", None, photo.convert("P"), "PNG")
    transparent = Image.new("P", (8, 8), 0)
    transparent.putpalette([255, 0, 0] * 256)
    put("palette_trns.png", None, transparent, "PNG", transparency=0)
    put("rgba.png", None, Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")
    put("la.png", None, Image.new("LA", (8, 8), (0, 0)), "PNG")
    put("one_bit.png", None, photo.convert("1"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    put("rotated.jpg", None, Image.new("RGB", (20, 10), (200, 30, 30)), "JPEG", exif=exif.tobytes())
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    put("animated.gif", None, frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    put("animated.png", None, frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    put("image.bmp", None, photo, "BMP")
    put("image.webp", None, photo, "WEBP", quality=80)
    put("image.tiff", None, photo, "TIFF")
    put("фото кота.jpg", None, photo.rotate(90), "JPEG")
    put("name with  spaces & (parens).png", None, photo.rotate(180), "PNG")
    put("multi.dot.name.png", None, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    put(".hidden.png", None, photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "PNG")
    put("folder.jpg/inner.png", None, photo.rotate(45), "PNG")  # a directory named like an image
    put("dupes/a.png", None, photo.rotate(10), "PNG")
    put("dupes/b.png", "duplicate_in_group", data=(root / "dupes/a.png").read_bytes())
    put("dupes/c.png", None, photo.rotate(20), "PNG")
    put("only_bad/x.jpg", "zero_bytes", data=b"")
    put("only_bad/y.jpg", "not_an_image", data=b"GIF89a?")
    bad_name = os.fsdecode(b"not-utf8-\xff\xfe.png")  # a Linux name that is not valid UTF-8
    put(bad_name, None, photo.rotate(60), "PNG")
    os.symlink(root / "ok.jpg", root / "link.jpg")
    expect["link.jpg"] = None
    os.symlink(root / "does-not-exist.jpg", root / "broken_link.jpg")
    expect["broken_link.jpg"] = "unreadable"
    (root / "empty_folder").mkdir()
    return expect


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("hostile")
    expect = make_hostile_corpus(corpus)
    out = tmp_path_factory.mktemp("hostile_ds")
    result = run_cli("shard", str(corpus), str(out), "--group-by", "dir", "--max-pixels", str(MAX_PIXELS),
                     "--shard-samples", "8", "--no-progress")
    return corpus, out, expect, result


def views_by_source(out: Path) -> dict[str, tuple[bytes, dict, int]]:
    """source uri -> (stored bytes, group json, view number) for every view in every shard."""
    found = {}
    for shard in read_shards(str(out)).to_pylist():
        with tarfile.open(shard_uri(str(out), shard["name"])) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                key = name[: -len(".json")]
                for view, source in enumerate(meta["sources"]):
                    stored = next(v for n, v in members.items() if n.startswith(f"{key}.{view}."))
                    found[source] = (stored, meta, view)
    return found


def test_every_input_accounted_for(hostile):
    corpus, out, expect, result = hostile
    assert result.returncode == 0, result.stderr
    assert len(expect) >= 20
    inputs = {p for p in corpus.rglob("*") if p.is_file() or p.is_symlink()}
    assert len(inputs) == len(expect)
    quarantine = read_quarantine(str(out)).to_pylist()
    stored = views_by_source(out)
    manifest = load_manifest(str(out))
    assert manifest["num_inputs"] == len(inputs)
    assert len(stored) + len(quarantine) == len(inputs) == manifest["num_views"] + manifest["num_quarantined"]
    by_source = {row["source"]: row for row in quarantine}
    assert len(by_source) == len(quarantine)
    for rel, reason in expect.items():
        source = text(str(corpus / rel))
        if reason is None:
            assert source in stored, f"{rel} should be sharded, quarantined as {by_source.get(source)}"
        else:
            assert by_source[source]["reason"] == reason, (rel, by_source.get(source))
    for row in quarantine:
        assert row["reason"] in REASONS and row["detail"]


def test_stored_views_are_rgb_or_gray_8bit_jpeg_png(hostile):
    corpus, out, _, _ = hostile
    for source, (data, _, _) in views_by_source(out).items():
        image = Image.open(io.BytesIO(data))
        assert image.format in ("JPEG", "PNG") and image.mode in ("RGB", "L"), source
        assert not getattr(image, "is_animated", False)
        image.load()


def test_conversions_did_the_right_thing(hostile):
    corpus, out, _, _ = hostile
    stored = views_by_source(out)

    def pixels(rel: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(stored[str(corpus / rel)][0])).convert("RGB")).astype(int)

    assert stored[str(corpus / "ok.jpg")][0] == (corpus / "ok.jpg").read_bytes()  # kept as it came
    assert stored[str(corpus / "gray.png")][0] == (corpus / "gray.png").read_bytes()
    assert pixels("rotated.jpg").shape[:2] == (20, 10)  # EXIF orientation applied
    assert abs(pixels("deep16.png").mean() - 128) <= 1  # 16-bit scaled, not clipped to white
    assert pixels("rgba.png").min() == 255  # transparent -> white background
    assert pixels("palette_trns.png").min() == 255
    assert tuple(pixels("animated.gif")[5, 5]) == (255, 0, 0)  # first frame
    assert tuple(pixels("animated.png")[5, 5]) == (255, 0, 0)
    red = pixels("cmyk.jpg")[8, 8]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # CMYK (0,255,255,0) is red
    index = read_index(str(out)).to_pylist()
    dupes = next(r for r in index if r["group_id"] == "dupes")
    assert dupes["num_views"] == 2
    assert not any(r["group_id"] == "only_bad" for r in index)  # all views bad: no sample
    assert all("." not in r["key"] and " " not in r["key"] for r in index)


def test_dali_decodes_every_stored_view(hostile):
    from nvidia.dali import fn, pipeline_def

    _, out, _, _ = hostile
    shards = [s["name"] for s in read_shards(str(out)).to_pylist()]
    rows = read_index(str(out)).to_pylist()
    max_views = max(r["num_views"] for r in rows)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def views():
        outputs = fn.readers.webdataset(
            paths=[shard_uri(str(out), s) for s in shards],
            index_paths=[shard_uri(str(out), s)[:-4] + ".idx" for s in shards],
            ext=[f"{i}.jpg;{i}.png" for i in range(max_views)], missing_component_behavior="empty",
        )
        return tuple(outputs)

    pipe = views()
    pipe.build()
    encoded = []
    for row in rows:
        present = [np.array(o[0]) for o in pipe.run()][: row["num_views"]]
        assert all(e.size > 0 for e in present)
        encoded += present

    # Decode all present views in one batch (an empty, absent view would crash the decoder).
    @pipeline_def(batch_size=len(encoded), num_threads=1, device_id=None, prefetch_queue_depth=1)
    def decode():
        return fn.decoders.image(fn.external_source(source=lambda: encoded, batch=True), device="cpu")

    decoder = decode()
    decoder.build()
    images = [np.array(t) for t in decoder.run()[0]]
    assert len(images) == sum(r["num_views"] for r in rows)
    assert all(image.ndim == 3 and image.shape[2] == 3 and image.size > 0 for image in images)


def test_shard_whose_inputs_are_all_bad_is_not_listed(tmp_path):
    """A planned shard with no valid image writes no tar, is not listed, and is still 'done'."""
    from sharding.run import shard_dataset

    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "a.jpg").write_bytes(b"")
    (corpus / "b.jpg").write_bytes(b"junk")
    _save(Image.new("RGB", (8, 8), (1, 2, 3)), corpus / "c.png", "PNG")
    out = tmp_path / "out"
    summary = shard_dataset(str(corpus), str(out), shard_samples=2, shuffle_seed=None, progress=False)
    manifest = load_manifest(str(out))
    assert read_shards(str(out)).column("name").to_pylist() == ["data-000001.tar"]
    assert manifest["num_planned_shards"] == 2 and manifest["complete"]
    assert not (out / "shards" / "data-000000.tar").exists()
    assert summary.num_samples == 1 and summary.quarantined_by_reason == {"not_an_image": 1, "zero_bytes": 1}
    again = shard_dataset(str(corpus), str(out), shard_samples=2, shuffle_seed=None, progress=False)
    assert again.num_shards_built == 0 and again.num_shards_skipped == 2
