"""A generated natural-view corpus: groups of 1-6 photos of one synthetic object.

Each group is one "object", a two-tone product: a shape (4 kinds) in a body colour with a pattern
(stripes, checks, dots or a band; 4 kinds, 2-5 repeats) in an independent accent colour. It is
photographed several times from different viewpoints: rotation, scale, position, background,
lighting and a small colour shift change per view, the object's identity does not.

Why two colours: with one colour (the first version), lighting and colour shift leave so few
distinguishable objects that even an oracle that knows every object's true shape, stripe count
and lit colour finds another photo of the same object for only 39% of queries among 500 objects
(11% without the stripe count, which is hard to see at 32 px): a retrieval figure on it measures
the generator, not the encoder. Body + accent colour and 16 shape/print kinds give the oracle
77% (benchmarks/bench_synthetic_oracle.py), as real products (several colours, a print, a logo)
give a learned encoder room to win.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance

SHAPES = ("circle", "square", "triangle", "star")
PATTERNS = ("stripes", "checks", "dots", "band")
BODY_LEVELS = (40, 256)        # per channel, randrange bounds of the body colour (the accent: 0-256)
COLOUR_SHIFT = 20              # per view and channel, +-: the light's colour (body and accent alike)
BRIGHTNESS = (0.75, 1.25)      # per view: the light's strength


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
        colour = tuple(rng.randrange(*BODY_LEVELS) for _ in range(3))
        stripes = rng.randrange(2, 6)
        # Drawn from their own stream so that group sizes stay what they were with one colour.
        identity = random.Random(f"{seed}/{number}/identity")
        accent = tuple(identity.randrange(0, 256) for _ in range(3))
        pattern = PATTERNS[identity.randrange(len(PATTERNS))]
        ext = formats[number % len(formats)]
        folder = out / shape / f"obj{number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for view in range(rng.randint(min_views, max_views)):
            image = render_view(shape, colour, stripes, size, rng, accent, pattern)
            path = folder / f"{view}.{ext}"
            if ext == "jpg":
                image.save(path, format="JPEG", quality=90)
            else:
                image.save(path, format="PNG")
            files.append(str(path.relative_to(out)))
        groups.append(SyntheticGroup(f"{shape}/obj{number:05d}", shape, tuple(files)))
    return groups


def render_view(shape: str, colour: tuple[int, int, int], stripes: int, size: int, rng: random.Random,
                accent: tuple[int, int, int] | None = None, pattern: str = "stripes") -> Image.Image:
    """One photo of the object: drawn at 2x and downsampled (anti-aliasing), then re-lit.

    `accent` (default: half the body colour) is the pattern's colour; the view's colour shift
    moves body and accent together, as a change of light would."""
    big = size * 2
    background = tuple(rng.randrange(0, 256) for _ in range(3))
    canvas = Image.new("RGB", (big, big), background)
    radius = big * rng.uniform(0.22, 0.4)
    cx = big / 2 + rng.uniform(-0.15, 0.15) * big
    cy = big / 2 + rng.uniform(-0.15, 0.15) * big
    angle = rng.uniform(0, 2 * math.pi)
    shift = [rng.randrange(-COLOUR_SHIFT, COLOUR_SHIFT + 1) for _ in range(3)]
    shifted = _shifted(colour, shift)
    accent_shifted = _shifted(accent, shift) if accent is not None else tuple(c // 2 for c in shifted)
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(_outline(shape, cx, cy, radius, angle), fill=255)
    texture = Image.new("RGB", (big, big), shifted)
    _draw_pattern(ImageDraw.Draw(texture), pattern, accent_shifted, stripes, cx, cy, radius, angle, big)
    canvas.paste(texture, (0, 0), mask)
    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return ImageEnhance.Brightness(image).enhance(rng.uniform(*BRIGHTNESS))


def _shifted(colour: tuple[int, int, int], shift: list[int]) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + d)) for c, d in zip(colour, shift))


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, fill: tuple[int, int, int], repeats: int,
                  cx: float, cy: float, radius: float, angle: float, big: int) -> None:
    """The object's print, in its own frame (it rotates and scales with the object)."""
    step = max(2, int(2 * radius / (2 * repeats)))
    ux, uy = math.cos(angle), math.sin(angle)     # across the stripes
    vx, vy = -math.sin(angle), math.cos(angle)    # along them
    if pattern == "band":  # one wide band through the middle
        half = radius * 0.35
        ex, ey = vx * 2 * big, vy * 2 * big
        draw.polygon([(cx - ux * half - ex, cy - uy * half - ey), (cx + ux * half - ex, cy + uy * half - ey),
                      (cx + ux * half + ex, cy + uy * half + ey), (cx - ux * half + ex, cy - uy * half + ey)],
                     fill=fill)
        return
    if pattern == "stripes":
        for offset in range(-big, 2 * big, 2 * step):
            dx, dy = ux * offset, uy * offset
            ex, ey = vx * 2 * big, vy * 2 * big
            draw.line([(cx + dx - ex, cy + dy - ey), (cx + dx + ex, cy + dy + ey)], fill=fill, width=step)
        return
    cells = int(radius // step) + 2
    for i in range(-cells, cells + 1):
        for j in range(-cells, cells + 1):
            if pattern == "checks" and (i + j) % 2:
                continue
            px, py = cx + (ux * i + vx * j) * step, cy + (uy * i + vy * j) * step
            h = step / 2 if pattern == "checks" else step / 3
            if pattern == "checks":
                draw.polygon([(px + (ux * a + vx * b) * h, py + (uy * a + vy * b) * h)
                              for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))], fill=fill)
            elif (i + j) % 2 == 0:  # dots on a rotated lattice
                draw.ellipse([px - h, py - h, px + h, py + h], fill=fill)


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
