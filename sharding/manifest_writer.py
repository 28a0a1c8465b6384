"""manifest.json while a build runs and when it is done, and shards.parquet.

Invariants: both files are written atomically, so a reader never sees a torn one; the manifest
is a constant-size summary (totals, quarantine reasons, label vocabulary), never a list of
shards, rewritten at most every MANIFEST_INTERVAL_S while building; before any shard is
(re)written the manifest says incomplete and shards.parquet lists nothing (`invalidate`), and
shards.parquet lists shards (the commit point) only once every shard is done, so no reader
trusts a shard that may still change. The manifest's keys are format.py's contract.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa

from groundfloor.storage import Storage, join
from sharding.build import ShardRecord, parquet_bytes, text
from sharding.format import FORMAT_VERSION, MANIFEST_FILE, SHARDS_FILE, SHARDS_SCHEMA
from sharding.plan import PlanStats

MANIFEST_INTERVAL_S = 2.0


class ManifestWriter:
    """Keeps the dataset's running totals and rewrites manifest.json (a constant-size summary)
    atomically, at most every MANIFEST_INTERVAL_S while building."""

    def __init__(self, output: str, storage: Storage, config: dict, source: str, stats: PlanStats):
        """`config`: the build's ShardConfig as a dict (stored as the manifest's ``config``)."""
        self.uri = join(output, MANIFEST_FILE)
        self.output = output
        self.storage = storage
        self.stats = stats
        self.config = {"input": text(source), **config}
        self.name = config["name"]
        self.totals = Counter()
        self.reasons: Counter = Counter()
        self.labels: set[str] = set()
        self._last = 0.0
        self._invalidated = False
        self.extra: dict = {}

    def recount(self, records: list[ShardRecord]) -> None:
        """The totals of exactly `records` (the shards as finally listed, after the dedup pass);
        the label vocabulary is kept (a label whose groups were all dropped stays in it)."""
        self.totals, self.reasons = Counter(), Counter()
        for record in records:
            labels = set(self.labels)
            self.add(record)
            self.labels = labels

    def add(self, record: ShardRecord) -> None:
        """Count a finished shard (its label list is merged and dropped: records stay small)."""
        self.totals.update(num_samples=record.num_samples, num_views=record.num_views,
                           total_bytes=record.bytes, num_shards=int(record.num_samples > 0))
        self.reasons.update(record.quarantined_by_reason)
        self.labels.update(record.labels)
        record.labels = []

    def invalidate(self) -> None:
        """Once, before the first shard is (re)built: the manifest says incomplete and
        shards.parquet lists nothing, so no reader trusts a shard that is about to change."""
        if self._invalidated:
            return
        self._invalidated = True
        write_shards_table(self.output, [], self.storage)
        self.write(force=True)

    def write(self, complete: bool = False, force: bool = False) -> None:
        """Rewrite manifest.json if MANIFEST_INTERVAL_S has passed since the last write (always
        when `complete` or `force`)."""
        now = time.monotonic()
        if not (complete or force) and now - self._last < MANIFEST_INTERVAL_S:
            return
        self._last = now
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "complete": complete,
            "num_inputs": self.stats.num_inputs,
            "num_planned_shards": self.stats.num_shards,
            "num_samples": self.totals["num_samples"],
            "num_views": self.totals["num_views"],
            "num_quarantined": sum(self.reasons.values()),
            "quarantined_by_reason": dict(sorted(self.reasons.items())),
            "total_bytes": self.totals["total_bytes"],
            "num_shards": self.totals["num_shards"],
            "labels": sorted(self.labels),
            "config": self.config,
            **self.extra,
        }
        data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        self.storage.write_bytes(self.uri, data.encode("utf-8"))


def write_shards_table(output: str, records: list[ShardRecord], storage: Storage) -> None:
    """shards.parquet: one row per shard with samples, in plan order."""
    rows = [r for r in records if r.num_samples > 0]
    table = pa.table(
        {
            "name": pa.array([r.name for r in rows], pa.string()),
            "num_samples": pa.array([r.num_samples for r in rows], pa.int64()),
            "num_views": pa.array([r.num_views for r in rows], pa.int64()),
            "bytes": pa.array([r.bytes for r in rows], pa.int64()),
            "sha256": pa.array([r.sha256 for r in rows], pa.string()),
        },
        schema=SHARDS_SCHEMA,
    )
    storage.write_bytes(join(output, SHARDS_FILE), parquet_bytes(table))
