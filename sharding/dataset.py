"""Read a built dataset (local folder or s3:// prefix): manifest, shard table, index parts, samples.

The reading half of the shard format (format version 2, see `sharding.format`), for `pipeline`,
`inspect` and `evaluation`. Functions take the dataset root and an optional `Storage` (for a
custom S3 endpoint); none of them unpickle anything. A rank plans from `read_shards` (one row
per shard) and reads `read_index_part` for its own shards only; `read_index` (every sample of
the dataset in one table) is for small datasets and tools that visit every sample anyway.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
import pyarrow as pa

from groundfloor.errors import UsageError
from groundfloor.parquet_files import read_parquet

from sharding.format import (
    FORMAT_VERSION,
    INDEX_DIR,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    READABLE_FORMAT_VERSIONS,
    SHARDS_DIR,
    SHARDS_FILE,
    SHARDS_SCHEMA,
    idx_name,
    index_part_name,
)
from groundfloor.storage import Storage, join
from groundfloor.storage.uri import require_location


def _storage(storage: Storage | None) -> Storage:
    return storage if storage is not None else Storage()


def _root(root: str) -> str:
    require_location(root)
    return root.rstrip("/") if len(root) > 1 else root


def load_manifest(root: str, storage: Storage | None = None) -> dict:
    """The dataset's manifest.json as a dict; UsageError if `root` holds no readable dataset."""
    uri = join(_root(root), MANIFEST_FILE)
    shard_first = "make one with `viewstream shard SRC DST` and point at DST"
    try:
        data = _storage(storage).read_bytes(uri)
    except FileNotFoundError:
        raise UsageError(f"{root!r} is not a viewstream dataset (no {MANIFEST_FILE}): {shard_first}") from None
    except NotADirectoryError:  # a .tar, a .parquet, an image: a file where a dataset folder goes
        raise UsageError(f"{root!r} is a file, not a viewstream dataset folder: {shard_first} "
                         f"(e.g. `viewstream shard {root} {root.rsplit('.', 1)[0]}-ds`)") from None
    except (IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # remote: no bucket, no credentials, unreachable endpoint
        raise UsageError(f"cannot read {uri!r}: {err}") from None
    manifest = json.loads(data)
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        hint = (f"; run `viewstream migrate {root}` to rewrite it as version {FORMAT_VERSION}"
                if isinstance(version, int) and version < FORMAT_VERSION else "")
        raise UsageError(f"{root!r} is a dataset of format version {version}, this viewstream reads "
                         f"{list(READABLE_FORMAT_VERSIONS)}{hint}")
    return manifest


def read_shards(root: str, storage: Storage | None = None,
                columns: list[str] | None = None) -> pa.Table:
    """shards.parquet (format.SHARDS_SCHEMA): one row per finished shard, in shard order
    (`columns`: only those, e.g. name and num_samples for a plan; the rest costs RSS)."""
    return _read_table(join(_root(root), SHARDS_FILE), SHARDS_SCHEMA, storage, columns)


def index_part_uri(root: str, shard_name: str) -> str:
    """Where the index part of shard `shard_name` lives."""
    return join(_root(root), INDEX_DIR, index_part_name(shard_name))


def read_index_part(root: str, shard_name: str, storage: Storage | None = None) -> pa.Table:
    """The index rows (format.INDEX_SCHEMA) of one shard, in tar order."""
    return _read_table(index_part_uri(root, shard_name), INDEX_SCHEMA, storage)


def read_index(root: str, storage: Storage | None = None) -> pa.Table:
    """Every sample's index row, in shard order: for small datasets and whole-dataset tools only
    (it is one table of the whole dataset; a training rank reads `read_index_part`)."""
    names = read_shards(root, storage).column("name").to_pylist()
    parts = [read_index_part(root, name, storage) for name in names]
    return pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()


def read_quarantine(root: str, storage: Storage | None = None) -> pa.Table:
    """Every input that is in no shard (format.QUARANTINE_SCHEMA), from the quarantine parts."""
    storage = _storage(storage)
    folder = join(_root(root), QUARANTINE_DIR)
    try:
        entries = sorted(e.relpath for e in storage.list_files(folder)
                         if e.relpath.endswith(".parquet") and "/" not in e.relpath)
    except FileNotFoundError:
        entries = []
    parts = [_read_table(join(folder, name), QUARANTINE_SCHEMA, storage) for name in entries]
    return pa.concat_tables(parts) if parts else QUARANTINE_SCHEMA.empty_table()


def _read_table(uri: str, schema: pa.Schema, storage: Storage | None,
                columns: list[str] | None = None) -> pa.Table:
    try:
        data = _storage(storage).read_bytes(uri)
    except FileNotFoundError:
        raise UsageError(f"{uri!r} is missing (the dataset is incomplete; rerun the shard command)") from None
    return read_parquet(data, schema=schema, columns=columns)


def shard_uri(root: str, shard_name: str) -> str:
    """Where shard `shard_name` (e.g. ``data-000000.tar``, as in the manifest) lives."""
    return join(_root(root), SHARDS_DIR, shard_name)


def shard_uris(root: str, storage: Storage | None = None) -> list[str]:
    """Every finished shard of the dataset, in order."""
    return [shard_uri(root, name) for name in read_shards(root, storage).column("name").to_pylist()]


def idx_uri(root: str, shard_name: str) -> str:
    """Where the DALI index of shard `shard_name` lives."""
    return join(_root(root), SHARDS_DIR, idx_name(shard_name))


@dataclass(frozen=True)
class Member:
    """One tar member as the .idx lists it: extension after the key, data offset, size."""

    ext: str
    offset: int
    size: int


def read_shard_index(root: str, shard_name: str, storage: Storage | None = None) -> dict[str, list[Member]]:
    """Parse a shard's .idx (wds2idx v1.2): key -> its members with data offsets, in tar order."""
    text = _storage(storage).read_bytes(idx_uri(root, shard_name)).decode("utf-8")
    lines = text.splitlines()
    out: dict[str, list[Member]] = {}
    for line in lines[1:]:
        fields = line.split(" ")
        members = []
        key = None
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i : i + 4]
            key = name[: -len(ext) - 1]
            members.append(Member(ext, int(offset), int(size)))
        if key is not None:
            out[key] = members
    return out


def read_sample(root: str, shard_name: str, key: str, storage: Storage | None = None,
                index: dict[str, list[Member]] | None = None) -> dict[str, bytes]:
    """One sample's members (ext -> bytes) by ranged reads, without scanning the tar."""
    storage = _storage(storage)
    index = index if index is not None else read_shard_index(root, shard_name, storage)
    if key not in index:
        raise KeyError(f"{key!r} is not in shard {shard_name}")
    uri = shard_uri(root, shard_name)
    return {m.ext: storage.read_range(uri, m.offset, m.size) for m in index[key]}
