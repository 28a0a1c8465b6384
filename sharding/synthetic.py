"""A generated natural-view corpus: groups of 1-6 photos of one synthetic object.

Each group is one "object" (a coloured shape with a stripe texture) photographed several times
from different viewpoints: rotation, scale, position, background, lighting and a small colour
shift change per view, the object's identity does not. Files are written as
``{out}/{shape}/{group}/{view}.{jpg|png}``, so ``--group-by dir --label-from parent`` yields one
sample per object labelled by its shape, the layout other stages' tests and benchmarks use.
Everything is a function of the seed: the same call writes the same bytes.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

SHAPES = ("circle", "square", "triangle", "star")


@dataclass(frozen=True)
class SyntheticGroup:
    """One generated object: its group folder (relative to the corpus root), label, files."""

    group_id: str
    label: str
    files: tuple[str, ...]


def generate_view_corpus(
    out_dir: str | os.PathLike,
    num_groups: int,
    seed: int = 0,
    size: int = 64,
    min_views: int = 1,
    max_views: int = 6,
    formats: tuple[str, ...] = ("jpg", "png"),
) -> list[SyntheticGroup]:
    """Write `num_groups` groups of `min_views`..`max_views` views each under `out_dir`.

    Image format alternates per group over `formats`. Returns the groups in the order written.
    """
    if not 1 <= min_views <= max_views:
        raise ValueError(f"need 1 <= min_views <= max_views, got {min_views}, {max_views}")
    out = Path(out_dir)
    groups = []
    for number in range(num_groups):
        rng = random.Random(f"{seed}/{number}")
        shape = SHAPES[rng.randrange(len(SHAPES))]
        colour = tuple(rng.randrange(40, 256) for _ in range(3))
        stripes = rng.randrange(2, 6)
        ext = formats[number % len(formats)]
        folder = out / shape / f"obj{number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for view in range(rng.randint(min_views, max_views)):
            image = render_view(shape, colour, stripes, size, rng)
            path = folder / f"{view}.{ext}"
            if ext == "jpg":
                image.save(path, format="JPEG", quality=90)
            else:
                image.save(path, format="PNG")
            files.append(str(path.relative_to(out)))
        groups.append(SyntheticGroup(f"{shape}/obj{number:05d}", shape, tuple(files)))
    return groups


def render_view(shape: str, colour: tuple[int, int, int], stripes: int, size: int, rng: random.Random) -> Image.Image:
    """One photo of the object: drawn at 2x and downsampled (anti-aliasing), then re-lit."""
    big = size * 2
    background = tuple(rng.randrange(0, 256) for _ in range(3))
    canvas = Image.new("RGB", (big, big), background)
    radius = big * rng.uniform(0.22, 0.4)
    cx = big / 2 + rng.uniform(-0.15, 0.15) * big
    cy = big / 2 + rng.uniform(-0.15, 0.15) * big
    angle = rng.uniform(0, 2 * math.pi)
    shifted = tuple(max(0, min(255, c + rng.randrange(-20, 21))) for c in colour)
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(_outline(shape, cx, cy, radius, angle), fill=255)
    texture = Image.new("RGB", (big, big), shifted)
    draw = ImageDraw.Draw(texture)
    dark = tuple(c // 2 for c in shifted)
    step = max(2, int(2 * radius / (2 * stripes)))
    for offset in range(-big, 2 * big, 2 * step):  # stripes rotate with the object
        dx, dy = math.cos(angle) * offset, math.sin(angle) * offset
        ex, ey = -math.sin(angle) * 2 * big, math.cos(angle) * 2 * big
        draw.line([(cx + dx - ex, cy + dy - ey), (cx + dx + ex, cy + dy + ey)], fill=dark, width=step)
    canvas.paste(texture, (0, 0), mask)
    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "circle":
        corners, radii = 48, [r]
    elif shape == "square":
        corners, radii = 4, [r]
    elif shape == "triangle":
        corners, radii = 3, [r]
    else:
        corners, radii = 10, [r, r * 0.45]
    return [
        (cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
         cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners))
        for i in range(corners)
    ]
