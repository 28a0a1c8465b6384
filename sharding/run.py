"""Orchestrate a sharding run: inputs -> plan -> build shards (any executor) -> index and manifest.

`shard_dataset` is the library entry point behind ``viewstream shard``. It is resumable: shards
whose part record matches the plan are skipped, so rerunning an interrupted command finishes it,
and the result is byte-identical to a run that never stopped. manifest.json is rewritten
(atomically) as shards finish and lists only finished ones; ``"complete": true`` and the
index/quarantine tables appear only when every shard is done.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from viewstream.errors import UsageError

from sharding.build import PARTS_DIR, BuildOptions, ShardRecord, build_shard, part_uri, text
from sharding.executors import Executor, make_executor
from sharding.format import (
    MANIFEST_FILE,
    QUARANTINE_SCHEMA,
    SHARDS_DIR,
    V1_INDEX_FILE as INDEX_FILE,
    V1_INDEX_SCHEMA as INDEX_SCHEMA,
    V1_QUARANTINE_FILE as QUARANTINE_FILE,
)

# This writer still writes format version 1 (helper `shard` moves it to version 2);
# `sharding.migrate` rewrites its output as version 2.
FORMAT_VERSION = 1
from sharding.inputs import discover_inputs
from sharding.plan import ShardTask, plan_shards
from sharding.storage import Storage, is_s3, join, split_s3
from sharding.validate import DEFAULT_MAX_PIXELS

MANIFEST_INTERVAL_S = 2.0


class ShardConfig(BaseModel):
    """Everything that decides the output bytes (stored in manifest.json as ``config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("data", pattern=r"^[A-Za-z0-9_-]+$", description="shard file name prefix")
    group_by: Literal["file", "dir"] = "file"
    label_from: Literal["none", "parent"] = "none"
    shard_bytes: int = Field(256 * 1024 * 1024, gt=0, description="target input bytes per shard")
    shard_samples: int = Field(10_000, gt=0, description="max samples (groups) per shard")
    max_side: int | None = Field(None, gt=0, description="resize (and re-encode) larger images")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of re-encoded images")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decompression-bomb limit")
    shuffle_seed: int | None = Field(0, description="seeded group order across shards (None: sorted by group id)")

    def build_options(self) -> BuildOptions:
        return BuildOptions(max_pixels=self.max_pixels, max_side=self.max_side, quality=self.quality)


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
                f"time         {self.seconds:.2f} s, {self.images_per_s:.1f} images/s",
            ]
        )


def shard_dataset(
    source: str,
    output: str,
    config: ShardConfig | None = None,
    *,
    workers: int = 1,
    ray: bool = False,
    ray_address: str | None = None,
    endpoint_url: str | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    **config_fields,
) -> ShardSummary:
    """Shard the images at `source` (folder, manifest, s3:// prefix) into a dataset at `output`.

    `config` (or keyword fields of ShardConfig, e.g. ``group_by="dir", shard_samples=64``)
    decides the bytes; `workers`/`ray` only decide where shards are built. Raises UsageError for
    bad input or output; bad images are quarantined, never raised.
    """
    config = make_config(config, **config_fields)
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    storage = Storage(endpoint_url)
    source = source if is_s3(source) else os.path.abspath(source)
    output = output.rstrip("/") if is_s3(output) else os.path.abspath(output)
    check_output(output, storage)
    storage.remove_unfinished_writes(output, ("", SHARDS_DIR, PARTS_DIR))  # a killed run's debris
    records = discover_inputs(source, storage, config.group_by, config.label_from)
    tasks = plan_shards(records, config.name, config.shard_bytes, config.shard_samples, config.shuffle_seed)
    options = config.build_options()
    done = finished_records(tasks, output, options, storage)
    todo = [t for t in tasks if t.name not in done]
    manifest = ManifestWriter(output, storage, config, source, len(records), len(tasks))
    built = built_inputs = 0
    if todo:
        # Before any shard is (re)written, drop an older manifest's claims about it.
        manifest.update(done.values())
        owned = executor is None
        executor = executor or make_executor(workers, ray, ray_address)
        bar = tqdm(total=len(records), initial=sum(t.num_inputs for t in tasks if t.name in done),
                   unit="img", desc="sharding", disable=not progress)
        try:
            build = partial(build_shard, output=output, options=options, storage=storage)
            for record in executor.map_unordered(build, todo):
                done[record.name] = record
                built += 1
                built_inputs += record.num_inputs
                bar.update(record.num_inputs)
                manifest.update(done.values())
        finally:
            bar.close()
            if owned:
                executor.close()
    ordered = [done[t.name] for t in tasks]
    write_tables(output, ordered, storage)
    manifest.update(ordered, complete=True)
    seconds = time.perf_counter() - started
    return summarize(output, ordered, len(records), built, built_inputs, seconds)


def make_config(config: ShardConfig | None = None, **fields) -> ShardConfig:
    """A ShardConfig from a base config and overrides; bad values raise a one-line UsageError."""
    try:
        return ShardConfig(**{**(config.model_dump() if config else {}), **fields})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise UsageError(f"{where}: {first['msg']} (got {first.get('input')!r})") from None


def check_output(output: str, storage: Storage) -> None:
    """Fail early, with the reason, if `output` cannot be written."""
    if is_s3(output):
        bucket, _ = split_s3(output)
        try:
            storage.s3.head_bucket(Bucket=bucket)
        except Exception as err:
            raise UsageError(f"output {output!r} is not writable: bucket {bucket!r}: {err}") from None
        return
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"output {output!r} exists and is not a folder")
    try:
        os.makedirs(output, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as err:
        raise UsageError(f"output {output!r} is not writable: {err.strerror or err}") from None


def finished_records(
    tasks: list[ShardTask], output: str, options: BuildOptions, storage: Storage
) -> dict[str, ShardRecord]:
    """Part records of shards already built with exactly this plan and these options."""
    listed = {e.relpath for e in _safe_list(storage, join(output, PARTS_DIR))}
    opts = asdict(options)
    done = {}
    for task in tasks:
        uri = part_uri(output, task.name)
        if uri.rsplit("/", 1)[-1] not in listed:
            continue
        try:
            record = ShardRecord.from_json(storage.read_bytes(uri))
        except Exception:  # unreadable or foreign: rebuild the shard
            continue
        if record.fingerprint == task.fingerprint(opts):
            done[task.name] = record
    return done


def _safe_list(storage: Storage, root: str):
    try:
        if not is_s3(root) and not os.path.isdir(root):
            return []
        return storage.list_files(root)
    except Exception:
        return []


class ManifestWriter:
    """Rewrites manifest.json atomically, at most every MANIFEST_INTERVAL_S while building."""

    def __init__(self, output: str, storage: Storage, config: ShardConfig, source: str,
                 num_inputs: int, num_planned: int):
        self.uri = join(output, MANIFEST_FILE)
        self.storage = storage
        self.base = {
            "format_version": FORMAT_VERSION,
            "name": config.name,
            "num_inputs": num_inputs,
            "num_planned_shards": num_planned,
            "config": {"input": text(source), **config.model_dump()},
        }
        self._last = 0.0

    def update(self, records, complete: bool = False) -> None:
        now = time.monotonic()
        if not complete and now - self._last < MANIFEST_INTERVAL_S:
            return
        self._last = now
        records = sorted(records, key=lambda r: r.name)
        reasons = Counter(row["reason"] for r in records for row in r.quarantine_rows)
        manifest = {
            **self.base,
            "complete": complete,
            "num_samples": sum(r.num_samples for r in records),
            "num_views": sum(r.num_views for r in records),
            "num_quarantined": sum(reasons.values()),
            "quarantined_by_reason": dict(sorted(reasons.items())),
            "total_bytes": sum(r.bytes for r in records),
            "shards": [r.manifest_entry() for r in records if r.num_samples > 0],
        }
        data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        self.storage.write_bytes(self.uri, data.encode("utf-8"))


def write_tables(output: str, records: list[ShardRecord], storage: Storage) -> None:
    """index.parquet and quarantine.parquet, rows in plan order."""
    index = pa.Table.from_pylist([row for r in records for row in r.index_rows], schema=INDEX_SCHEMA)
    quarantine = pa.Table.from_pylist([row for r in records for row in r.quarantine_rows], schema=QUARANTINE_SCHEMA)
    for name, table in ((INDEX_FILE, index), (QUARANTINE_FILE, quarantine)):
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(join(output, name), buffer.getvalue())


def summarize(output: str, records: list[ShardRecord], num_inputs: int, built: int,
              built_inputs: int, seconds: float) -> ShardSummary:
    reasons = Counter(row["reason"] for r in records for row in r.quarantine_rows)
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
