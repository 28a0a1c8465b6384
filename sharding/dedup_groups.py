"""Exact duplicates ACROSS natural-view groups: found after the build, reported, optionally fixed.

Why after the build: a photo's identity is the sha256 of its stored bytes, known only once the
images were read (the build hashes each view and writes it to the index parts, ``view_sha256``).
Duplicates *inside* a group are dropped by the build; a catalogue's stock photo reused under many
listings is a positive of each of its groups but, left alone, a NEGATIVE of every other group that
holds the same bytes. The corpus is 1e8-1e9 photos, so the scan is hash-partitioned and runs as
tasks on the sharder's executor (inline, local processes or Ray); the driver never sees the corpus:

1. split (a task per chunk of SPLIT_SHARDS consecutive shards): reads those shards' index parts,
   one row per view (sha256 as 32 bytes, group id, key, shard, tar position, view index), and
   writes them partitioned by the sha256's leading bits into B buckets:
   ``_dedup/split/{bucket}/{chunk}-{fingerprint}.parquet`` (only non-empty buckets). B is a power
   of two chosen so a bucket holds about ROWS_PER_BUCKET views (corpus / B).
2. bucket (a task per bucket): reads that bucket's split files (~ corpus / B rows: memory is
   bounded by a bucket, not the corpus), keeps the sha256s held by >= 2 distinct groups,
   writes their occurrences, sorted, to ``_dedup/dups/{bucket}.parquet`` and a marker, then
   deletes the split files it consumed (the intermediate data does not stay in the dataset).
3. report (driver): streams the bucket parts, one at a time in bucket (= sha256) order, into
   ``duplicates.parquet`` (format.DUPLICATES_SCHEMA: sha256, and per occurrence its group,
   shard, key and view). The file is the same whatever B or the chunking.
4. only with a mode other than ``report`` and only where duplicates exist: the occurrences
   become per-sample actions and ONLY the shards holding an affected group are rewritten
   (`sharding.dedup_rewrite`, a task per shard), each as ``{stem}-dd.tar`` with its .idx, index
   part, quarantine part (the new records only; the build's part stays valid) and part record;
   shards.parquet then lists the rewritten shard instead of the original (the commit point), and
   the manifest's counts are recomputed from the shard records. drop / keep-first decide each
   sha256 on its own, so a task per bucket writes the actions, by folder of 16 shard numbers
   (``_dedup/actions/{mode}/{folder}/{bucket}-{fingerprint}.parquet``), and returns the shard
   names it touches; a rewrite reads its folder's parts. merge needs the connected components
   of all duplicates, which the driver computes and writes the same way (see Memory).

Modes (``viewstream shard --dedup-across-groups``):
  * ``report`` (default): duplicates.parquet, nothing else changes. The pipeline then treats the
    groups as it finds them: a photo shared by groups A and B is a positive within A and within B,
    and when A and B meet in one batch, A's view and B's view of those same bytes are negatives
    of each other (the contrastive loss pushes identical images apart). Choose a mode to avoid it.
  * ``drop``: the shared photo leaves every group holding it; each removal is a quarantine record
    (reason ``duplicate_across_groups``, detail: the sha256 and the other groups).
  * ``keep-first``: kept in the first group holding it, in (shard name, tar position) order (= plan
    order, deterministic), removed from the others with ``duplicate_across_groups`` records.
  * ``merge``: groups sharing bytes are joined (union-find over the duplicate pairs: connected
    components) into ONE group, the component's first group in (shard, tar position) order: its
    key and group id stay, its shard receives every photo of the other groups (a component
    spanning several shards is moved into the shard of its first group, which may then exceed
    --shard-bytes), each distinct photo stored once; extra copies of shared bytes get a
    ``duplicate_merged`` quarantine record, the merged-away groups a row of ``merged.parquet``
    (format.MERGED_SCHEMA, ``merged_into``) and their ids in the survivor's ``{key}.json``
    ("merged_from"). Afterwards no two groups hold the same bytes, so no batch pairs them as
    negatives.
Every input stays accounted for: in a shard or in the quarantine with its reason.

Memory: split and bucket tasks hold a chunk of shards or a bucket (~ROWS_PER_BUCKET views,
~100 B each: 19-20 MB of Arrow per bucket task at 1e6 and 4e6 photos, flat,
benchmarks/bench_dedup_scan.py); a drop / keep-first action task one bucket's duplicates. The
driver holds O(shards) names and records in every mode, and in ``merge`` mode only, every
duplicate occurrence as numpy / Arrow columns for the connected components (`merge_plan`,
measured ~650 B per occurrence at peak with its output tables, 9e5 occurrences in 7.6 s under
load 15): O(duplicates), never O(corpus). A corpus whose shared photos are themselves 1e8
would need the components computed distributedly (label propagation over hash-partitioned
edges); that is not built.

Resumable: every bucket writes a marker with the fingerprint of its inputs (the original
shards' tar sha256 and build fingerprints, and B) after its output; a rerun scans only the
buckets whose marker does not match (splitting every chunk again, into those buckets only: a
split is not resumed on its own), and a rewritten shard's part record carries the fingerprint
of (original shard, its actions), so a rerun of the shard command redoes only what changed;
rerunning a finished dataset reads nothing but the markers and the (small) duplicate parts.
The originals are never modified: a rewrite reads them, so a rerun (or another mode) always
starts from the build's shards.

Hand-written rather than Ray Data / DuckDB: it must run on the sharder's three executors, through
`Storage` (local and S3 alike), with shard-granular tasks; it is a few hundred lines of Arrow.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from sharding.build import ShardRecord, parquet_bytes, part_uri
from sharding.dataset import index_part_uri
from sharding.dedup_rewrite import (
    ACTION_SCHEMA,
    MERGE_ACTION_SCHEMA,
    RewriteTask,
    SampleAction,
    _shard_number,
    actions_folder,
    rewrite_shard,
)
from sharding.executors import Executor
from sharding.format import (
    DEDUP_DIR,
    DUPLICATES_FILE,
    DUPLICATES_SCHEMA,
    MERGED_FILE,
    MERGED_SCHEMA,
    QUARANTINE_DIR,
    REWRITTEN_SUFFIX,
    quarantine_part_name,
    rewritten_name,
)
from groundfloor.storage import Storage, join
from sharding.validate import DUPLICATE_ACROSS_GROUPS, DUPLICATE_MERGED

Mode = Literal["report", "drop", "keep-first", "merge"]
MODES: tuple[str, ...] = ("report", "drop", "keep-first", "merge")
SPLIT_SHARDS = 16              # shards per split task (its memory: 16 index parts)
ROWS_PER_BUCKET = 2_000_000    # target views per bucket (~200 MB to scan)
MAX_BUCKET_BITS = 16           # at most 65,536 buckets (the sha256's first two bytes)
DETAIL_GROUPS = 5              # other groups named in a quarantine detail

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


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ---- 1. split ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitTask:
    number: int
    shards: tuple[str, ...]
    fingerprint: str
    bits: int
    buckets: tuple[int, ...] = ()   # the buckets to write (the others are scanned already)


def _split_uri(output: str, bucket: int, chunk: int, fingerprint: str) -> str:
    return join(output, DEDUP_DIR, "split", f"{bucket:05d}", f"{chunk:06d}-{fingerprint[:16]}.parquet")


def _marker_uri(output: str, kind: str, number: int) -> str:
    return join(output, DEDUP_DIR, kind, f"{number:06d}.json")


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
        part = pq.ParquetFile(io.BytesIO(data)).read(columns=["key", "group_id", "view_sha256"], use_threads=False)
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
            uri = _split_uri(output, int(buckets[start]), task.number, task.fingerprint)
            storage.write_bytes(uri, parquet_bytes(table.slice(int(start), int(end - start))))
    return table.num_rows


# ---- 2. bucket ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketTask:
    bucket: int
    chunks: tuple[str, ...]   # fingerprint of each split chunk, by chunk number
    fingerprint: str


def _dups_uri(output: str, bucket: int) -> str:
    return join(output, DEDUP_DIR, "dups", f"{bucket:05d}.parquet")


def duplicates_in(table: pa.Table) -> pa.Table:
    """The rows of `table` (SPLIT_SCHEMA) whose sha256 is held by >= 2 distinct groups, sorted by
    (sha256, shard, row, view)."""
    if table.num_rows == 0:
        return table
    counts = table.group_by("sha256").aggregate([("group_id", "count_distinct")])
    shared = counts.filter(pc.greater(counts.column("group_id_count_distinct"), 1)).column("sha256")
    dups = table.filter(pc.is_in(table.column("sha256"), value_set=shared.combine_chunks()))
    return dups.sort_by([("sha256", "ascending"), ("shard", "ascending"), ("row", "ascending"),
                         ("view", "ascending")])


def scan_bucket(task: BucketTask, output: str, storage: Storage) -> tuple[int, int, int]:
    """Find the duplicates of one bucket; returns (bucket, duplicate sha256s, their occurrences)."""
    folder = join(output, DEDUP_DIR, "split", f"{task.bucket:05d}")
    wanted = {f"{n:06d}-{fp[:16]}.parquet" for n, fp in enumerate(task.chunks)}
    try:
        entries = list(storage.iter_files(folder)) if storage.is_folder(folder) else []
    except FileNotFoundError:
        entries = []
    names = sorted(e.relpath for e in entries if e.relpath in wanted)
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(join(folder, n))), schema=SPLIT_SCHEMA) for n in names]
    table = pa.concat_tables(tables) if tables else SPLIT_SCHEMA.empty_table()
    del tables
    dups = duplicates_in(table)
    del table
    storage.write_bytes(_dups_uri(output, task.bucket), parquet_bytes(dups))
    shas = len(pc.unique(dups.column("sha256"))) if dups.num_rows else 0
    storage.write_bytes(_marker_uri(output, "dups", task.bucket),
                        json.dumps({"fingerprint": task.fingerprint, "sha256": shas,
                                    "occurrences": dups.num_rows}).encode())
    for entry in entries:  # consumed (and any stale ones): the marker now stands for them
        storage.remove(entry.uri)
    return task.bucket, shas, dups.num_rows


# ---- 3. report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Occurrence:
    sha256: str
    group_id: str
    key: str
    shard: str
    row: int
    view: int

    @property
    def group(self) -> tuple[str, int]:
        """The group's place: (shard, tar position), the deterministic order of every mode."""
        return (self.shard, self.row)


def bucket_duplicates(output: str, storage: Storage, bucket: int) -> Iterator[list[Occurrence]]:
    """The occurrences of each duplicated sha256 of one bucket, in sha256 order."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(_dups_uri(output, bucket))), schema=SPLIT_SCHEMA)
    current: list[Occurrence] = []
    for row in table.to_pylist():
        occ = Occurrence(row["sha256"].hex(), row["group_id"], row["key"], row["shard"], row["row"], row["view"])
        if current and current[0].sha256 != occ.sha256:
            yield current
            current = []
        current.append(occ)
    if current:
        yield current


def iter_duplicates(output: str, storage: Storage, buckets: int) -> Iterator[list[Occurrence]]:
    """Every duplicated sha256's occurrences, in sha256 order, one bucket in memory at a time."""
    for bucket in range(buckets):
        yield from bucket_duplicates(output, storage, bucket)


def write_report(output: str, storage: Storage, buckets: int) -> tuple[int, int]:
    """duplicates.parquet, streamed from the bucket parts (a bucket in memory at a time).
    Returns (duplicate sha256s, their occurrences)."""
    num_sha = num_occ = 0
    with storage.open_atomic_write(join(output, DUPLICATES_FILE)) as sink:
        with pq.ParquetWriter(sink, DUPLICATES_SCHEMA) as writer:
            rows: list[dict] = []
            for occs in iter_duplicates(output, storage, buckets):
                num_sha += 1
                num_occ += len(occs)
                rows.append({"sha256": occs[0].sha256, "group_ids": [o.group_id for o in occs],
                             "shards": [o.shard for o in occs], "keys": [o.key for o in occs],
                             "views": [o.view for o in occs]})
                if len(rows) >= 65_536:
                    writer.write_table(pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA))
                    rows = []
            writer.write_table(pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA))
    return num_sha, num_occ


# ---- 4. actions --------------------------------------------------------------------------------
class Actions:
    """Per original shard, per sample key, what its rewrite does (SampleAction)."""

    def __init__(self) -> None:
        self.by_shard: dict[str, dict[str, SampleAction]] = defaultdict(dict)

    def of(self, shard: str, key: str, group_id: str) -> SampleAction:
        found = self.by_shard[shard].get(key)
        if found is None:
            found = self.by_shard[shard][key] = SampleAction(group_id=group_id)
        return found


def _names(groups: list[str]) -> str:
    more = len(groups) - DETAIL_GROUPS
    return ", ".join(groups[:DETAIL_GROUPS]) + (f" and {more} more" if more > 0 else "")


def plan_actions(duplicates: Iterable[list[Occurrence]], mode: Mode) -> Actions:
    """drop / keep-first: what each affected sample's rewrite does. Each sha256 is decided on its
    own (a task per bucket does it). Groups are ordered by place: (shard name, tar position);
    shard names are zero-padded plan numbers, so that is plan order."""
    actions = Actions()

    def place(group: tuple[str, int]) -> tuple[str, int]:
        return group

    if mode in ("drop", "keep-first"):
        for occs in duplicates:
            occs = sorted(occs, key=lambda o: (place(o.group), o.view))
            groups = list(dict.fromkeys(o.group_id for o in occs))
            first = occs[0]
            for o in occs:
                if mode == "keep-first" and o.group == first.group:
                    continue
                if mode == "keep-first":
                    detail = f"sha256 {o.sha256}: kept in group {first.group_id} ({first.shard})"
                else:
                    others = _names([g for g in groups if g != o.group_id])
                    detail = f"sha256 {o.sha256} is also in group(s) {others}"
                actions.of(o.shard, o.key, o.group_id).drop[o.view] = (DUPLICATE_ACROSS_GROUPS, detail)
        return actions
    raise ValueError(f"plan_actions: mode {mode!r} is decided per sha256 only for drop / keep-first")


def components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the graph of `n` nodes with edges (u[i], v[i]): per node, the
    smallest node of its component (min-label propagation with pointer jumping; vectorized,
    O(edges) memory, a few passes for the shallow components duplicates form)."""
    label = np.arange(n, dtype=np.int64)
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


def merge_plan(occ: pa.Table) -> tuple[pa.Table, pa.Table]:
    """merge, for the occurrences of every duplicated sha256 (SPLIT_SCHEMA, sorted by sha256 then
    place): (the copies to quarantine, ACTION_SCHEMA; one row per group merged away,
    MERGE_ACTION_SCHEMA). Groups are nodes (numbered in place order), each sha256 joins its
    occurrences' groups, a component becomes its first group; within a component each sha256 is
    kept at its first occurrence. Numpy and Arrow throughout: ~150 B per occurrence."""
    n = occ.num_rows
    shards = occ.column("shard").combine_chunks().dictionary_encode()
    numbers = np.array([_shard_number(x) for x in shards.dictionary.to_pylist()], np.int64)
    place = (numbers[shards.indices.to_numpy()] << 32) | occ.column("row").to_numpy().astype(np.int64)
    nodes, node_of = np.unique(place, return_inverse=True)
    sha = occ.column("sha256").combine_chunks()
    raw = np.frombuffer(sha.buffers()[1], np.uint8, count=32 * (sha.offset + n))[32 * sha.offset:].reshape(n, 32)
    words = raw.copy().view(np.uint64)  # (n, 4): one comparison per 8 bytes
    new_run = np.r_[True, (words[1:] != words[:-1]).any(axis=1)] if n else np.zeros(0, bool)
    run = np.cumsum(new_run) - 1
    first = np.flatnonzero(new_run)[run]
    label = components(node_of[first], node_of, len(nodes))
    comp = label[node_of]
    views = occ.column("view").to_numpy()
    order = np.lexsort((views, node_of, comp, run))
    kept = np.r_[True, (run[order][1:] != run[order][:-1]) | (comp[order][1:] != comp[order][:-1])] if n else order
    dropped = np.sort(order[~kept.astype(bool)])
    _, node_first = np.unique(node_of, return_index=True)
    survivor_occ = node_first[label]  # per node: an occurrence of its component's first group

    columns = {c: occ.column(c).combine_chunks() for c in ("shard", "key", "group_id")}

    def names(column: str, index: np.ndarray) -> pa.Array:
        return columns[column].take(pa.array(index, pa.int64()))

    hexes = [b.hex() for b in sha.take(pa.array(dropped, pa.int64())).to_pylist()]
    kept_in = names("group_id", survivor_occ[node_of[dropped]]).to_pylist()
    drops = pa.table({
        "shard": names("shard", dropped), "key": names("key", dropped), "group_id": names("group_id", dropped),
        "view": pa.array(views[dropped], pa.int32()),
        "reason": pa.array([DUPLICATE_MERGED] * len(dropped), pa.string()),
        "detail": pa.array([f"sha256 {h}: the same bytes are kept once in group {g} (merged)"
                            for h, g in zip(hexes, kept_in)], pa.string()),
    }, schema=ACTION_SCHEMA)
    members = np.flatnonzero(label != np.arange(len(nodes)))  # groups merged away, in place order
    is_member = np.zeros(len(nodes), bool)
    is_member[members] = True
    d_nodes = node_of[dropped]
    mine = is_member[d_nodes]
    by_node = np.argsort(d_nodes[mine], kind="stable")
    d_nodes, d_views = d_nodes[mine][by_node], views[dropped][mine][by_node]
    left = np.searchsorted(d_nodes, members, "left")  # members' segments of d_nodes are consecutive
    offsets = np.r_[left, np.searchsorted(d_nodes, members[-1], "right")] if len(members) else np.zeros(1)
    into = survivor_occ[members]
    merges = pa.table({
        "shard": names("shard", node_first[members]), "key": names("key", node_first[members]),
        "group_id": names("group_id", node_first[members]),
        "row": pa.array(occ.column("row").to_numpy()[node_first[members]], pa.int32()),
        "into_shard": names("shard", into), "into_key": names("key", into), "into_group": names("group_id", into),
        "skip": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(d_views, pa.int32())),
    }, schema=MERGE_ACTION_SCHEMA)
    return drops, merges


def write_merge_actions(output: str, storage: Storage, buckets: int, fingerprint: str) -> tuple[set[str], pa.Table]:
    """merge: reads every bucket's duplicates (O(duplicates) in the driver), plans, writes the
    actions by shard folder (a merge row to the folders of both its shards) and returns (the
    shards affected, the merge rows)."""
    parts = [pq.read_table(io.BytesIO(storage.read_bytes(_dups_uri(output, b))), schema=SPLIT_SCHEMA)
             for b in range(buckets)]
    occ = pa.concat_tables(parts).combine_chunks()
    del parts
    drops, merges = merge_plan(occ)
    del occ
    suffix = f"-{fingerprint[:16]}.parquet"
    folders: dict[str, dict[str, list[pa.Table]]] = defaultdict(lambda: {"drops": [], "merges": []})
    for kind, table, columns in (("drops", drops, ("shard",)), ("merges", merges, ("shard", "into_shard"))):
        seen_folder: dict[str, np.ndarray] = {}
        for column in columns:
            for shard in pc.unique(table.column(column)).to_pylist():
                folder = actions_folder(output, "merge", shard)
                mask = pc.equal(table.column(column), shard).to_numpy(zero_copy_only=False)
                seen_folder[folder] = seen_folder.get(folder, np.zeros(table.num_rows, bool)) | mask
        for folder, mask in seen_folder.items():
            folders[folder][kind].append(table.filter(pa.array(mask)))
    for folder, kinds in sorted(folders.items()):
        for kind, schema in (("drops", ACTION_SCHEMA), ("merges", MERGE_ACTION_SCHEMA)):
            table = kinds[kind][0] if kinds[kind] else schema.empty_table()
            storage.write_bytes(join(folder, kind + suffix), parquet_bytes(table))
    affected = set(drops.column("shard").to_pylist()) | set(merges.column("shard").to_pylist()) \
        | set(merges.column("into_shard").to_pylist())
    return affected, merges




@dataclass(frozen=True)
class ActionTask:
    bucket: int
    mode: str
    fingerprint: str


def bucket_actions(task: ActionTask, output: str, storage: Storage) -> tuple[int, list[str]]:
    """drop / keep-first for one bucket's duplicates (each sha256 is decided on its own), written
    by shard folder as ``_dedup/actions/{mode}/{folder}/{bucket}-{fingerprint}.parquet``, then
    a marker; returns (bucket, the shards it affects). Memory: one bucket's duplicates."""
    actions = plan_actions(bucket_duplicates(output, storage, task.bucket), task.mode)
    by_folder: dict[str, list[dict]] = defaultdict(list)
    for shard, samples in sorted(actions.by_shard.items()):
        for key, action in sorted(samples.items()):
            for view, (reason, detail) in sorted(action.drop.items()):
                by_folder[actions_folder(output, task.mode, shard)].append(
                    {"shard": shard, "key": key, "group_id": action.group_id, "view": view,
                     "reason": reason, "detail": detail})
    for folder, rows in by_folder.items():
        storage.write_bytes(join(folder, f"{task.bucket:05d}-{task.fingerprint[:16]}.parquet"),
                            parquet_bytes(pa.Table.from_pylist(rows, schema=ACTION_SCHEMA)))
    affected = sorted(actions.by_shard)
    storage.write_bytes(_action_marker_uri(output, task.mode, task.bucket),
                        json.dumps({"fingerprint": task.fingerprint, "shards": affected}).encode())
    return task.bucket, affected


def _action_marker_uri(output: str, mode: str, bucket: int) -> str:
    return join(output, DEDUP_DIR, "actions", mode, "done", f"{bucket:05d}.json")


def _marker(storage: Storage, uri: str, fingerprint: str) -> dict | None:
    try:
        data = json.loads(storage.read_bytes(uri))
    except Exception:  # missing or unreadable: redo
        return None
    return data if data.get("fingerprint") == fingerprint else None


# ---- 5. the pass -------------------------------------------------------------------------------
@dataclass
class DedupResult:
    """What the pass did: the shard records shards.parquet lists now, and the summary the
    manifest keeps (``duplicates_across_groups``)."""

    records: list[ShardRecord]
    summary: dict = field(default_factory=dict)


def dedup_across_groups(output: str, records: list[ShardRecord], mode: Mode, storage: Storage,
                        executor: Callable[[], Executor], *, progress: bool = True,
                        before_rewrite: Callable[[], None] = lambda: None,
                        rows_per_bucket: int = ROWS_PER_BUCKET, split_shards: int = SPLIT_SHARDS) -> DedupResult:
    """Scan the built shards `records` (plan order) for photos held by several groups, write
    duplicates.parquet and, unless `mode` is "report", rewrite the shards it affects.
    `executor()` gives the executor to run tasks on; `before_rewrite` runs once before the
    first shard is rewritten (the caller invalidates the manifest there)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    built = [r for r in records if r.num_samples > 0]
    bits = bucket_bits(sum(r.num_views for r in built), rows_per_bucket)
    num_buckets = 1 << bits
    chunks = [tuple(r.name for r in built[i:i + split_shards]) for i in range(0, len(built), split_shards)]
    by_name = {r.name: r for r in built}
    chunk_fps = [_fingerprint({"bits": bits, "shards": [[n, by_name[n].sha256, by_name[n].fingerprint] for n in c]})
                 for c in chunks]
    bucket_fp = _fingerprint({"bits": bits, "chunks": chunk_fps})
    counts = {b: _marker(storage, _marker_uri(output, "dups", b), bucket_fp) for b in range(num_buckets)}
    needed = tuple(b for b, marker in counts.items() if marker is None)
    if needed:  # every chunk is split again, into the buckets still to scan only
        splits = [SplitTask(i, c, fp, bits, needed) for i, (c, fp) in enumerate(zip(chunks, chunk_fps))]
        _run(executor, partial(split_chunk, output=output, storage=storage), splits, progress, "dup split", "chunk")
        scans = [BucketTask(b, tuple(chunk_fps), bucket_fp) for b in needed]
        for b, shas, _ in _run(executor, partial(scan_bucket, output=output, storage=storage), scans, progress,
                               "dup scan", "bucket"):
            counts[b] = {"sha256": shas}
    num_sha, num_occ = write_report(output, storage, num_buckets)
    summary = {"mode": mode, "num_sha256": num_sha, "num_occurrences": num_occ, "buckets": num_buckets,
               "num_shards_rewritten": 0, "num_groups_merged": 0}
    merged: bytes | None = None   # merged.parquet, written after the rewrites
    affected: set[str] = set()
    action_fp = _fingerprint({"buckets": bucket_fp, "mode": mode})
    if mode == "merge" and num_sha:
        marker_uri = _action_marker_uri(output, mode, 0)
        merged_uri = join(output, DEDUP_DIR, "actions", mode, f"merged-{action_fp[:16]}.parquet")
        marker = _marker(storage, marker_uri, action_fp)
        if marker is None or not storage.exists(merged_uri):
            affected, merges = write_merge_actions(output, storage, num_buckets, action_fp)
            merged = parquet_bytes(merged_rows(merges))
            storage.write_bytes(merged_uri, merged)
            storage.write_bytes(marker_uri, json.dumps({"fingerprint": action_fp, "shards": sorted(affected),
                                                        "merged": merges.num_rows}).encode())
            summary["num_groups_merged"] = merges.num_rows
            del merges
        else:
            affected = set(marker["shards"])
            summary["num_groups_merged"] = marker["merged"]
            merged = storage.read_bytes(merged_uri)
    else:
        if mode in ("drop", "keep-first") and num_sha:
            todo = []
            for b in range(num_buckets):
                if not counts[b].get("sha256"):
                    continue
                marker = _marker(storage, _action_marker_uri(output, mode, b), action_fp)
                if marker is not None:
                    affected.update(marker["shards"])
                else:
                    todo.append(ActionTask(b, mode, action_fp))
            for _, shards in _run(executor, partial(bucket_actions, output=output, storage=storage), todo,
                                  progress, "dedup actions", "bucket"):
                affected.update(shards)
    tasks, final = [], []
    rewritten: dict[str, ShardRecord] = {}
    for record in built:
        if record.name not in affected:
            continue
        fp = _fingerprint({"original": [record.name, record.sha256, record.fingerprint], "mode": mode,
                           "actions": action_fp})
        done = _finished_rewrite(output, record.name, fp, storage)
        if done is not None:
            rewritten[record.name] = done
        else:
            tasks.append(RewriteTask(record.name, fp, record.to_json(), mode, action_fp))
    _remove_other_modes(output, storage, mode)
    stale = _stale_quarantine(output, storage, affected)
    if tasks or stale:
        before_rewrite()
    for uri in stale:
        storage.remove(uri)
    for done in _run(executor, partial(rewrite_shard, output=output, storage=storage), tasks, progress,
                     "dedup rewrite", "shard"):
        rewritten[done.original] = done.record
    if merged is not None:
        storage.write_bytes(join(output, MERGED_FILE), merged)
    else:
        storage.remove(join(output, MERGED_FILE))  # a former merge run's: not true any more
    for record in records:
        final.append(rewritten.get(record.name, record))
    summary["num_shards_rewritten"] = len(affected)
    return DedupResult(final, summary)


def _run(executor: Callable[[], Executor], fn, tasks: list, progress: bool, desc: str, unit: str) -> list:
    if not tasks:
        return []
    out = []
    with tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress) as bar:
        for result in executor().map_unordered(fn, tasks, name="dedup_" + desc.split()[-1]):
            out.append(result)
            bar.update(1)
    return out


def _finished_rewrite(output: str, original: str, fingerprint: str, storage: Storage) -> ShardRecord | None:
    try:
        record = ShardRecord.from_json(storage.read_bytes(part_uri(output, rewritten_name(original))))
    except Exception:
        return None
    return record if record.fingerprint == fingerprint else None


def merged_rows(merges: pa.Table) -> pa.Table:
    """merged.parquet (format.MERGED_SCHEMA) from the merge actions, in place order."""
    into = [rewritten_name(name) for name in merges.column("into_shard").to_pylist()]
    return pa.table({"group_id": merges.column("group_id"), "key": merges.column("key"),
                     "shard": merges.column("shard"), "merged_into": merges.column("into_group"),
                     "into_key": merges.column("into_key"), "into_shard": pa.array(into, pa.string())},
                    schema=MERGED_SCHEMA)


def _remove_other_modes(output: str, storage: Storage, mode: str) -> None:
    """Delete the actions an earlier run in another mode wrote (intermediate files only)."""
    root = join(output, DEDUP_DIR, "actions")
    if not storage.is_folder(root):
        return
    for entry in storage.iter_files(root):
        if entry.relpath.split("/", 1)[0] != mode:
            storage.remove(entry.uri)


def _stale_quarantine(output: str, storage: Storage, affected: set[str]) -> list[str]:
    """Quarantine parts of rewritten shards an earlier run (another mode) left, for shards this
    run does not rewrite: readers concatenate every part, so they must go. One listing of
    quarantine/ (O(shards))."""
    folder = join(output, QUARANTINE_DIR)
    if not storage.is_folder(folder):
        return []
    current = {quarantine_part_name(rewritten_name(name)) for name in affected}
    return [e.uri for e in storage.iter_files(folder)
            if e.relpath.endswith(REWRITTEN_SUFFIX + ".parquet") and "/" not in e.relpath
            and e.relpath not in current]
