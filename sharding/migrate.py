"""`viewstream migrate ROOT`: rewrite a format-version-1 dataset in place as version 2.

Version 1 kept one ``index.parquet`` and one ``quarantine.parquet`` for the whole dataset and a
``shards`` list inside manifest.json (see `sharding.format`). Version 2 is what a rank reads at
scale: per-shard index parts (with the per-view sha256, read here from each sample's
``{key}.json`` member by a ranged read through the shard's .idx), quarantine parts,
``shards.parquet`` and a small manifest with the label vocabulary. Tars and .idx files are not
touched.

Crash-safe and idempotent: every part is written atomically and manifest.json (which says which
version the folder is) is rewritten last, so an interrupted migration leaves a version-1 dataset
that a rerun migrates from the start; a version-2 dataset is left as it is. The v1 index.parquet
and quarantine.parquet stay where they are (ignored by version-2 readers; a whole-dataset copy
of the index for small tools). A migration reads the v1 index whole: that table exists already,
so the migration costs what reading it costs, once.
"""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from groundfloor.parquet_files import read_parquet
from groundfloor.errors import UsageError

from sharding.dataset import index_part_uri, read_shard_index, shard_uri
from sharding.format import (
    FORMAT_VERSION,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    PARTS_DIR,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    SHARDS_FILE,
    SHARDS_SCHEMA,
    V1_INDEX_FILE,
    V1_INDEX_SCHEMA,
    V1_QUARANTINE_FILE,
    quarantine_part_name,
)
from groundfloor.storage import Storage, join
from groundfloor.storage.uri import require_location

MIGRATE_THREADS = 16  # shards migrated at once: sized for S3 round trips, not CPU


@dataclass(frozen=True)
class MigrateReport:
    """What `migrate_dataset` did: the version it found and the parts it wrote."""

    root: str
    from_version: int
    shards: int
    samples: int
    quarantine_parts: int

    def as_dict(self) -> dict:
        return {"root": self.root, "from_version": self.from_version,
                "to_version": FORMAT_VERSION, "shards": self.shards, "samples": self.samples,
                "quarantine_parts": self.quarantine_parts,
                "migrated": self.from_version != FORMAT_VERSION}


def _write_parquet(storage: Storage, uri: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def _read_parquet(storage: Storage, uri: str, schema: pa.Schema) -> pa.Table:
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise UsageError(f"{uri!r} is missing: not a complete version-1 dataset") from None
    return read_parquet(data, schema=schema)


def _sha256_of_views(meta: bytes, num_views: int) -> list[str | None]:
    try:
        shas = json.loads(meta).get("sha256")
    except (ValueError, AttributeError, UnicodeDecodeError):
        shas = None
    shas = shas if isinstance(shas, list) else []
    out = [s if isinstance(s, str) else None for s in shas[:num_views]]
    return out + [None] * (num_views - len(out))


def _view_sha256(storage: Storage, root: str, shard: str, keys: list[str],
                 num_views: list[int]) -> list[list[str | None]]:
    """Per sample of `shard`, the per-view sha256 its ``{key}.json`` records (ranged reads)."""
    members = read_shard_index(root, shard, storage)
    uri = shard_uri(root, shard)
    out = []
    for key, n in zip(keys, num_views):
        entry = next((m for m in members.get(key, []) if m.ext == "json"), None)
        meta = storage.read_range(uri, entry.offset, entry.size) if entry is not None else b"{}"
        out.append(_sha256_of_views(meta, n))
    return out


def _split_by_shard(index: pa.Table) -> dict[str, pa.Table]:
    """The rows of each shard (v1 rows are in shard order: one contiguous run per shard)."""
    out: dict[str, pa.Table] = {}
    if index.num_rows == 0:
        return out
    shard = index.column("shard")
    names = index.column("shard").unique().to_pylist()
    for name in names:
        out[name] = index.filter(pc.equal(shard, name))
    return out


def _migrate_shard(storage: Storage, root: str, name: str, rows: pa.Table) -> None:
    shas = _view_sha256(storage, root, name, rows.column("key").to_pylist(),
                        rows.column("num_views").to_pylist())
    part = rows.select([f.name for f in V1_INDEX_SCHEMA]).append_column(
        "view_sha256", pa.array(shas, type=pa.list_(pa.string())))
    _write_parquet(storage, index_part_uri(root, name), part.cast(INDEX_SCHEMA))


def _quarantine_parts(storage: Storage, root: str, quarantine: pa.Table) -> dict[str, pa.Table]:
    """Quarantine parts by shard, from the sharder's _parts records when they account for
    every row; otherwise one part holding all rows (readers concatenate whatever parts exist)."""
    if quarantine.num_rows == 0:
        return {}
    try:
        records = [e for e in storage.list_files(join(root, PARTS_DIR)) if e.relpath.endswith(".json")]
    except FileNotFoundError:
        records = []
    by_shard: dict[str, list[dict]] = {}
    for entry in records:
        try:
            record = json.loads(storage.read_bytes(entry.uri))
        except (ValueError, OSError):
            continue
        rows = record.get("quarantine_rows") or []
        if rows and isinstance(record.get("name"), str):
            by_shard[record["name"]] = rows
    if sum(len(r) for r in by_shard.values()) == quarantine.num_rows:
        return {quarantine_part_name(name): pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
                for name, rows in sorted(by_shard.items())}
    return {"v1-quarantine.parquet": quarantine}


def migrate_dataset(root: str, endpoint_url: str | None = None, progress: bool = True,
                    storage: Storage | None = None) -> MigrateReport:
    """Rewrite the dataset at `root` as format version 2 (a no-op on version 2)."""
    storage = storage if storage is not None else Storage(endpoint_url)
    root = require_location(root).rstrip("/")
    try:
        manifest = json.loads(storage.read_bytes(join(root, MANIFEST_FILE)))
    except FileNotFoundError:
        raise UsageError(f"{root!r} is not a viewstream dataset (no {MANIFEST_FILE})") from None
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        shards = pq.read_metadata(io.BytesIO(storage.read_bytes(join(root, SHARDS_FILE)))).num_rows
        return MigrateReport(root, version, shards, int(manifest.get("num_samples", 0)), 0)
    if version != 1:
        raise UsageError(f"{root!r} is a dataset of format version {version!r}; "
                         f"migrate reads version 1 and writes version {FORMAT_VERSION}")
    if not manifest.get("complete"):
        raise UsageError(f"{root!r} is an unfinished version-1 build; rerun the shard command "
                         "to finish it, then migrate")
    entries = manifest.get("shards") or []
    index = _read_parquet(storage, join(root, V1_INDEX_FILE), V1_INDEX_SCHEMA)
    quarantine = _read_parquet(storage, join(root, V1_QUARANTINE_FILE), QUARANTINE_SCHEMA)
    by_shard = _split_by_shard(index)
    names = [e["name"] for e in entries]
    unknown = sorted(set(by_shard) - set(names))
    if unknown:
        raise UsageError(f"{root!r}: index.parquet has rows of shards the manifest does not list "
                         f"({unknown[:3]}); the dataset is inconsistent")
    empty = INDEX_SCHEMA.empty_table().select([f.name for f in V1_INDEX_SCHEMA])
    with ThreadPoolExecutor(MIGRATE_THREADS) as pool:
        jobs = [pool.submit(_migrate_shard, storage, root, name, by_shard.get(name, empty))
                for name in names]
        for job in tqdm(jobs, desc="migrate", unit="shard", disable=not progress):
            job.result()
    parts = _quarantine_parts(storage, root, quarantine)
    for part, table in parts.items():
        _write_parquet(storage, join(root, QUARANTINE_DIR, part), table)
    shards = pa.Table.from_pylist(
        [{f.name: e.get(f.name) for f in SHARDS_SCHEMA} for e in entries], schema=SHARDS_SCHEMA)
    _write_parquet(storage, join(root, SHARDS_FILE), shards)
    labels = pc.unique(index.column("label").drop_null()).to_pylist() if index.num_rows else []
    new = {k: v for k, v in manifest.items() if k != "shards"}
    new.update(format_version=FORMAT_VERSION, num_shards=len(entries), labels=sorted(labels))
    data = json.dumps(new, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    storage.write_bytes(join(root, MANIFEST_FILE), data.encode("utf-8"))  # last: the commit point
    return MigrateReport(root, 1, len(entries), index.num_rows, len(parts))
