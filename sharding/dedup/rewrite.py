"""Rewrite one shard as the dedup pass decided: a task per affected shard.

Invariants:
  * the original ``{stem}.tar`` is read, never modified; its tar is streamed once in order
    (memory: one member at a time, whatever the shard's size), and photos moved in from other
    shards (merge) are ranged reads of those shards' originals through their .idx;
  * the result is published as a build publishes a shard (`sharding.build`): ``{stem}-dd.tar``
    (atomic), its .idx, index part, a quarantine part holding only the records this rewrite
    adds (the build's part stays valid: those inputs are still quarantined), and last the part
    record, whose fingerprint of (original shard, actions) lets a rerun skip a finished rewrite;
  * samples no action names are copied member for member; a changed sample's ``{key}.json``
    lists (META_LISTS) are cut or extended to match its new views, plus "merged_from" (the
    group ids merged into it).
See ARCHITECTURE.md section 1, "Duplicates across groups".
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import pyarrow as pa

from groundfloor.storage import Storage, join
from sharding.build import ShardRecord, parquet_bytes, part_uri
from sharding.dataset import Member, read_index_part, read_sample, read_shard_index, shard_uri
from sharding.dedup.actions import load_actions
from sharding.format import (
    INDEX_DIR,
    INDEX_SCHEMA,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    SHARDS_DIR,
    idx_name,
    index_part_name,
    quarantine_part_name,
    rewritten_name,
)
from sharding.tar_writer import TarWriter

META_LISTS = ("sources", "sha256", "width", "height", "reencoded", "meta")  # meta: only where kept


@dataclass(frozen=True)
class RewriteTask:
    """Rewrite shard `original` with the actions of `mode` decided from `actions_fingerprint`."""

    original: str              # the original shard's name
    fingerprint: str           # of (original shard, mode, actions): its part record's
    record: bytes = field(repr=False)   # the original's ShardRecord JSON
    mode: str = ""
    actions_fingerprint: str = ""   # the actions it reads (`load_actions`)


@dataclass
class RewriteDone:
    """A finished rewrite: the original's name and the rewritten shard's record."""

    original: str
    record: ShardRecord


@dataclass
class _View:
    ext: str
    data: bytes
    meta: dict   # this view's entry of each META_LISTS list


def _members_in_order(stream: BinaryIO, members: dict[str, list[Member]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member ext: bytes}) for every sample of a tar, read front to back once."""
    position = 0
    for key, entries in members.items():
        data = {}
        for m in entries:
            skip = m.offset - position
            while skip > 0:
                got = stream.read(min(skip, 1 << 20))
                if not got:
                    raise EOFError("the shard ends before its .idx says")
                skip -= len(got)
            body = stream.read(m.size)
            if len(body) != m.size:
                raise EOFError("the shard ends before its .idx says")
            position = m.offset + m.size
            data[m.ext] = body
        yield key, data


def _views(members: dict[str, bytes]) -> tuple[list[_View], dict]:
    meta = json.loads(members["json"])
    exts = sorted(((int(e.split(".", 1)[0]), e.split(".", 1)[1]) for e in members if e != "json"))
    lists = {name: meta.get(name) if isinstance(meta.get(name), list) else [] for name in META_LISTS}
    views = []
    for i, ext in exts:
        entry = {name: lists[name][i] if i < len(lists[name]) else None for name in META_LISTS}
        views.append(_View(ext, members[f"{i}.{ext}"], entry))
    return views, meta


def rewrite_shard(task: RewriteTask, output: str, storage: Storage) -> RewriteDone:
    """Rewrite shard `task.original` under `output` (see module docstring)."""
    original = ShardRecord.from_json(task.record)
    name = rewritten_name(task.original)
    actions = load_actions(output, storage, task.mode, task.original, task.actions_fingerprint)
    index = read_index_part(output, task.original, storage).to_pylist()
    members = read_shard_index(output, task.original, storage)
    others: dict[str, dict[str, list[Member]]] = {}
    record = ShardRecord(name, task.fingerprint, original.num_inputs)
    quarantine: list[dict] = []
    index_rows: list[dict] = []
    labels: set[str] = set()
    with contextlib.ExitStack() as stack:
        writer: TarWriter | None = None
        stream = stack.enter_context(contextlib.closing(storage.open_stream(shard_uri(output, task.original))))
        rows = {row["key"]: row for row in index}
        for key, data in _members_in_order(stream, members):
            row = dict(rows[key], shard=name)
            action = actions.get(key)
            if action is None:
                out = [(m.ext, data[m.ext]) for m in members[key]]
                record.num_reencoded += sum(bool(r) for r in json.loads(data["json"]).get("reencoded") or [])
            else:
                views, meta = _views(data)
                for i, (reason, detail) in sorted(action.drop.items()):
                    quarantine.append({"source": views[i].meta["sources"], "group_id": action.group_id,
                                       "reason": reason, "detail": detail})
                if action.merged_into is not None:
                    continue  # its other views move to the group it was merged into
                kept = [v for i, v in enumerate(views) if i not in action.drop]
                merged_from = list(meta.get("merged_from") or [])
                for shard, other_key, other_gid, skip in action.append:
                    if shard not in others:
                        others[shard] = read_shard_index(output, shard, storage)
                    other, _ = _views(read_sample(output, shard, other_key, storage, others[shard]))
                    kept.extend(v for j, v in enumerate(other) if j not in skip)
                    merged_from.append(other_gid)
                if not kept:
                    continue  # every view quarantined: the group is gone (its records say why)
                meta = {**meta, **{n: [v.meta[n] for v in kept] for n in META_LISTS}}
                if all(m is None for m in meta["meta"]):
                    del meta["meta"]
                if merged_from:
                    meta["merged_from"] = merged_from
                out = [(f"{i}.{v.ext}", v.data) for i, v in enumerate(kept)]
                out.append(("json", json.dumps(meta, sort_keys=True).encode("utf-8")))
                row.update(num_views=len(kept), view_exts=[v.ext for v in kept],
                           bytes=sum(len(v.data) for v in kept), view_sha256=[v.meta["sha256"] for v in kept])
                record.num_reencoded += sum(bool(v.meta["reencoded"]) for v in kept)
            if writer is None:
                writer = TarWriter(stack.enter_context(storage.open_atomic_write(join(output, SHARDS_DIR, name))))
            writer.write_sample(key, out)
            record.num_samples += 1
            record.num_views += row["num_views"]
            if row["label"] is not None:
                labels.add(row["label"])
            index_rows.append(row)
        if writer is not None:
            writer.close()
            record.bytes, record.sha256 = writer.size, writer.sha256
    reasons = Counter(original.quarantined_by_reason)
    reasons.update(r["reason"] for r in quarantine)
    record.quarantined_by_reason = dict(sorted(reasons.items()))
    record.labels = sorted(labels)
    if writer is not None:
        storage.write_bytes(join(output, SHARDS_DIR, idx_name(name)), writer.index_text().encode())
        table = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
        storage.write_bytes(join(output, INDEX_DIR, index_part_name(name)), parquet_bytes(table))
    quarantine_uri = join(output, QUARANTINE_DIR, quarantine_part_name(name))
    if quarantine or storage.exists(quarantine_uri):
        storage.write_bytes(quarantine_uri, parquet_bytes(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA)))
    storage.write_bytes(part_uri(output, name), record.to_json())
    return RewriteDone(task.original, record)

