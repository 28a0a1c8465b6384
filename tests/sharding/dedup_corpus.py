"""A tiny corpus where 3 natural-view groups share one photo (identical bytes)."""
from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from PIL import Image

NUM_GROUPS = 8
SHARED_GROUPS = ("obj1", "obj4", "obj6")


def png(seed: int, size: int = 16) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size))
    image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size * size)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_shared_corpus(root: Path) -> dict:
    """8 groups `{label}/obj{n}/` of 2 unique photos each; obj1, obj4, obj6 also hold
    `shared.png` (the same bytes). Returns {"shared_sha256", "num_inputs", "groups"}."""
    shared = png(10_000)
    inputs = 0
    for n in range(NUM_GROUPS):
        folder = root / ("a" if n % 2 else "b") / f"obj{n}"
        folder.mkdir(parents=True)
        for v in range(2):
            (folder / f"{v}.png").write_bytes(png(100 * n + v))
            inputs += 1
        if f"obj{n}" in SHARED_GROUPS:
            (folder / "shared.png").write_bytes(shared)
            inputs += 1
    groups = {f"obj{n}": str(root / ("a" if n % 2 else "b") / f"obj{n}") for n in range(NUM_GROUPS)}
    return {"shared_sha256": hashlib.sha256(shared).hexdigest(), "num_inputs": inputs, "groups": groups}
