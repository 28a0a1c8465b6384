"""Read a built dataset (local folder or s3:// prefix): manifest, index, shard locations, samples.

The reading half of the shard format, for `pipeline` and `inspect`. Functions take the dataset
root and an optional `Storage` (for a custom S3 endpoint); none of them unpickle anything.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from viewstream.errors import UsageError

from sharding.format import (
    INDEX_FILE,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    QUARANTINE_FILE,
    QUARANTINE_SCHEMA,
    SHARDS_DIR,
    idx_name,
)
from sharding.storage import Storage, join


def _storage(storage: Storage | None) -> Storage:
    return storage if storage is not None else Storage()


def _root(root: str) -> str:
    return root.rstrip("/") if len(root) > 1 else root


def load_manifest(root: str, storage: Storage | None = None) -> dict:
    """The dataset's manifest.json as a dict; UsageError if `root` holds no dataset."""
    uri = join(_root(root), MANIFEST_FILE)
    try:
        data = _storage(storage).read_bytes(uri)
    except FileNotFoundError:
        raise UsageError(f"{root!r} is not a viewstream dataset (no {MANIFEST_FILE})") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError):
        raise
    except Exception as err:  # remote: no bucket, no credentials, unreachable endpoint
        raise UsageError(f"cannot read {uri!r}: {err}") from None
    return json.loads(data)


def read_index(root: str, storage: Storage | None = None) -> pa.Table:
    """index.parquet (format.INDEX_SCHEMA): one row per sample, in shard order."""
    return _read_table(join(_root(root), INDEX_FILE), INDEX_SCHEMA, storage)


def read_quarantine(root: str, storage: Storage | None = None) -> pa.Table:
    """quarantine.parquet (format.QUARANTINE_SCHEMA): one row per input not in any shard."""
    return _read_table(join(_root(root), QUARANTINE_FILE), QUARANTINE_SCHEMA, storage)


def _read_table(uri: str, schema: pa.Schema, storage: Storage | None) -> pa.Table:
    try:
        data = _storage(storage).read_bytes(uri)
    except FileNotFoundError:
        raise UsageError(f"{uri!r} is missing (the dataset is incomplete; rerun the shard command)") from None
    return pq.read_table(io.BytesIO(data), schema=schema)


def shard_uri(root: str, shard_name: str) -> str:
    """Where shard `shard_name` (e.g. ``data-000000.tar``, as in the manifest) lives."""
    return join(_root(root), SHARDS_DIR, shard_name)


def shard_uris(root: str, storage: Storage | None = None) -> list[str]:
    """Every finished shard of the dataset, in order."""
    return [shard_uri(root, s["name"]) for s in load_manifest(root, storage)["shards"]]


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


def iter_shard(uri: str, storage: Storage | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream a shard's samples as (key, {ext: bytes}) in tar order (no random access needed)."""
    with _storage(storage).open_read(uri) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            key, members = None, {}
            for info in tar:
                if not info.isfile():
                    continue
                base, _, ext = info.name.partition(".")
                if key is not None and base != key:
                    yield key, members
                    members = {}
                key = base
                members[ext] = tar.extractfile(info).read()
            if key is not None:
                yield key, members
