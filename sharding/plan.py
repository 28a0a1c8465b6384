"""The deterministic shard plan: sorted input records -> groups -> (seeded shuffle) -> shards.

Phase one of a build. The plan depends only on the sorted inputs and the packing limits, so
every executor (one process, N processes, Ray) builds the same shards, and a rerun finds the
same shard names for the same work. Groups are never split across shards.

Keys: ``{slug}-{hash}`` where `slug` is the group id with every character outside
``[A-Za-z0-9_-]`` replaced by ``_`` and cut to 40 characters (readable in listings), and `hash`
is the first 16 hex digits of sha1(group id) (unique: two different group ids that slug alike
still differ). Keys therefore have no dots or slashes, are stable across runs and machines, and
keep tar member names within ustar's 100 bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import groupby

from sharding.format import shard_name
from sharding.inputs import InputRecord

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
SLUG_CHARS = 40
HASH_CHARS = 16


def group_key(group_id: str) -> str:
    """The sample key of a group (see module docstring)."""
    slug = _UNSAFE.sub("_", group_id).strip("_")[:SLUG_CHARS] or "g"
    digest = hashlib.sha1(group_id.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_CHARS]
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
class ShardTask:
    """One shard of the plan: its number, file name, and the groups it will hold."""

    number: int
    name: str
    groups: tuple[Group, ...] = field(repr=False)

    @property
    def num_inputs(self) -> int:
        return sum(len(g.inputs) for g in self.groups)

    def fingerprint(self, build_config: dict) -> str:
        """sha256 of everything that decides this shard's bytes: a finished shard is reused on
        rerun only if its recorded fingerprint matches (so changed inputs or options rebuild it)."""
        body = {
            "name": self.name,
            "config": build_config,
            "groups": [
                [g.group_id, g.key, g.label, [[r.uri, r.size] for r in g.inputs]] for g in self.groups
            ],
        }
        text = json.dumps(body, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def make_groups(records: list[InputRecord]) -> list[Group]:
    """Gather sorted records into groups (records of one group_id, ordered by uri).

    The label of a group is the first non-empty label of its records.
    """
    records = sorted(records)
    groups = []
    seen_keys: dict[str, str] = {}
    for group_id, members in groupby(records, key=lambda r: r.group_id):
        members = tuple(members)
        key = group_key(group_id)
        if seen_keys.setdefault(key, group_id) != group_id:  # a sha1 prefix collision
            raise RuntimeError(f"groups {seen_keys[key]!r} and {group_id!r} share key {key}")
        label = next((r.label for r in members if r.label is not None), None)
        groups.append(Group(group_id, key, label, members))
    return groups


def shuffled(groups: list[Group], seed: int) -> list[Group]:
    """Groups in a seeded pseudo-random order that depends only on each group's id.

    Sorted paths cluster similar images (a folder per class, per product line), and a reader can
    only shuffle within a window of a shard or two: shuffling at creation is what makes every
    shard, and so every batch, a fair mix. Ordering by a keyed hash keeps the plan deterministic
    and independent of how the inputs were listed.
    """
    def rank(group: Group) -> bytes:
        return hashlib.sha256(f"{seed}\0{group.group_id}".encode("utf-8", "surrogateescape")).digest()

    return sorted(groups, key=rank)


def plan_shards(
    records: list[InputRecord],
    name: str = "data",
    max_bytes: int = 256 * 1024 * 1024,
    max_samples: int = 10_000,
    shuffle_seed: int | None = 0,
) -> list[ShardTask]:
    """Pack groups into shards of at most `max_bytes` input bytes and `max_samples` groups (a
    single group bigger than `max_bytes` gets a shard of its own), in the seeded order of
    `shuffled` (or sorted by group id when `shuffle_seed` is None)."""
    if max_bytes <= 0 or max_samples <= 0:
        raise ValueError("max_bytes and max_samples must be positive")
    groups = make_groups(records)
    if shuffle_seed is not None:
        groups = shuffled(groups, shuffle_seed)
    tasks: list[ShardTask] = []
    current: list[Group] = []
    current_bytes = 0
    for group in groups:
        size = group.input_bytes
        if current and (current_bytes + size > max_bytes or len(current) >= max_samples):
            tasks.append(ShardTask(len(tasks), shard_name(name, len(tasks)), tuple(current)))
            current, current_bytes = [], 0
        current.append(group)
        current_bytes += size
    if current:
        tasks.append(ShardTask(len(tasks), shard_name(name, len(tasks)), tuple(current)))
    return tasks
