"""Metadata-only datasets (manifest.json, shards.parquet, index parts; no tars) for scale tests.

Planning and loader construction read only this metadata, so the memory and time a rank spends
on a 1e7-sample corpus can be measured on a laptop without writing 1e7 photos. Used by
`benchmarks/bench_loader_scale.py` and the pipeline's memory test.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sharding.format import (FORMAT_VERSION, INDEX_DIR, INDEX_SCHEMA, MANIFEST_FILE, SHARDS_FILE,
                             SHARDS_SCHEMA, index_part_name, shard_name)

LABELS = [f"class-{i:03d}" for i in range(100)]


def write_metadata_dataset(root: str, num_samples: int, shard_samples: int, *, name: str = "data",
                           progress: bool = False) -> int:
    """Write the metadata of `num_samples` samples in shards of `shard_samples` (the last one
    smaller) at local folder `root`; returns the number of shards."""
    counts = [shard_samples] * (num_samples // shard_samples)
    if num_samples % shard_samples:
        counts.append(num_samples % shard_samples)
    os.makedirs(os.path.join(root, INDEX_DIR), exist_ok=True)
    names = [shard_name(name, i) for i in range(len(counts))]
    start = 0
    for tar, n in tqdm(list(zip(names, counts)), desc="metadata", unit="shard", disable=not progress):
        rows = np.arange(start, start + n)
        keys = pa.array([f"{r:010d}" for r in rows.tolist()])
        part = pa.table({
            "shard": pa.array([tar] * n), "key": keys, "group_id": keys,
            "num_views": pa.array(np.full(n, 2, np.int32)),
            "view_exts": pa.array([["jpg", "jpg"]] * n, pa.list_(pa.string())),
            "bytes": pa.array(np.full(n, 200_000, np.int64)),
            "label": pa.array([LABELS[r % len(LABELS)] for r in rows.tolist()]),
            "view_sha256": pa.array([["0" * 64, "0" * 64]] * n, pa.list_(pa.string())),
        }, schema=INDEX_SCHEMA)
        pq.write_table(part, os.path.join(root, INDEX_DIR, index_part_name(tar)))
        start += n
    shards = pa.table({"name": names, "num_samples": counts, "num_views": [2 * c for c in counts],
                       "bytes": [c * 200_000 for c in counts], "sha256": ["0" * 64] * len(counts)},
                      schema=SHARDS_SCHEMA)
    pq.write_table(shards, os.path.join(root, SHARDS_FILE))
    manifest = {"format_version": FORMAT_VERSION, "name": name, "complete": True,
                "num_inputs": 2 * num_samples, "num_planned_shards": len(counts),
                "num_samples": num_samples, "num_views": 2 * num_samples, "num_quarantined": 0,
                "quarantined_by_reason": {}, "total_bytes": num_samples * 200_000,
                "num_shards": len(counts), "labels": LABELS, "config": {"input": "generated"}}
    with open(os.path.join(root, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    return len(counts)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) / 1024


def measure_rank(root: str, rank: int = 0, world_size: int = 64, batch_size: int = 256) -> dict:
    """RSS a ViewLoader adds (construction + one epoch plan), and how long each takes; also the
    plan of the same epoch on half the workers at the same global batch (an elastic resume).

    Call it in a fresh process (``python -m testbed.scale ROOT``): the baseline is taken after
    the imports, and `peak_mb_added` is the high-water mark over that baseline.
    """
    import time

    from pipeline.loader import ViewLoader
    from pipeline.spec import ViewSpec

    spec = ViewSpec.simclr(size=224)
    base = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    t0 = time.perf_counter()
    loader = ViewLoader(root, spec, batch_size, rank=rank, world_size=world_size, drop_last=True)
    t1 = time.perf_counter()
    plan = loader.plan(0)
    t2 = time.perf_counter()
    rank_samples = int(len(plan.stream_rows))
    del plan  # a resumed rank holds one plan, not two
    # the same epoch resumed on half the workers (global batch unchanged): an elastic restart
    resumed = ViewLoader(root, spec, batch_size * 2, rank=rank, world_size=world_size // 2, drop_last=True)
    t3 = time.perf_counter()
    resumed.plan(0)
    t4 = time.perf_counter()
    return {"rss_mb_added": round(_rss_mb() - base, 2), "peak_mb_added": round(_peak_mb() - base, 2),
            "init_s": round(t1 - t0, 4), "plan_s": round(t2 - t1, 4), "elastic_plan_s": round(t4 - t3, 4),
            "rank_samples": rank_samples, "num_samples": loader.num_samples}


if __name__ == "__main__":
    import sys

    print(json.dumps(measure_rank(sys.argv[1], *map(int, sys.argv[2:]))))


def write_photo_corpus(out_dir: str, num_groups: int, views: tuple[int, int], *, seed: int = 0,
                       side: tuple[int, int] = (400, 500), progress: bool = False) -> int:
    """ImageNet-like product photos for benchmarks: `num_groups` folders of `views` (lo, hi)
    JPEGs each, 400-500 px, ~100 KB (textured: flat synthetic shapes compress to ~15 KB and
    would understate the read, hash and decode work). Returns the number of photos written."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(16):  # a few large textures, cropped differently per photo (fast to make)
        y, x = np.mgrid[0:side[1] + 64, 0:side[1] + 64]
        base = np.stack([128 + 100 * np.sin(x / rng.uniform(8, 40) + c) * np.cos(y / rng.uniform(8, 40))
                         for c in range(3)], -1)
        pool.append(np.clip(base + rng.normal(0, 16, base.shape), 0, 255).astype(np.uint8))
    written = 0
    for g in tqdm(range(num_groups), desc="photos", unit="group", disable=not progress):
        folder = os.path.join(out_dir, f"class{g % 10}", f"obj{g:06d}")
        os.makedirs(folder, exist_ok=True)
        for v in range(int(rng.integers(views[0], views[1] + 1))):
            w, h = (int(s) for s in rng.integers(side[0], side[1] + 1, 2))
            src = pool[int(rng.integers(len(pool)))]
            top, left = (int(s) for s in rng.integers(0, 64, 2))
            crop = src[top:top + h, left:left + w]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(crop)).save(buffer, format="JPEG", quality=90)
            with open(os.path.join(folder, f"{v}.jpg"), "wb") as f:
                f.write(buffer.getvalue())
            written += 1
    return written
