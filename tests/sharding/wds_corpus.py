"""WebDataset tars written by the real `webdataset` library, as users bring them.

`write_wds_corpus(root)` writes ``shards-000000.tar`` and ``shards-000001.tar`` (ShardWriter, 4
samples each: jpg or png, cls, txt, json with a listing id), ``extra-000000.tar.gz`` (TarWriter,
gzipped, 3 samples) and returns what a correct sharding must find: the images (tar name, member)
that decode, the ones that do not, and the samples without an image.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@dataclass
class WdsCorpus:
    root: Path
    images: dict[str, bytes] = field(default_factory=dict)     # "tar#member" -> bytes (decodable)
    broken: list[str] = field(default_factory=list)            # "tar#member" that do not decode
    no_image: list[str] = field(default_factory=list)          # "tar#key" of samples without images
    labels: dict[str, str] = field(default_factory=dict)       # "tar#member" -> cls label
    captions: dict[str, str] = field(default_factory=dict)     # "tar#member" -> txt caption


def _sample(corpus: WdsCorpus, tar: Path, i: int) -> dict:
    key = f"{i:06d}"
    ext = "png" if i % 3 == 0 else "jpg"
    sample = {"__key__": key, "cls": i % 3, "txt": f"a photo number {i}",
              "json": {"listing": f"L{i // 2}", "label": f"class-{i % 3}"}}
    member = f"{tar}#{key}.{ext}"
    if i == 5:
        sample[ext] = b"\xff\xd8\xff\xe0 not really a jpeg"
        corpus.broken.append(member)
    elif i == 6:
        corpus.no_image.append(f"{tar}#{key}")
        return sample
    else:
        sample[ext] = image_bytes(i, "PNG" if ext == "png" else "JPEG")
        corpus.images[member] = sample[ext]
        corpus.labels[member] = str(i % 3)
        corpus.captions[member] = sample["txt"]
    return sample


def write_wds_corpus(root: Path) -> WdsCorpus:
    root.mkdir(parents=True, exist_ok=True)
    corpus = WdsCorpus(root)
    with wds.ShardWriter(str(root / "shards-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(8):
            tar = root / f"shards-{i // 4:06d}.tar"
            sink.write(_sample(corpus, tar, i))
    gz = root / "extra-000000.tar.gz"
    with wds.TarWriter(str(gz)) as sink:
        for i in range(100, 103):
            sink.write(_sample(corpus, gz, i))
    return corpus
