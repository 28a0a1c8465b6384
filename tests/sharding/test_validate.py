"""Validation: an image is kept, re-encoded or quarantined with its reason, never raised."""
from __future__ import annotations

import io

from PIL import Image

from sharding.validate import ValidImage, validate_image


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
