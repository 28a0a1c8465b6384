"""The dedup pass's working files under ``_dedup/``, and how a rerun knows what is done.

Invariants:
  * a marker is written after the output it stands for and carries the fingerprint of that
    output's inputs; a marker that is missing, unreadable or of other inputs counts as absent,
    so a rerun redoes exactly the unfinished or stale work and nothing else;
  * a rewritten shard's part record is its marker (`finished_rewrite`);
  * the build's shards are never modified (a rewrite reads them), so every rerun, in any mode,
    starts from them; the working files of another mode are removed before the rewrites, so a
    mode switched on the same output gives what a fresh build in that mode gives.
Readers ignore ``_dedup/``. See ARCHITECTURE.md section 1, "Duplicates across groups".
"""
from __future__ import annotations

import hashlib
import json

from groundfloor.storage import Storage, join
from sharding.build import ShardRecord, part_uri
from sharding.format import DEDUP_DIR, QUARANTINE_DIR, REWRITTEN_SUFFIX, quarantine_part_name, rewritten_name


def fingerprint(obj) -> str:
    """sha256 of `obj` as canonical JSON: the identity of a task's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def split_folder(output: str, bucket: int) -> str:
    """The split files of `bucket`, one per chunk (deleted by the bucket's scan)."""
    return join(output, DEDUP_DIR, "split", f"{bucket:05d}")


def split_name(chunk: int, chunk_fingerprint: str) -> str:
    """The name, in its bucket's split folder, of one chunk's views of that bucket."""
    return f"{chunk:06d}-{chunk_fingerprint[:16]}.parquet"


def dups_uri(output: str, bucket: int) -> str:
    """One bucket's duplicate occurrences, sorted (scan.SPLIT_SCHEMA)."""
    return join(output, DEDUP_DIR, "dups", f"{bucket:05d}.parquet")


def marker_uri(output: str, kind: str, number: int) -> str:
    return join(output, DEDUP_DIR, kind, f"{number:06d}.json")


def actions_dir(output: str, *parts: str) -> str:
    """``_dedup/actions/``, or a path under it (``{mode}/...``): the decided actions."""
    return join(output, DEDUP_DIR, "actions", *parts)


def action_marker_uri(output: str, mode: str, bucket: int) -> str:
    return actions_dir(output, mode, "done", f"{bucket:05d}.json")


def read_marker(storage: Storage, uri: str, expected: str) -> dict | None:
    """The marker at `uri` if it was written for inputs of fingerprint `expected`, else None."""
    try:
        data = json.loads(storage.read_bytes(uri))
    except Exception:  # missing or unreadable: redo
        return None
    return data if data.get("fingerprint") == expected else None


def write_marker(storage: Storage, uri: str, inputs: str, **fields) -> None:
    """A marker for inputs of fingerprint `inputs`, with `fields` (written after its output)."""
    storage.write_bytes(uri, json.dumps({"fingerprint": inputs, **fields}).encode())


def finished_rewrite(output: str, original: str, expected: str, storage: Storage) -> ShardRecord | None:
    """The part record of `original`'s rewrite if it was made from inputs of fingerprint `expected`."""
    try:
        record = ShardRecord.from_json(storage.read_bytes(part_uri(output, rewritten_name(original))))
    except Exception:
        return None
    return record if record.fingerprint == expected else None


def remove_other_modes(output: str, storage: Storage, mode: str) -> None:
    """Delete the actions an earlier run in another mode wrote (working files only)."""
    root = actions_dir(output)
    if not storage.is_folder(root):
        return
    for entry in storage.iter_files(root):
        if entry.relpath.split("/", 1)[0] != mode:
            storage.remove(entry.uri)


def stale_quarantine(output: str, storage: Storage, affected: set[str]) -> list[str]:
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
