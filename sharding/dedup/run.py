"""`dedup_across_groups`: the whole pass over a finished build, as tasks on the sharder's executor.

scan (split, per-bucket scan) -> report (duplicates.parquet) -> decide (drop / keep-first per
bucket, or merge in the driver) -> rewrite the affected shards. The caller lists the returned
records in shards.parquet: that is the commit point, so a complete dataset is always
deduplicated as its config says. Invariants: the driver holds O(shards) names and records (and,
in merge mode only, O(duplicates)); every step is skipped on a rerun when its marker matches its
inputs (`sharding.dedup.markers`); the build's shards are never modified. Hand-written rather
than Ray Data / DuckDB because it must run on the sharder's three executors, through `Storage`
(local and S3 alike), with shard-granular tasks. See ARCHITECTURE.md section 1, "Duplicates
across groups".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from tqdm import tqdm

from groundfloor.storage import Storage, join
from sharding.build import ShardRecord
from sharding.dedup.actions import MODES, Mode
from sharding.dedup.decide import ActionTask, bucket_actions
from sharding.dedup.markers import (
    action_marker_uri,
    finished_rewrite,
    fingerprint,
    marker_uri,
    read_marker,
    remove_other_modes,
    stale_quarantine,
)
from sharding.dedup.merge import decide_merge
from sharding.dedup.report import write_report
from sharding.dedup.rewrite import RewriteTask, rewrite_shard
from sharding.dedup.scan import (
    ROWS_PER_BUCKET,
    SPLIT_SHARDS,
    BucketTask,
    SplitTask,
    bucket_bits,
    scan_bucket,
    split_chunk,
)
from sharding.executors import Executor
from sharding.format import MERGED_FILE


@dataclass
class DedupResult:
    """What the pass did: the shard records shards.parquet lists now, and the summary the
    manifest keeps (``duplicates_across_groups``)."""

    records: list[ShardRecord]
    summary: dict = field(default_factory=dict)


@dataclass
class _Scanned:
    """The scan's outcome: bucket count, per bucket its marker (None: not scanned), and its
    fingerprint (the decisions' input)."""

    buckets: int
    markers: dict[int, dict]
    fingerprint: str


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
    run = partial(_run, executor, progress)
    scanned = _scan(output, built, storage, run, rows_per_bucket, split_shards)
    num_sha, num_occ = write_report(output, storage, scanned.buckets)
    summary = {"mode": mode, "num_sha256": num_sha, "num_occurrences": num_occ, "buckets": scanned.buckets,
               "num_shards_rewritten": 0, "num_groups_merged": 0}
    action_fp = fingerprint({"buckets": scanned.fingerprint, "mode": mode})
    merged: bytes | None = None   # merged.parquet, written after the rewrites
    affected: set[str] = set()
    if mode == "merge" and num_sha:
        decision = decide_merge(output, storage, scanned.buckets, action_fp)
        affected, merged = decision.affected, decision.merged
        summary["num_groups_merged"] = decision.num_merged
    elif mode in ("drop", "keep-first") and num_sha:
        affected = _decide_per_bucket(output, storage, mode, scanned, action_fp, run)
    rewritten = _rewrite(output, built, affected, mode, action_fp, storage, run, before_rewrite)
    if merged is not None:
        storage.write_bytes(join(output, MERGED_FILE), merged)
    else:
        storage.remove(join(output, MERGED_FILE))  # a former merge run's: not true any more
    summary["num_shards_rewritten"] = len(affected)
    return DedupResult([rewritten.get(record.name, record) for record in records], summary)


def _scan(output: str, built: list[ShardRecord], storage: Storage, run: Callable,
          rows_per_bucket: int, split_shards: int) -> _Scanned:
    """Split and scan the buckets whose marker does not match their inputs (every chunk is
    split again, into those buckets only: a split is not resumed on its own)."""
    bits = bucket_bits(sum(r.num_views for r in built), rows_per_bucket)
    chunks = [tuple(r.name for r in built[i:i + split_shards]) for i in range(0, len(built), split_shards)]
    by_name = {r.name: r for r in built}
    chunk_fps = [fingerprint({"bits": bits, "shards": [[n, by_name[n].sha256, by_name[n].fingerprint] for n in c]})
                 for c in chunks]
    bucket_fp = fingerprint({"bits": bits, "chunks": chunk_fps})
    markers = {b: read_marker(storage, marker_uri(output, "dups", b), bucket_fp) for b in range(1 << bits)}
    needed = tuple(b for b, marker in markers.items() if marker is None)
    if needed:
        splits = [SplitTask(i, c, fp, bits, needed) for i, (c, fp) in enumerate(zip(chunks, chunk_fps))]
        run(partial(split_chunk, output=output, storage=storage), splits, "dup split", "chunk")
        scans = [BucketTask(b, tuple(chunk_fps), bucket_fp) for b in needed]
        for b, shas, _ in run(partial(scan_bucket, output=output, storage=storage), scans, "dup scan", "bucket"):
            markers[b] = {"sha256": shas}
    return _Scanned(1 << bits, markers, bucket_fp)


def _decide_per_bucket(output: str, storage: Storage, mode: str, scanned: _Scanned, action_fp: str,
                       run: Callable) -> set[str]:
    """drop / keep-first: a task per bucket holding duplicates whose actions are not written
    yet; returns the (original) shards the actions touch."""
    affected: set[str] = set()
    todo = []
    for b in range(scanned.buckets):
        if not scanned.markers[b].get("sha256"):
            continue
        marker = read_marker(storage, action_marker_uri(output, mode, b), action_fp)
        if marker is not None:
            affected.update(marker["shards"])
        else:
            todo.append(ActionTask(b, mode, action_fp))
    for _, shards in run(partial(bucket_actions, output=output, storage=storage), todo, "dedup actions", "bucket"):
        affected.update(shards)
    return affected


def _rewrite(output: str, built: list[ShardRecord], affected: set[str], mode: str, action_fp: str,
             storage: Storage, run: Callable, before_rewrite: Callable[[], None]) -> dict[str, ShardRecord]:
    """Rewrite the affected shards not rewritten yet from these actions, after removing what
    another mode left; returns per original shard name its rewritten record."""
    tasks = []
    rewritten: dict[str, ShardRecord] = {}
    for record in built:
        if record.name not in affected:
            continue
        fp = fingerprint({"original": [record.name, record.sha256, record.fingerprint], "mode": mode,
                          "actions": action_fp})
        done = finished_rewrite(output, record.name, fp, storage)
        if done is not None:
            rewritten[record.name] = done
        else:
            tasks.append(RewriteTask(record.name, fp, record.to_json(), mode, action_fp))
    remove_other_modes(output, storage, mode)
    stale = stale_quarantine(output, storage, affected)
    if tasks or stale:
        before_rewrite()
    for uri in stale:
        storage.remove(uri)
    for done in run(partial(rewrite_shard, output=output, storage=storage), tasks, "dedup rewrite", "shard"):
        rewritten[done.original] = done.record
    return rewritten


def _run(executor: Callable[[], Executor], progress: bool, fn, tasks: list, desc: str, unit: str) -> list:
    """`fn` over `tasks` on the executor (made on first need), with a progress bar."""
    if not tasks:
        return []
    out = []
    with tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress) as bar:
        for result in executor().map_unordered(fn, tasks, name="dedup_" + desc.split()[-1]):
            out.append(result)
            bar.update(1)
    return out
