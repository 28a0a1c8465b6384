"""Rewrite a freshly built (version 2) dataset as the format-version-1 layout, for migration tests.

The sharder writes only version 2 now; version 1 is what datasets built before it look like:
one index.parquet without view_sha256, one quarantine.parquet, the shard list inside
manifest.json, and `_parts` records that carry each shard's index and quarantine rows.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from sharding.dataset import read_index, read_quarantine, read_shards
from sharding.format import (INDEX_DIR, PARTS_DIR, QUARANTINE_DIR, SHARDS_FILE, V1_INDEX_FILE,
                             V1_INDEX_SCHEMA, V1_QUARANTINE_FILE, idx_name)


def downgrade_to_v1(root: str) -> None:
    """`root` (a local version-2 dataset) rewritten in place as version 1."""
    base = Path(root)
    index = read_index(root).select(V1_INDEX_SCHEMA.names).cast(V1_INDEX_SCHEMA)
    quarantine_by_shard = {
        part.stem: pq.read_table(part).to_pylist() for part in sorted((base / QUARANTINE_DIR).glob("*.parquet"))
    }
    quarantine = read_quarantine(root)
    shards = read_shards(root).to_pylist()
    manifest = json.loads((base / "manifest.json").read_text())
    pq.write_table(index, base / V1_INDEX_FILE)
    pq.write_table(quarantine, base / V1_QUARANTINE_FILE)
    for record_path in sorted((base / PARTS_DIR).glob("*.json")):
        record = json.loads(record_path.read_text())
        stem = record_path.stem
        record["index_rows"] = [r for r in index.to_pylist() if r["shard"] == record["name"]]
        record["quarantine_rows"] = quarantine_by_shard.get(stem, [])
        record_path.write_text(json.dumps(record, sort_keys=True, indent=1))
    for name in (INDEX_DIR, QUARANTINE_DIR):
        shutil.rmtree(base / name, ignore_errors=True)
    (base / SHARDS_FILE).unlink()
    manifest["format_version"] = 1
    manifest.pop("labels", None)
    manifest.pop("num_shards", None)
    manifest["shards"] = [{**s, "idx": idx_name(s["name"])} for s in shards]
    (base / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
