"""Orchestrate a sharding run: inputs -> streamed plan -> build shards (any executor) -> summary.

`shard_dataset` is the library entry point behind ``viewstream shard``; `plan_dataset` behind
``viewstream shard --dry-run``. Nothing in the driver grows with the number of inputs: input
batches stream into the plan (`sharding.plan`), each planned shard's input list travels to
the executor inside its task (a few tasks in flight at a time), each build writes its own index and
quarantine parts, and the driver keeps one small record per shard (O(shards)). It is resumable:
shards whose part record matches the plan are skipped, so rerunning an interrupted command
finishes it, and the result is byte-identical to a run that never stopped. manifest.json is a
constant-size summary rewritten (atomically) now and then (`sharding.manifest_writer`);
shards.parquet and ``"complete": true`` appear when every shard is done.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from functools import partial
from typing import Iterator, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm

from groundfloor.errors import UsageError, usage_error_from
from groundfloor.storage import Storage, absolute, join
from sharding.build import (
    BuildOptions,
    ShardRecord,
    ShardTask,
    build_shard,
    parquet_bytes,
    part_uri,
)
from sharding.dedup import dedup_across_groups
from sharding.executors import Executor, make_executor
from sharding.format import INDEX_DIR, PARTS_DIR, QUARANTINE_DIR, SHARDS_DIR
from sharding.inputs import InputOptions, InputSource, iter_input_batches, resolve_source
from sharding.manifest_writer import ManifestWriter, write_shards_table
from sharding.plan import PlannedShard, PlanStats, plan_stream
from sharding.summary import PlanSummary, ShardSummary, summarize
from sharding.validate import DEFAULT_MAX_PIXELS

GROUP_BY = r"^(file|dir|json:.+|column:.+)$"
LABEL_FROM = r"^(none|parent|cls|json:.+|column:.+)$"


class ShardConfig(BaseModel):
    """Everything that decides the output bytes (stored in manifest.json as ``config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("data", pattern=r"^[A-Za-z0-9_-]+$", description="shard file name prefix")
    group_by: str = Field("file", pattern=GROUP_BY, description="file | dir | json:FIELD | column:NAME")
    label_from: str = Field("none", pattern=LABEL_FROM, description="none | parent | cls | json:FIELD | column:NAME")
    uri_column: str = Field("uri", min_length=1, description="the manifest column of input uris (img2dataset: url)")
    keep_columns: tuple[str, ...] = Field((), description="manifest columns kept in each view's meta")
    bytes_column: str | None = Field(None, min_length=1, description="Parquet column of image bytes "
                                                                      "(default: image of struct<bytes, path>)")
    shard_bytes: int = Field(256 * 1024 * 1024, gt=0, description="target input bytes per shard")
    shard_samples: int = Field(10_000, gt=0, description="max samples (groups) per shard")
    max_side: int | None = Field(None, gt=0, description="resize (and re-encode) larger images")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of re-encoded images")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decompression-bomb limit")
    shuffle_seed: int | None = Field(0, description="seeded group order across shards (None: sorted by group id)")
    dedup_across_groups: Literal["report", "drop", "keep-first", "merge"] = Field(
        "report", description="photos held by several groups: report only, or drop/keep-first/merge "
                              "(sharding.dedup); the build's shards do not depend on it")

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _split(cls, value):
        return tuple(c.strip() for c in value.split(",") if c.strip()) if isinstance(value, str) else value

    def build_options(self) -> BuildOptions:
        container = lambda v, plain: None if v in plain else v  # noqa: E731
        return BuildOptions(max_pixels=self.max_pixels, max_side=self.max_side, quality=self.quality,
                            group_by=container(self.group_by, ("file", "dir")),
                            label_from=container(self.label_from, ("none", "parent")),
                            bytes_column=self.bytes_column, keep_columns=tuple(self.keep_columns))

    def input_options(self) -> InputOptions:
        return InputOptions(self.group_by, self.label_from, self.uri_column, tuple(self.keep_columns),
                            self.bytes_column)


class ShardRunOptions(BaseModel):
    """Where and how a build runs (not stored: they never change the output bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1, description="folder, manifest(s) or s3:// prefix")
    output: str | None = Field(None, description="dataset folder or s3:// prefix (none for a dry run)")
    workers: int = Field(1, ge=1, description="local worker processes")
    ray: bool = False
    address: str | None = None
    ray_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started here")
    endpoint_url: str | None = None
    prefetch: int | None = Field(None, ge=1, description="reads in flight per shard task (default: "
                                                         "8 remote, local files one by one)")


def split_settings(settings: dict) -> tuple[ShardConfig, ShardRunOptions]:
    """One flat settings mapping (a shard YAML config with its flags applied) as the build's
    config and the run's options, both validated: a wrong value is one UsageError naming it."""
    run_keys = set(ShardRunOptions.model_fields)
    run = {key: value for key, value in settings.items() if key in run_keys}
    config = {key: value for key, value in settings.items() if key not in run_keys}
    try:
        options = ShardRunOptions.model_validate(run)
    except ValidationError as err:
        raise usage_error_from(err, "shard config") from None
    return make_config(**config), options


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
    prefetch: int | None = None,
    **config_fields,
) -> ShardSummary:
    """Shard the images at `source` (folder, manifest(s), s3:// prefix) into a dataset at `output`.

    `config` (or keyword fields of ShardConfig, e.g. ``group_by="dir", shard_samples=64``)
    decides the bytes; `workers`/`ray` only decide where shards are built and `prefetch` how
    many reads a build keeps in flight (None: DEFAULT_PREFETCH remote reads, local files read
    one by one in the build's thread). Raises UsageError for bad input or output; bad images
    are quarantined, never raised.
    """
    config = make_config(config, **config_fields)
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if prefetch is not None and prefetch < 1:
        raise UsageError(f"prefetch must be >= 1, got {prefetch}")
    started = time.perf_counter()
    storage = Storage(endpoint_url)
    source, output = absolute(source), absolute(output)
    check_output(output, storage)
    storage.remove_unfinished_writes(  # a killed run's debris
        output, ("", SHARDS_DIR, PARTS_DIR, INDEX_DIR, QUARANTINE_DIR))
    resolved = resolve_source(source, storage, config.bytes_column)
    options = config.build_options()
    listed = {e.relpath for e in _safe_list(storage, join(output, PARTS_DIR))}
    stats = PlanStats()
    manifest = ManifestWriter(output, storage, config.model_dump(), source, stats)
    records: dict[str, ShardRecord] = {}
    order: list[str] = []
    bar = _LazyBar(progress)
    built = built_inputs = 0

    def tasks() -> Iterator[ShardTask]:
        """Planned shards that need building (finished ones are recorded and skipped)."""
        batches = _counted(_batches(source, storage, config, resolved), progress, "planning")
        for shard in plan_stream(batches, config.name, config.shard_bytes, config.shard_samples,
                                 config.shuffle_seed, stats):
            bar.start(stats.num_inputs)
            order.append(shard.name)
            data = parquet_bytes(_without_empty_meta(shard.rows))
            fingerprint = shard_fingerprint(shard, options.fingerprint_fields(), data)
            done = _finished(output, shard.name, fingerprint, listed, storage)
            if done is not None:
                manifest.add(done)
                records[shard.name] = done
                bar.update(done.num_inputs)
                continue
            # Before any shard is (re)written, drop an older build's claims about it.
            manifest.invalidate()
            yield ShardTask(shard.number, shard.name, data, fingerprint, shard.num_inputs)

    owned = executor is None
    held: list[Executor] = [executor] if executor is not None else []

    def get_executor() -> Executor:  # made on first need: a finished dataset starts no workers
        if not held:
            held.append(make_executor(workers, ray, ray_address))
        return held[0]

    try:
        todo = tasks()
        first = next(todo, None)  # plans up to the first shard to build (or to the end)
        if first is not None:
            build = partial(build_shard, output=output, options=options, storage=storage, prefetch=prefetch)
            for record in get_executor().map_unordered(build, _chain(first, todo)):
                manifest.add(record)
                records[record.name] = record
                built += 1
                built_inputs += record.num_inputs
                bar.update(record.num_inputs)
                manifest.write()
        bar.close()
        if stats.num_inputs == 0:
            raise UsageError(f"input {source!r} holds no files (expected images in a folder or manifest rows)")
        ordered = [records[name] for name in order]
        check_some_samples(source, output, ordered)
        # Before shards.parquet lists anything: photos held by several groups (sharding.dedup).
        dedup = dedup_across_groups(output, ordered, config.dedup_across_groups, storage, get_executor,
                                    progress=progress, before_rewrite=manifest.invalidate)
    finally:
        bar.close()
        if owned and held:
            held[0].close()
    write_shards_table(output, dedup.records, storage)
    manifest.recount(dedup.records)
    manifest.extra["duplicates_across_groups"] = dedup.summary
    manifest.write(complete=True)
    seconds = time.perf_counter() - started
    summary = summarize(output, dedup.records, stats.num_inputs, built, built_inputs, seconds)
    summary.duplicates_across_groups = dedup.summary
    return summary


def plan_dataset(
    source: str,
    config: ShardConfig | None = None,
    *,
    endpoint_url: str | None = None,
    progress: bool = True,
    **config_fields,
) -> PlanSummary:
    """The plan of `source` under `config`, summarized, without building (``--dry-run``):
    reads only the listing or manifests, in bounded memory (the plan spills to TMPDIR)."""
    config = make_config(config, **config_fields)
    started = time.perf_counter()
    storage = Storage(endpoint_url)
    source = absolute(source)
    resolved = resolve_source(source, storage, config.bytes_column)
    stats = PlanStats()
    batches = _counted(_batches(source, storage, config, resolved), progress, "planning")
    for _ in plan_stream(batches, config.name, config.shard_bytes, config.shard_samples,
                         config.shuffle_seed, stats):
        pass
    if stats.num_inputs == 0:
        raise UsageError(f"input {source!r} holds no files (expected images in a folder or manifest rows)")
    return PlanSummary(source, resolved.kind, max(1, len(resolved.files)), stats, time.perf_counter() - started)


class _LazyBar:
    """The build's progress bar, shown from the first planned shard on (so that an input
    error before it stays a one-line message)."""

    def __init__(self, enabled: bool):
        self.enabled, self._bar = enabled, None

    def start(self, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, unit="img", desc="sharding", disable=not self.enabled)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _counted(batches: Iterator[pa.RecordBatch], progress: bool, desc: str) -> Iterator[pa.RecordBatch]:
    """`batches`, with a bar of rows read that appears after the first batch parsed."""
    bar = None
    try:
        for batch in batches:
            if bar is None:
                bar = tqdm(unit="input", desc=desc, disable=not progress)
            bar.update(batch.num_rows)
            yield batch
    finally:
        if bar is not None:
            bar.close()


def _chain(first, rest):
    yield first
    yield from rest


def _batches(source: str, storage: Storage, config: ShardConfig, resolved: InputSource) -> Iterator[pa.RecordBatch]:
    return iter_input_batches(source, storage, resolved=resolved, options=config.input_options())


def _without_empty_meta(rows: pa.Table) -> pa.Table:
    """A shard's input list without its `meta` column when no input has metadata: the list of
    plain image inputs then has the bytes (and the fingerprint) it had before containers."""
    if "meta" in rows.column_names and rows.column("meta").null_count == rows.num_rows:
        return rows.drop_columns(["meta"])
    return rows


def shard_fingerprint(shard: PlannedShard, options: dict, list_bytes: bytes) -> str:
    """sha256 of everything that decides a shard's bytes (its name, the build options, its input
    list): a finished shard is reused on rerun only if its recorded fingerprint matches."""
    head = json.dumps({"name": shard.name, "config": options}, sort_keys=True).encode()
    return hashlib.sha256(head + b"\0" + list_bytes).hexdigest()


def make_config(config: ShardConfig | None = None, **fields) -> ShardConfig:
    """A ShardConfig from a base config and overrides; bad values raise a one-line UsageError."""
    try:
        return ShardConfig(**{**(config.model_dump() if config else {}), **fields})
    except ValidationError as err:
        raise usage_error_from(err, "shard config") from None


def check_some_samples(source: str, output: str, records: list[ShardRecord]) -> None:
    """A build that wrote no sample is an error (the dataset stays incomplete), with the
    quarantine reasons: nothing would train on it."""
    if any(r.num_samples for r in records):
        return
    reasons: Counter = Counter()
    for r in records:
        reasons.update(r.quarantined_by_reason)
    shown = ", ".join(f"{reason}={n}" for reason, n in sorted(reasons.items())) or "none"
    raise UsageError(f"no sample was written from {source!r}: every input was quarantined ({shown}); "
                     f"the parts under {join(output, QUARANTINE_DIR)} name each input and why")


def check_output(output: str, storage: Storage) -> None:
    """Fail early, with the reason, if `output` cannot be written."""
    storage.check_writable(output)


def _finished(output: str, name: str, fingerprint: str, listed: set[str], storage: Storage) -> ShardRecord | None:
    """The part record of shard `name` if it was built with exactly this plan and options."""
    uri = part_uri(output, name)
    if uri.rsplit("/", 1)[-1] not in listed:
        return None
    try:
        record = ShardRecord.from_json(storage.read_bytes(uri))
    except Exception:  # unreadable or foreign: rebuild the shard
        return None
    return record if record.fingerprint == fingerprint else None


def _safe_list(storage: Storage, root: str):
    try:
        if not storage.is_folder(root):
            return []
        return storage.iter_files(root)
    except Exception:
        return []
