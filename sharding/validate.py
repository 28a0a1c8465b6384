"""Validate one image by really decoding it; keep its bytes, re-encode it, or say why not.

Bytes are kept exactly as they came when the image decodes completely, is a JPEG or PNG the
decoders read (format.KEPT_IMAGE_EXTS), is 8-bit RGB or grayscale, is not animated, has no
EXIF rotation to apply and needs no resize. Otherwise it is converted to RGB (alpha composited
on white, 16-bit scaled down, CMYK and palette converted, EXIF orientation applied, first frame
of an animation) and re-encoded: PNG when the source was lossless and not resized, JPEG at
`quality` otherwise. Anything that does not decode is a `Rejected` with a short reason.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own bomb limit, which is also our default --max-pixels.
DEFAULT_MAX_PIXELS = 89_478_485
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
KEPT_MODES = ("RGB", "L")
LOSSLESS_FORMATS = {"PNG", "GIF", "BMP", "TIFF", "PPM", "WEBP_LOSSLESS", "TGA", "ICO"}
EXIF_ORIENTATION = 0x0112

# Quarantine reasons (machine-readable; the detail column carries the human text).
ZERO_BYTES = "zero_bytes"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
TOO_MANY_PIXELS = "too_many_pixels"
DUPLICATE_IN_GROUP = "duplicate_in_group"
# Given after the build by `viewstream shard --dedup-across-groups` (sharding.dedup):
DUPLICATE_ACROSS_GROUPS = "duplicate_across_groups"  # drop / keep-first: same bytes in other groups
DUPLICATE_MERGED = "duplicate_merged"                # merge: the same bytes are kept once in the merged group
REASONS = (ZERO_BYTES, UNREADABLE, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_MANY_PIXELS, DUPLICATE_IN_GROUP,
           DUPLICATE_ACROSS_GROUPS, DUPLICATE_MERGED)


@dataclass(frozen=True)
class ValidImage:
    """An image ready to be written: its bytes, extension, size, and whether it was re-encoded."""

    data: bytes
    ext: str
    width: int
    height: int
    reencoded: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Rejected:
    """Why an input is not in any shard."""

    reason: str
    detail: str


def validate_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    quality: int = 90,
) -> ValidImage | Rejected:
    """Decode `data` completely and return the bytes to store, or why it must be quarantined."""
    if not data:
        return Rejected(ZERO_BYTES, "file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Rejected(NOT_AN_IMAGE, f"not a recognised image format ({len(data)} bytes)")
    except Image.DecompressionBombError as err:
        return Rejected(TOO_MANY_PIXELS, str(err))
    except Exception as err:  # a header PIL recognises but cannot parse
        return _decode_failure(err)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            return Rejected(TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
        if width == 0 or height == 0:
            return Rejected(CORRUPT, f"image has size {width}x{height}")
        try:
            keep = _keep_as_is(image, max_side)  # from the header (PNG: may load for EXIF)
            if keep and image.format == "JPEG":
                # Kept JPEGs are only checked, never used: decode at 1/8 scale. libjpeg still
                # entropy-decodes every block (so truncation and corruption still fail), but
                # skips most of the inverse DCT and colour conversion, ~3x faster.
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
        except Exception as err:
            return _decode_failure(err)
        if keep:
            return ValidImage(data, KEPT_FORMATS[image.format], width, height, reencoded=False)
        try:
            return _reencode(image, max_side, quality)
        except Exception as err:
            return Rejected(CORRUPT, f"cannot convert: {type(err).__name__}: {err}")


def _decode_failure(err: Exception) -> Rejected:
    """PIL says "truncated" (or hits EOF) when data ends early; anything else is corrupt."""
    text = f"{type(err).__name__}: {err}"
    truncated = "truncat" in text.lower() or isinstance(err, EOFError)
    return Rejected(TRUNCATED if truncated else CORRUPT, text)


def _keep_as_is(image: Image.Image, max_side: int | None) -> bool:
    if image.format not in KEPT_FORMATS or image.mode not in KEPT_MODES:
        return False
    if getattr(image, "is_animated", False):
        return False
    if max_side is not None and max(image.size) > max_side:
        return False
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return orientation in (0, 1)


def _reencode(image: Image.Image, max_side: int | None, quality: int) -> ValidImage:
    lossless_source = image.format in LOSSLESS_FORMATS
    rgb = to_rgb(image)
    rgb = ImageOps.exif_transpose(rgb) if _has_rotation(image) else rgb
    resized = max_side is not None and max(rgb.size) > max_side
    if resized:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if lossless_source and not resized:
        rgb.save(out, format="PNG", compress_level=6)
        ext = "png"
    else:
        rgb.save(out, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        ext = "jpg"
    return ValidImage(out.getvalue(), ext, rgb.size[0], rgb.size[1], reencoded=True)


def _has_rotation(image: Image.Image) -> bool:
    return image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image: 16/32-bit scaled to 0..255, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "CMYK":
        # JPEG CMYK from Adobe tools is stored inverted; PIL's converter handles the common case.
        return image.convert("RGB")
    return image.convert("RGB")
