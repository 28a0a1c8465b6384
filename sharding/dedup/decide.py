"""drop / keep-first: decided per sha256, so a task per bucket decides its own duplicates.

  drop        the shared photo leaves every group holding it;
  keep-first  it stays in the first group holding it, in place order (shard name, tar
              position), and leaves the others.
Each removal is a ``duplicate_across_groups`` quarantine record naming the sha256 and the other
groups (or the group that kept it). Invariant: a decision depends on one sha256's occurrences
only, never on another bucket, so the tasks are independent and their memory is one bucket's
duplicates. See ARCHITECTURE.md section 1, "Duplicates across groups".
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

from groundfloor.storage import Storage, join
from sharding.build import parquet_bytes
from sharding.dedup.actions import ACTION_SCHEMA, Mode, SampleAction, action_suffix, actions_folder
from sharding.dedup.markers import action_marker_uri, write_marker
from sharding.dedup.report import Occurrence, bucket_duplicates
from sharding.validate import DUPLICATE_ACROSS_GROUPS

DETAIL_GROUPS = 5              # other groups named in a quarantine detail


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
    """Up to DETAIL_GROUPS group ids, and how many more."""
    more = len(groups) - DETAIL_GROUPS
    return ", ".join(groups[:DETAIL_GROUPS]) + (f" and {more} more" if more > 0 else "")


def plan_actions(duplicates: Iterable[list[Occurrence]], mode: Mode) -> Actions:
    """drop / keep-first: what each affected sample's rewrite does, each sha256 decided on its
    own. Occurrences are ordered by place (shard name, tar position), i.e. plan order."""
    if mode not in ("drop", "keep-first"):
        raise ValueError(f"plan_actions: mode {mode!r} is decided per sha256 only for drop / keep-first")
    actions = Actions()
    for occs in duplicates:
        occs = sorted(occs, key=lambda o: (o.group, o.view))
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


@dataclass(frozen=True)
class ActionTask:
    """Decide one bucket's duplicates in `mode` (inputs: `fingerprint`)."""

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
        storage.write_bytes(join(folder, f"{task.bucket:05d}" + action_suffix(task.fingerprint)),
                            parquet_bytes(pa.Table.from_pylist(rows, schema=ACTION_SCHEMA)))
    affected = sorted(actions.by_shard)
    write_marker(storage, action_marker_uri(output, task.mode, task.bucket), task.fingerprint, shards=affected)
    return task.bucket, affected
