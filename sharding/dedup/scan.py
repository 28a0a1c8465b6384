"""Find the photos held by several groups: hash-partitioned, so no task holds the corpus.

  split  (a task per chunk of SPLIT_SHARDS shards): the views of those shards' index parts, one
         row each (SPLIT_SCHEMA), partitioned by the sha256's leading `bits` bits into 2**bits
         buckets, one file per (bucket, chunk).
  scan   (a task per bucket): that bucket's split files -> the occurrences of every sha256 held
         by >= 2 distinct groups, sorted; then a marker; then the split files are deleted.
Invariants: a bucket is a range of sha256s (bucket order is sha256 order), so buckets are
disjoint and a duplicate is always found within one bucket; the bucket count is a power of two
with about ROWS_PER_BUCKET views per bucket, so a task's memory is bounded by a bucket, not the
corpus. Views without a valid sha256 (a migrated sample whose {key}.json had none) cannot match
and are left out. See ARCHITECTURE.md section 1, "Duplicates across groups".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from groundfloor.parquet_files import read_parquet
from groundfloor.storage import Storage, join
from sharding.build import parquet_bytes
from sharding.dataset import index_part_uri
from sharding.dedup.markers import dups_uri, marker_uri, split_folder, split_name, write_marker

SPLIT_SHARDS = 16              # shards per split task (its memory: 16 index parts)
ROWS_PER_BUCKET = 2_000_000    # target views per bucket
MAX_BUCKET_BITS = 16           # at most 65,536 buckets (the sha256's first two bytes)

SPLIT_SCHEMA = pa.schema([
    ("sha256", pa.binary(32)), ("group_id", pa.string()), ("key", pa.string()),
    ("shard", pa.string()), ("row", pa.int32()), ("view", pa.int32()),
])
_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def bucket_bits(num_views: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
    """log2 of the bucket count: the smallest power of two giving <= rows_per_bucket per bucket."""
    bits = 0
    while bits < MAX_BUCKET_BITS and (num_views >> bits) > rows_per_bucket:
        bits += 1
    return bits


@dataclass(frozen=True)
class SplitTask:
    """Split chunk `number`: the views of `shards` into `buckets` of 2**bits (inputs: `fingerprint`)."""

    number: int
    shards: tuple[str, ...]
    fingerprint: str
    bits: int
    buckets: tuple[int, ...] = ()   # the buckets to write (the others are scanned already)


def view_rows(part: pa.Table, shard: str) -> pa.Table:
    """One row per view of an index part (SPLIT_SCHEMA); views with no valid sha256 are left out
    (a migrated sample whose {key}.json had none cannot be matched)."""
    shas = part.column("view_sha256").combine_chunks()
    flat = pc.list_flatten(shas)
    parents = pc.list_parent_indices(shas).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = shas.offsets.to_numpy()[:-1] - shas.offsets[0].as_py()
    views = np.arange(len(flat), dtype=np.int64) - offsets[parents] if len(flat) else parents
    valid = pc.fill_null(pc.equal(pc.utf8_length(flat), 64), False).to_numpy(zero_copy_only=False)
    digests = np.zeros((len(flat), 32), np.uint8)
    if valid.any():
        text = np.frombuffer(b"".join(s.encode("ascii", "replace") for s in flat.filter(pa.array(valid)).to_pylist()),
                             np.uint8).reshape(-1, 64)
        nibbles = _HEX[text]
        ok = (nibbles != 255).all(axis=1)
        where = np.flatnonzero(valid)
        valid[where[~ok]] = False
        digests[where] = (nibbles[:, 0::2] << 4) | (nibbles[:, 1::2] & 15)
    keep = np.flatnonzero(valid)
    rows = parents[keep]
    sha = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(keep), [None, pa.py_buffer(digests[keep].tobytes())])
    return pa.table({
        "sha256": sha,
        "group_id": part.column("group_id").take(pa.array(rows)),
        "key": part.column("key").take(pa.array(rows)),
        "shard": pa.array([shard] * len(keep), pa.string()),
        "row": pa.array(rows, pa.int32()),
        "view": pa.array(views[keep], pa.int32()),
    }, schema=SPLIT_SCHEMA)


def read_view_rows(storage: Storage, uri: str) -> pa.Table:
    """A file of view rows (SPLIT_SCHEMA): a split file or a bucket's duplicates."""
    return read_parquet(storage.read_bytes(uri), schema=SPLIT_SCHEMA)


def bucket_of(sha: pa.FixedSizeBinaryArray, bits: int) -> np.ndarray:
    """The bucket of each sha256: its first `bits` bits (a range partition: bucket order is
    sha256 order)."""
    if bits == 0 or len(sha) == 0:
        return np.zeros(len(sha), np.int64)
    raw = np.frombuffer(sha.buffers()[1], np.uint8, count=32 * (sha.offset + len(sha)))[32 * sha.offset:]
    raw = raw.reshape(-1, 32)
    top = (raw[:, 0].astype(np.int64) << 8) | raw[:, 1]
    return top >> (16 - bits)


def split_chunk(task: SplitTask, output: str, storage: Storage) -> int:
    """Split the views of `task.shards` into buckets; returns the views written."""
    parts = []
    for shard in task.shards:
        data = storage.read_bytes(index_part_uri(output, shard))
        part = read_parquet(data, columns=["key", "group_id", "view_sha256"])
        parts.append(view_rows(part, shard))
    table = pa.concat_tables(parts) if parts else SPLIT_SCHEMA.empty_table()
    buckets = bucket_of(table.column("sha256").combine_chunks(), task.bits)
    order = np.argsort(buckets, kind="stable")
    table, buckets = table.take(pa.array(order)), buckets[order]
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]) if len(buckets) else np.array([], np.int64)
    ends = np.r_[starts[1:], len(buckets)]
    wanted = set(task.buckets)
    for start, end in zip(starts, ends):
        if int(buckets[start]) in wanted:
            uri = join(split_folder(output, int(buckets[start])), split_name(task.number, task.fingerprint))
            storage.write_bytes(uri, parquet_bytes(table.slice(int(start), int(end - start))))
    return table.num_rows


@dataclass(frozen=True)
class BucketTask:
    """Scan one bucket: the split files of every chunk, by chunk fingerprint (inputs: `fingerprint`)."""

    bucket: int
    chunks: tuple[str, ...]   # fingerprint of each split chunk, by chunk number
    fingerprint: str


def duplicates_in(table: pa.Table) -> pa.Table:
    """The rows of `table` (SPLIT_SCHEMA) whose sha256 is held by >= 2 distinct groups, sorted by
    (sha256, shard, row, view)."""
    if table.num_rows == 0:
        return table
    counts = table.group_by("sha256", use_threads=False).aggregate([("group_id", "count_distinct")])
    shared = counts.filter(pc.greater(counts.column("group_id_count_distinct"), 1)).column("sha256")
    dups = table.filter(pc.is_in(table.column("sha256"), value_set=shared.combine_chunks()))
    return dups.sort_by([("sha256", "ascending"), ("shard", "ascending"), ("row", "ascending"),
                         ("view", "ascending")])


def scan_bucket(task: BucketTask, output: str, storage: Storage) -> tuple[int, int, int]:
    """Find the duplicates of one bucket; returns (bucket, duplicate sha256s, their occurrences)."""
    folder = split_folder(output, task.bucket)
    wanted = {split_name(n, fp) for n, fp in enumerate(task.chunks)}
    try:
        entries = list(storage.iter_files(folder)) if storage.is_folder(folder) else []
    except FileNotFoundError:
        entries = []
    names = sorted(e.relpath for e in entries if e.relpath in wanted)
    tables = [read_view_rows(storage, join(folder, n)) for n in names]
    table = pa.concat_tables(tables) if tables else SPLIT_SCHEMA.empty_table()
    del tables
    dups = duplicates_in(table)
    del table
    storage.write_bytes(dups_uri(output, task.bucket), parquet_bytes(dups))
    shas = len(pc.unique(dups.column("sha256"))) if dups.num_rows else 0
    write_marker(storage, marker_uri(output, "dups", task.bucket), task.fingerprint, sha256=shas,
                 occurrences=dups.num_rows)
    for entry in entries:  # consumed (and any stale ones): the marker now stands for them
        storage.remove(entry.uri)
    return task.bucket, shas, dups.num_rows
