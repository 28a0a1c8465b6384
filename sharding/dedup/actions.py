"""The actions: what the dedup pass decided for each affected sample, as the rewrites read them.

Deciders (`decide` for drop / keep-first, `merge`) write them, `rewrite` reads those of one
shard. They are stored by folder of ACTION_SHARDS shard numbers
(``_dedup/actions/{mode}/{folder}/``), so a rewrite lists one folder, never every action. Each
file's name ends with the fingerprint of the duplicates it was decided from (`action_suffix`),
so a rewrite reads only current ones: drop / keep-first write ``{bucket}-{fp}.parquet``
(ACTION_SCHEMA), merge ``drops-{fp}.parquet`` (ACTION_SCHEMA) and ``merges-{fp}.parquet``
(MERGE_ACTION_SCHEMA: a merge row goes to the folders of both its shards).
Invariants: every removed view has one quarantine reason (``duplicate_across_groups`` or
``duplicate_merged``) in its drop row; a merged-away group's other views move into the group
it was merged into. See ARCHITECTURE.md section 1, "Duplicates across groups".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from groundfloor.parquet_files import read_parquet
from groundfloor.storage import Storage
from sharding.dedup.markers import actions_dir

Mode = Literal["report", "drop", "keep-first", "merge"]
MODES: tuple[str, ...] = ("report", "drop", "keep-first", "merge")


@dataclass
class SampleAction:
    """What happens to one sample: views to quarantine (view -> (reason, detail)), whether it is
    merged into another group (then it leaves its shard and its other views move there), and
    the samples merged into it: (shard, key, group_id, views not to take: stored already)."""

    group_id: str
    drop: dict[int, tuple[str, str]] = field(default_factory=dict)
    merged_into: tuple[str, str, str] | None = None
    append: list[tuple[str, str, str, tuple[int, ...]]] = field(default_factory=list)


ACTION_SHARDS = 16   # actions are stored in one folder per 16 shard numbers
ACTION_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("group_id", pa.string()),
                           ("view", pa.int32()), ("reason", pa.string()), ("detail", pa.string())])


def shard_number(name: str) -> int:
    """The plan number of a shard name (``data-000003.tar`` -> 3)."""
    return int(name[: -len(".tar")].rsplit("-", 1)[1])


def actions_folder(output: str, mode: str, shard: str) -> str:
    """Where the actions touching (original) shard `shard` are written."""
    return actions_dir(output, mode, f"{shard_number(shard) // ACTION_SHARDS:06d}")


def action_suffix(fingerprint: str) -> str:
    """How the name of an action file decided from inputs of `fingerprint` ends."""
    return f"-{fingerprint[:16]}.parquet"


MERGE_ACTION_SCHEMA = pa.schema([
    ("shard", pa.string()), ("key", pa.string()), ("group_id", pa.string()), ("row", pa.int32()),
    ("into_shard", pa.string()), ("into_key", pa.string()), ("into_group", pa.string()),
    ("skip", pa.list_(pa.int32())),   # its views not to move: copies the merged group holds already
])


def load_actions(output: str, storage: Storage, mode: str, shard: str, fingerprint: str) -> dict[str, SampleAction]:
    """The actions touching one (original) shard: a listing of its folder and those parts, rows
    filtered to the shard (drops: ACTION_SCHEMA; ``merges-*``: MERGE_ACTION_SCHEMA, a group
    merged away from this shard or into one of its groups)."""
    folder = actions_folder(output, mode, shard)
    suffix = action_suffix(fingerprint)
    out: dict[str, SampleAction] = {}
    entries = sorted(storage.iter_files(folder), key=lambda e: e.relpath) if storage.is_folder(folder) else []
    appends = []
    for entry in entries:
        if not entry.relpath.endswith(suffix) or "/" in entry.relpath:
            continue
        merges = entry.relpath.startswith("merges-")
        table = read_parquet(storage.read_bytes(entry.uri),
                             schema=MERGE_ACTION_SCHEMA if merges else ACTION_SCHEMA)
        if not merges:
            for row in table.filter(pc.equal(table.column("shard"), shard)).to_pylist():
                action = out.setdefault(row["key"], SampleAction(group_id=row["group_id"]))
                action.drop[row["view"]] = (row["reason"], row["detail"])
            continue
        for row in table.filter(pc.equal(table.column("shard"), shard)).to_pylist():
            action = out.setdefault(row["key"], SampleAction(group_id=row["group_id"]))
            action.merged_into = (row["into_group"], row["into_key"], row["into_shard"])
        appends += table.filter(pc.equal(table.column("into_shard"), shard)).to_pylist()
    for row in sorted(appends, key=lambda r: (r["shard"], r["row"])):  # members in place order
        action = out.setdefault(row["into_key"], SampleAction(group_id=row["into_group"]))
        action.append.append((row["shard"], row["key"], row["group_id"], tuple(row["skip"])))
    return out

