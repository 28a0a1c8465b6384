"""What ``viewstream shard`` prints: a build's totals (`ShardSummary`) and a dry run's plan
(`PlanSummary`). Pure formatting of records and plan statistics; nothing here reads storage.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sharding.build import ShardRecord, text
from sharding.plan import PlanStats


@dataclass
class ShardSummary:
    """What a run produced (the dataset's totals) and how fast this invocation was."""

    output: str
    num_inputs: int
    num_samples: int
    num_views: int
    num_quarantined: int
    quarantined_by_reason: dict[str, int]
    num_shards: int
    num_shards_built: int
    num_shards_skipped: int
    num_reencoded: int
    bytes: int
    seconds: float
    images_per_s: float = field(default=0.0)
    duplicates_across_groups: dict = field(default_factory=dict)

    def format(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.quarantined_by_reason.items())) or "none"
        return "\n".join(
            [
                f"dataset      {self.output}",
                f"inputs       {self.num_inputs}",
                f"samples      {self.num_samples} ({self.num_views} views, {self.num_reencoded} re-encoded)",
                f"quarantined  {self.num_quarantined} ({reasons})",
                f"shards       {self.num_shards} ({self.num_shards_built} built now, "
                f"{self.num_shards_skipped} already done)",
                f"bytes        {self.bytes}",
                *([_duplicates_line(self.duplicates_across_groups)] if self.duplicates_across_groups else []),
                f"time         {self.seconds:.2f} s, {self.images_per_s:.1f} images/s",
            ]
        )


def _duplicates_line(d: dict) -> str:
    done = {"report": "reported only (duplicates.parquet)", "drop": "dropped from every group",
            "keep-first": "kept in the first group only", "merge": "their groups merged"}[d["mode"]]
    line = (f"duplicates   {d['num_sha256']} photos held by several groups ({d['num_occurrences']} copies): "
            f"{done}")
    if d["mode"] != "report":
        line += f"; {d['num_shards_rewritten']} shards rewritten"
    if d["mode"] == "merge":
        line += f", {d['num_groups_merged']} groups merged away"
    return line



def summarize(output: str, records: list[ShardRecord], num_inputs: int, built: int,
              built_inputs: int, seconds: float) -> ShardSummary:
    reasons: Counter = Counter()
    for r in records:
        reasons.update(r.quarantined_by_reason)
    return ShardSummary(
        output=output,
        num_inputs=num_inputs,
        num_samples=sum(r.num_samples for r in records),
        num_views=sum(r.num_views for r in records),
        num_quarantined=sum(reasons.values()),
        quarantined_by_reason=dict(sorted(reasons.items())),
        num_shards=sum(1 for r in records if r.num_samples > 0),
        num_shards_built=built,
        num_shards_skipped=len(records) - built,
        num_reencoded=sum(r.num_reencoded for r in records),
        bytes=sum(r.bytes for r in records),
        seconds=seconds,
        images_per_s=(built_inputs / seconds) if seconds > 0 else 0.0,
    )


@dataclass
class PlanSummary:
    """What ``--dry-run`` prints."""

    source: str
    kind: str
    num_files: int
    stats: PlanStats
    seconds: float

    def format(self) -> str:
        s = self.stats
        mean_bytes = s.input_bytes / s.num_shards if s.num_shards else 0
        mean_groups = s.num_groups / s.num_shards if s.num_shards else 0
        return "\n".join(
            [
                f"input        {self.source} ({self.kind}, {self.num_files} file(s))",
                f"inputs       {s.num_inputs}",
                f"groups       {s.num_groups} ({s.groups_split_across_files} split across manifest files)",
                f"shards       {s.num_shards}",
                f"per shard    {s.min_shard_groups}-{s.max_shard_groups} groups (mean {mean_groups:.1f}), "
                + (f"{s.min_shard_bytes}-{s.max_shard_bytes} input bytes (mean {mean_bytes:.0f})" if s.input_bytes
                   else "input bytes unknown (the manifest lists no sizes: packed by --shard-samples)"),
                f"largest      {s.largest_group_inputs} inputs, {s.largest_group_bytes} bytes: "
                f"{text(s.largest_group_id or '')}",
                f"time         {self.seconds:.2f} s, {s.num_inputs / max(self.seconds, 1e-9):.0f} inputs/s",
            ]
        )
