"""The deterministic shard plan, streamed: input batches -> ranked, spilled partitions -> shards.

Phase one of a build. Every group gets a 64-bit *rank*: the first 8 bytes of
sha256(f"{seed}\\0{group id}") (the seeded order: sorted paths cluster similar images, a reader
can only shuffle within a window of a shard or two, so shuffling at creation is what makes
every shard a fair mix), or with no seed the first 8 bytes of the group id itself (sorted
order). The plan is the inputs sorted by (rank, group id, uri, label) and packed greedily into
shards of at most `max_bytes` input bytes and `max_samples` groups (a group bigger than
`max_bytes` gets a shard of its own); groups are never split. That is a pure function of
(inputs, limits): independent of listing order, of how inputs are spread over manifest files,
and of how many partitions the sort uses, so every executor builds the same shards and a rerun
finds the same shard names for the same work.

Memory: inputs are never held together (beyond IN_MEMORY_ROWS, below which one in-memory sort
is cheaper than 256 files). Each batch is ranked and appended to one of 256
partition files by the rank's top byte (a range partition, so partition order is rank order);
partitions are then sorted one at a time (in Arrow) and packed in order, the open shard
carried from one partition to the next. A partition too big to sort comfortably is split again
by the next byte of its rank (in sorted order: of its group id, so ids with a long common
prefix still split; only one group bigger than MAX_PARTITION_ROWS is ever sorted whole). Hand-written rather than Ray Data / DuckDB: the plan must run in
a plain driver with bounded memory and no cluster, and it is ~100 lines of Arrow.

Keys: ``{slug}-{hash}`` where `slug` is the group id with every character outside
``[A-Za-z0-9_-]`` replaced by ``_`` and cut to 40 characters (readable in listings), and `hash`
is the first 16 hex digits of sha1(group id) (unique: two different group ids that slug alike
still differ). Keys therefore have no dots or slashes, are stable across runs and machines, and
keep tar member names within ustar's 100 bytes.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sharding.format import shard_name
from sharding.records import INPUT_SCHEMA, InputRecord, decode, encode

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
SLUG_CHARS = 40
HASH_CHARS = 16
PARTITION_BITS = 8                   # 256 partitions per level, one byte of the order each
MAX_PARTITION_ROWS = 2_000_000       # split a partition again above this (~300 MB to sort)
MAX_SORTED_DEPTH = 32                # sorted order: split by group-id bytes up to this one
IN_MEMORY_ROWS = 200_000             # inputs up to this many are sorted without spilling (~20 MB)

SPILL_SCHEMA = pa.schema([("rank", pa.uint64())] + list(INPUT_SCHEMA))
# A shard's input list (Parquet bytes in its build task), in plan order.
LIST_SCHEMA = pa.schema([f for f in INPUT_SCHEMA if f.name != "file"])
SORT_KEYS = [("rank", "ascending"), ("group_id", "ascending"), ("uri", "ascending"),
             ("label", "ascending"), ("size", "ascending"), ("meta", "ascending")]


def group_key(group_id: str, unique: str | None = None) -> str:
    """The sample key of a group (see module docstring). `unique`, when given, is hashed
    instead of the group id (a WebDataset key is unique only within its tar)."""
    slug = _UNSAFE.sub("_", group_id).strip("_")[:SLUG_CHARS] or "g"
    digest = hashlib.sha1((unique or group_id).encode("utf-8", "surrogateescape")).hexdigest()[:HASH_CHARS]
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class Group:
    """One natural-view group: a sample to be, with its inputs in view order."""

    group_id: str
    key: str
    label: str | None
    inputs: tuple[InputRecord, ...]

    @property
    def input_bytes(self) -> int:
        return sum(r.size for r in self.inputs)


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: its number, file name and input rows (LIST_SCHEMA, plan order)."""

    number: int
    name: str
    rows: pa.Table = field(repr=False, compare=False)
    num_groups: int = 0
    input_bytes: int = 0

    @property
    def num_inputs(self) -> int:
        return self.rows.num_rows

    @property
    def groups(self) -> list[Group]:
        return groups_of(self.rows)

    def __eq__(self, other) -> bool:
        return (isinstance(other, PlannedShard) and (self.number, self.name) == (other.number, other.name)
                and self.rows.equals(other.rows))


@dataclass
class PlanStats:
    """What `--dry-run` reports, gathered while planning (O(1) memory)."""

    num_inputs: int = 0
    num_groups: int = 0
    num_shards: int = 0
    input_bytes: int = 0
    min_shard_bytes: int = 0
    max_shard_bytes: int = 0
    min_shard_groups: int = 0
    max_shard_groups: int = 0
    largest_group_inputs: int = 0
    largest_group_bytes: int = 0
    largest_group_id: str | None = None
    groups_split_across_files: int = 0
    num_files: int = 1

    def add_shard(self, shard: PlannedShard) -> None:
        first = self.num_shards == 0
        self.num_shards += 1
        self.min_shard_bytes = shard.input_bytes if first else min(self.min_shard_bytes, shard.input_bytes)
        self.max_shard_bytes = max(self.max_shard_bytes, shard.input_bytes)
        self.min_shard_groups = shard.num_groups if first else min(self.min_shard_groups, shard.num_groups)
        self.max_shard_groups = max(self.max_shard_groups, shard.num_groups)


def groups_of(rows: pa.Table) -> list[Group]:
    """The groups of a shard's input list (consecutive rows of one group id, in plan order).
    The label of a group is the first non-empty label of its records."""
    groups: list[Group] = []
    names = ("group_id", "uri", "label", "size", "meta")
    columns = [rows.column(c).to_pylist() if c in rows.column_names else [None] * rows.num_rows for c in names]
    current: list[InputRecord] = []
    for gid, uri, label, size, meta in zip(*columns):
        record = InputRecord(decode(gid), decode(uri), decode(label), size, decode(meta))
        if current and current[0].group_id != record.group_id:
            groups.append(_group(current))
            current = []
        current.append(record)
    if current:
        groups.append(_group(current))
    return groups


def _group(records: list[InputRecord]) -> Group:
    label = next((r.label for r in records if r.label is not None), None)
    return Group(records[0].group_id, group_key(records[0].group_id), label, tuple(records))


def make_groups(records: list[InputRecord]) -> list[Group]:
    """Gather records into groups (records of one group_id, ordered by uri), sorted by group id."""
    return [g for g in groups_of(_records_table(sorted(records)))]


def ranks(group_ids: pa.Array, seed: int | None) -> pa.Array:
    """The rank (see module docstring) of every group id of a binary array. Hashed once per
    run of equal ids (manifests usually list a group's photos together), the only per-input
    Python work of the plan."""
    n = len(group_ids)
    if n == 0:
        return pa.array([], pa.uint64())
    same = pc.equal(group_ids.slice(1), group_ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ids = group_ids.take(pa.array(starts)).to_pylist()
    if seed is None:
        values = [int.from_bytes(g[:8].ljust(8, b"\0"), "big") for g in ids]
    else:
        prefix = f"{seed}\0".encode()
        sha = hashlib.sha256
        values = [int.from_bytes(sha(prefix + g).digest()[:8], "big") for g in ids]
    return pa.array(np.repeat(np.array(values, dtype=np.uint64), np.diff(np.append(starts, n))))


class _Spill:
    """Rows appended to 256 local Arrow IPC files by one byte of their order: byte `depth` of
    the rank (depth < 8), or, in sorted order, byte `depth` of the group id itself (the rank
    *is* its first 8 bytes), so that a long common prefix can still be split."""

    def __init__(self, folder: str, depth: int, by_group_id: bool):
        self.folder, self.depth, self.by_group_id = folder, depth, by_group_id
        os.makedirs(folder, exist_ok=True)
        self._writers: dict[int, tuple] = {}
        self.counts = np.zeros(1 << PARTITION_BITS, np.int64)

    @property
    def can_split_again(self) -> bool:
        return self.depth + 1 < (MAX_SORTED_DEPTH if self.by_group_id else 8)

    def _parts(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.depth < 8:
            rank = batch.column(0).to_numpy(zero_copy_only=False)
            shift = np.uint64(64 - PARTITION_BITS * (self.depth + 1))
            return ((rank >> shift) & np.uint64(0xFF)).astype(np.int64)
        d = self.depth
        return np.array([g[d] if len(g) > d else 0 for g in batch.column("group_id").to_pylist()], np.int64)

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        part = self._parts(batch)
        counts = np.bincount(part, minlength=1 << PARTITION_BITS)
        self.counts += counts
        ordered = batch.take(pa.array(np.argsort(part, kind="stable")))
        offset = 0
        for p in np.flatnonzero(counts):
            n = int(counts[p])
            self._writer(int(p)).write_batch(ordered.slice(offset, n))
            offset += n

    def _writer(self, p: int):
        if p not in self._writers:
            sink = pa.OSFile(os.path.join(self.folder, f"{p:03d}.arrow"), "wb")
            self._writers[p] = (sink, pa.ipc.new_stream(sink, SPILL_SCHEMA))
        return self._writers[p][1]

    def partitions(self) -> Iterator[tuple[int, str]]:
        """(rows, path) of each non-empty partition in order (files removed by the caller)."""
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        self._writers = {}
        for p in np.flatnonzero(self.counts):
            yield int(self.counts[p]), os.path.join(self.folder, f"{int(p):03d}.arrow")


def _sorted_partitions(spill: _Spill) -> Iterator[pa.Table]:
    """Each partition sorted by SORT_KEYS, in order; oversized ones split by the next byte."""
    for rows, path in spill.partitions():
        try:
            if rows > MAX_PARTITION_ROWS and spill.can_split_again:
                inner = _Spill(path + ".d", spill.depth + 1, spill.by_group_id)
                with pa.memory_map(path) as source:
                    for batch in pa.ipc.open_stream(source):
                        inner.add(batch)
                os.unlink(path)
                yield from _sorted_partitions(inner)
                continue
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all()
            yield table.sort_by(SORT_KEYS).combine_chunks()
            del table
        finally:
            if os.path.exists(path):
                os.unlink(path)


def plan_stream(
    batches: Iterable[pa.RecordBatch],
    name: str = "data",
    max_bytes: int = 256 * 1024 * 1024,
    max_samples: int = 10_000,
    shuffle_seed: int | None = 0,
    stats: PlanStats | None = None,
    spill_dir: str | None = None,
) -> Iterator[PlannedShard]:
    """The plan of INPUT_SCHEMA `batches` as shards, yielded in order as each is closed (see the
    module docstring). `stats`, when given, is filled in as the plan goes (for --dry-run)."""
    if max_bytes <= 0 or max_samples <= 0:
        raise ValueError("max_bytes and max_samples must be positive")
    stats = stats if stats is not None else PlanStats()
    with tempfile.TemporaryDirectory(prefix="viewstream-plan-", dir=spill_dir) as tmp:
        spill: _Spill | None = None
        held: list[pa.RecordBatch] = []  # a small input is sorted in memory, never spilled
        max_file = 0
        for batch in batches:
            if not batch.num_rows:
                continue
            stats.num_inputs += batch.num_rows
            max_file = max(max_file, pc.max(batch.column("file")).as_py())
            rank = ranks(batch.column("group_id"), shuffle_seed)
            ranked = pa.RecordBatch.from_arrays([rank, *batch.columns], schema=SPILL_SCHEMA)
            if spill is not None:
                spill.add(ranked)
                continue
            held.append(ranked)
            if stats.num_inputs > IN_MEMORY_ROWS:
                spill = _Spill(tmp, 0, by_group_id=shuffle_seed is None)
                for ranked in held:
                    spill.add(ranked)
                held = []
        stats.num_files = max_file + 1
        if spill is not None:
            tables = _sorted_partitions(spill)
        else:
            tables = iter([pa.Table.from_batches(held, SPILL_SCHEMA).sort_by(SORT_KEYS).combine_chunks()] if held else [])
        yield from _pack(tables, name, max_bytes, max_samples, stats)


def _pack(tables: Iterator[pa.Table], name: str, max_bytes: int, max_samples: int,
          stats: PlanStats) -> Iterator[PlannedShard]:
    pending: list[pa.Table] = []   # slices of the open shard, from one or more partitions
    groups = size = 0

    def close() -> PlannedShard:
        number = stats.num_shards
        rows = pa.concat_tables(pending).select(LIST_SCHEMA.names).combine_chunks()
        shard = PlannedShard(number, shard_name(name, number), rows, groups, size)
        stats.add_shard(shard)
        return shard

    for table in tables:
        n = table.num_rows
        gid = table.column("group_id").combine_chunks()
        change = pc.not_equal(gid.slice(1), gid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1])
        sizes = table.column("size").to_numpy()
        files = table.column("file").to_numpy()
        group_bytes = np.add.reduceat(sizes, starts)
        group_inputs = np.diff(np.append(starts, n))
        split = np.minimum.reduceat(files, starts) != np.maximum.reduceat(files, starts)
        stats.num_groups += len(starts)
        stats.input_bytes += int(sizes.sum())
        stats.groups_split_across_files += int(split.sum())
        biggest = int(np.argmax(group_inputs))
        if group_inputs[biggest] > stats.largest_group_inputs:
            stats.largest_group_inputs = int(group_inputs[biggest])
            stats.largest_group_bytes = int(group_bytes[biggest])
            stats.largest_group_id = decode(gid[int(starts[biggest])].as_py())
        begin = 0  # first row of this table in the open shard
        for start, nbytes in zip(starts.tolist(), group_bytes.tolist()):
            if groups and (size + nbytes > max_bytes or groups >= max_samples):
                pending.append(table.slice(begin, start - begin))
                yield close()
                pending, groups, size, begin = [], 0, 0, start
            groups += 1
            size += nbytes
        pending.append(table.slice(begin, n - begin))
    if groups:
        yield close()


def _records_table(records: list[InputRecord]) -> pa.Table:
    return pa.table(
        {
            "group_id": pa.array([encode(r.group_id) for r in records], pa.binary()),
            "uri": pa.array([encode(r.uri) for r in records], pa.binary()),
            "label": pa.array([encode(r.label) if r.label is not None else None for r in records], pa.binary()),
            "size": pa.array([r.size for r in records], pa.int64()),
            "file": pa.array([0] * len(records), pa.int32()),
            "meta": pa.array([encode(r.meta) if r.meta is not None else None for r in records], pa.binary()),
        },
        schema=INPUT_SCHEMA,
    )


def plan_shards(
    records: list[InputRecord],
    name: str = "data",
    max_bytes: int = 256 * 1024 * 1024,
    max_samples: int = 10_000,
    shuffle_seed: int | None = 0,
) -> list[PlannedShard]:
    """The plan of an in-memory list of records (tests and small tools; builds stream)."""
    batches = _records_table(records).to_batches(max_chunksize=1000)
    return list(plan_stream(batches, name, max_bytes, max_samples, shuffle_seed))
