"""merge: groups sharing bytes become one group (connected components of the duplicate pairs).

Groups are nodes numbered in place order (shard, tar position); each duplicated sha256 joins its
occurrences' groups. A component becomes its first group: that group keeps its key and id and
its shard receives the other groups' photos (a component over several shards moves there, so
that shard may exceed --shard-bytes). Invariants: within a component each sha256 is stored once,
at its first occurrence, the other copies get a ``duplicate_merged`` quarantine record; every
merged-away group is a row of merged.parquet (``merged_into``); afterwards no two groups hold
the same bytes, so no batch pairs them as negatives. See ARCHITECTURE.md section 1, "Duplicates
across groups".

Limitations: unlike drop / keep-first, the components need every duplicate at once, so the
driver holds all duplicate occurrences (numpy / Arrow columns): O(duplicates), never O(corpus).
A corpus whose shared photos are themselves ~1e8 would need the components computed
distributedly (label propagation over hash-partitioned edges); that is not built.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from groundfloor.storage import Storage, join
from sharding.build import parquet_bytes
from sharding.dedup.actions import (
    ACTION_SCHEMA,
    MERGE_ACTION_SCHEMA,
    action_suffix,
    actions_folder,
    shard_number,
)
from sharding.dedup.markers import action_marker_uri, actions_dir, dups_uri, read_marker, write_marker
from sharding.dedup.scan import read_view_rows
from sharding.format import MERGED_SCHEMA, rewritten_name
from sharding.validate import DUPLICATE_MERGED


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
    numbers = np.array([shard_number(x) for x in shards.dictionary.to_pylist()], np.int64)
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
    parts = [read_view_rows(storage, dups_uri(output, b)) for b in range(buckets)]
    occ = pa.concat_tables(parts).combine_chunks()
    del parts
    drops, merges = merge_plan(occ)
    del occ
    suffix = action_suffix(fingerprint)
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


def merged_rows(merges: pa.Table) -> pa.Table:
    """merged.parquet (format.MERGED_SCHEMA) from the merge actions, in place order."""
    into = [rewritten_name(name) for name in merges.column("into_shard").to_pylist()]
    return pa.table({"group_id": merges.column("group_id"), "key": merges.column("key"),
                     "shard": merges.column("shard"), "merged_into": merges.column("into_group"),
                     "into_key": merges.column("into_key"), "into_shard": pa.array(into, pa.string())},
                    schema=MERGED_SCHEMA)


@dataclass
class MergeDecision:
    """What merge decided: the (original) shards to rewrite, how many groups are merged away,
    and merged.parquet's bytes (written after the rewrites)."""

    affected: set[str]
    num_merged: int
    merged: bytes


def decide_merge(output: str, storage: Storage, buckets: int, fingerprint: str) -> MergeDecision:
    """The merge actions of the duplicates of fingerprint `fingerprint`: written once, then read
    back from their marker and merged.parquet copy on a rerun."""
    marker_uri = action_marker_uri(output, "merge", 0)
    merged_uri = actions_dir(output, "merge", "merged" + action_suffix(fingerprint))
    marker = read_marker(storage, marker_uri, fingerprint)
    if marker is not None and storage.exists(merged_uri):
        return MergeDecision(set(marker["shards"]), marker["merged"], storage.read_bytes(merged_uri))
    affected, merges = write_merge_actions(output, storage, buckets, fingerprint)
    merged = parquet_bytes(merged_rows(merges))
    storage.write_bytes(merged_uri, merged)
    write_marker(storage, marker_uri, fingerprint, shards=sorted(affected), merged=merges.num_rows)
    return MergeDecision(affected, merges.num_rows, merged)
