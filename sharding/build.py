"""Phase two of a build: turn one planned shard into a finished, atomically published shard.

`build_shard` gets its own input list from the planner (a small Parquet blob inside the task,
shipped through the executor, on Ray through its object store, so nothing of it is written to
the output), reads and validates each group's images (a small thread pool fetches the next remote
inputs while this one is decoded, since an S3 GET waits for its first byte; local files are read
in the build's own thread unless `prefetch` says otherwise), streams the samples through a
`TarWriter` into an atomic writer (temporary file + rename, or a multipart upload completed at
the end), then publishes the `.idx`, the shard's index part (``index/{stem}.parquet``), its
quarantine part when it has one, and last its *part record* (``_parts/{stem}.json``: counts,
checksum, fingerprint). The part record is the proof that the shard is finished: the
orchestrator counts a shard only after reading it, and a rerun skips shards whose record
matches. Reads are consumed in plan order whatever order they complete in, so the bytes do
not depend on the prefetch depth. It is a plain function of (task, output, options) so any
executor can run it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from sharding.format import (
    INDEX_DIR,
    INDEX_SCHEMA,
    PARTS_DIR,
    QUARANTINE_DIR,
    QUARANTINE_SCHEMA,
    SHARDS_DIR,
    idx_name,
    index_part_name,
    quarantine_part_name,
)
from sharding.containers import ContainerSpec, Problem, container_groups, is_container
from sharding.plan import Group, groups_of
from groundfloor.parquet_files import read_parquet
from groundfloor.storage import Storage, join
from sharding.tar_writer import TarWriter
from sharding.validate import (
    CORRUPT,
    DEFAULT_MAX_PIXELS,
    DUPLICATE_IN_GROUP,
    UNREADABLE,
    Rejected,
    ValidImage,
    validate_image,
)

DEFAULT_PREFETCH = 8     # remote reads in flight per task: ~25 ms to first byte / ~3 ms of decode per image; under botocore's 10 pooled connections


@dataclass(frozen=True)
class BuildOptions:
    """What decides the bytes of a shard besides its inputs (the last four: how containers'
    samples become groups, `sharding.containers`)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    quality: int = 90
    group_by: str | None = None
    label_from: str | None = None
    bytes_column: str | None = None
    keep_columns: tuple[str, ...] = ()

    def fingerprint_fields(self) -> dict:
        """The options as the shard fingerprint hashes them (container fields only when set,
        so shards of image inputs keep the fingerprints they had before containers)."""
        fields = asdict(self)
        for name in ("group_by", "label_from", "bytes_column", "keep_columns"):
            if not fields[name]:
                del fields[name]
        return fields

    @property
    def container_spec(self) -> ContainerSpec:
        return ContainerSpec(self.group_by, self.label_from, self.bytes_column, self.keep_columns)


class View(NamedTuple):
    """A photo kept for a group: where it came from, what is stored, its sha256, its meta."""

    source: str
    image: ValidImage
    sha256: str
    meta: dict | None = None


@dataclass(frozen=True)
class ShardTask:
    """What an executor ships to a build: its name and input list (Parquet bytes, LIST_SCHEMA),
    made by the planner as the shard closes; a few are in flight at a time, never the plan."""

    number: int
    name: str
    rows: bytes = field(repr=False)
    fingerprint: str = ""
    num_inputs: int = 0


@dataclass
class ShardRecord:
    """The outcome of building one shard; stored as its part record (small: no per-sample rows)."""

    name: str
    fingerprint: str
    num_inputs: int
    num_samples: int = 0
    num_views: int = 0
    num_reencoded: int = 0
    bytes: int = 0
    sha256: str | None = None
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    @property
    def num_quarantined(self) -> int:
        return sum(self.quarantined_by_reason.values())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "ShardRecord":
        return cls(**json.loads(data))


def part_uri(output: str, shard_name: str) -> str:
    """Where the part record of `shard_name` lives."""
    return join(output, PARTS_DIR, shard_name[: -len(".tar")] + ".json")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes (deterministic for one pyarrow version: no timestamps)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def build_shard(task: ShardTask, output: str, options: BuildOptions, storage: Storage,
                prefetch: int | None = None) -> ShardRecord:
    """Build, publish and record shard `task` under `output` (see module docstring)."""
    groups = groups_of(read_parquet(task.rows))
    record = ShardRecord(task.name, task.fingerprint, task.num_inputs)
    tar_uri = join(output, SHARDS_DIR, task.name)
    index_rows: list[dict] = []
    quarantine_rows: list[dict] = []
    labels: set[str] = set()
    with contextlib.ExitStack() as stack:
        writer: TarWriter | None = None
        for group, reads in _units(groups, storage, options, prefetch, quarantine_rows):
            views, rejected = validate_group(group, options, reads)
            quarantine_rows.extend(rejected)
            if not views:
                continue
            if writer is None:  # opened lazily: a shard whose every input is bad writes no tar
                writer = TarWriter(stack.enter_context(storage.open_atomic_write(tar_uri)))
            members = [(f"{i}.{v.image.ext}", v.image.data) for i, v in enumerate(views)]
            members.append(("json", group_metadata(group, views)))
            writer.write_sample(group.key, members)
            record.num_samples += 1
            record.num_views += len(views)
            record.num_reencoded += sum(v.image.reencoded for v in views)
            label = text(group.label) if group.label is not None else None
            if label is not None:
                labels.add(label)
            index_rows.append(
                {
                    "shard": task.name,
                    "key": group.key,
                    "group_id": text(group.group_id),
                    "num_views": len(views),
                    "view_exts": [v.image.ext for v in views],
                    "bytes": sum(len(v.image.data) for v in views),
                    "label": label,
                    "view_sha256": [v.sha256 for v in views],
                }
            )
        if writer is not None:
            writer.close()
            record.bytes, record.sha256 = writer.size, writer.sha256
    # The tar is published (closing the stack renamed/completed it); now its index, its index
    # and quarantine parts, then the record that marks the shard finished.
    record.quarantined_by_reason = dict(sorted(Counter(r["reason"] for r in quarantine_rows).items()))
    record.labels = sorted(labels)
    if writer is not None:
        storage.write_bytes(join(output, SHARDS_DIR, idx_name(task.name)), writer.index_text().encode())
        table = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
        storage.write_bytes(join(output, INDEX_DIR, index_part_name(task.name)), parquet_bytes(table))
    quarantine_uri = join(output, QUARANTINE_DIR, quarantine_part_name(task.name))
    # Written only when non-empty, or (empty) over a stale part an earlier build left there.
    if quarantine_rows or storage.exists(quarantine_uri):
        table = pa.Table.from_pylist(quarantine_rows, schema=QUARANTINE_SCHEMA)
        storage.write_bytes(quarantine_uri, parquet_bytes(table))
    storage.write_bytes(part_uri(output, task.name), record.to_json())
    return record


def _read(storage: Storage, uri: str) -> bytes | BaseException:
    try:
        return storage.read_bytes(uri)
    except Exception as err:  # missing, permission, broken symlink, a folder, S3 error
        return err


def _units(groups: list[Group], storage: Storage, options: BuildOptions, prefetch: int | None,
           quarantine_rows: list[dict]) -> Iterator[tuple[Group, Iterator[bytes | BaseException]]]:
    """Each group to write with the bytes of its inputs, in plan order: a planned group of
    images as it is (its reads prefetched), a container row (a tar, a Parquet row group)
    streamed as its samples' groups, whose quarantine rows are added on the way."""
    plain = [Group(g.group_id, g.key, g.label, tuple(r for r in g.inputs if not is_container(r.uri)))
             for g in groups]
    reads = _prefetched([g for g in plain if g.inputs], storage, prefetch)
    for group, images in zip(groups, plain):
        if images.inputs:
            yield images, reads
        for container in (r for r in group.inputs if is_container(r.uri)):
            for item in container_groups(container, storage, options.container_spec):
                if isinstance(item, Problem):
                    quarantine_rows.append({"source": text(item.source), "group_id": text(item.group_id),
                                            "reason": item.reason, "detail": text(item.detail)})
                else:
                    yield item[0], iter(item[1])


def _prefetched(groups: list[Group], storage: Storage, depth: int | None) -> Iterator[bytes | BaseException]:
    """Every input's bytes (or its read error) in plan order, with up to `depth` reads in flight.

    `depth` None: remote inputs DEFAULT_PREFETCH in flight, local files read here when their
    turn comes (from the page cache a read takes microseconds, less than handing it to a
    thread and back; a slow network filesystem is what an explicit `depth` is for).
    """
    limit = depth or DEFAULT_PREFETCH
    window: deque[Future] = deque()
    pool: ThreadPoolExecutor | None = None
    try:
        for uri in (r.uri for g in groups for r in g.inputs):
            here = depth == 1 or (depth is None and storage.local_path(uri) is not None)
            if here and not window:
                yield _read(storage, uri)
                continue
            if pool is None:
                pool = ThreadPoolExecutor(limit, thread_name_prefix="prefetch")
            window.append(pool.submit(_read, storage, uri))
            if len(window) >= limit:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def validate_group(
    group: Group, options: BuildOptions, reads: Iterator[bytes | BaseException]
) -> tuple[list[View], list[dict]]:
    """The group's valid views (source uri, image, sha256 of the stored bytes, kept metadata),
    and quarantine rows for the rest; the group's bytes are the next len(group.inputs) items of
    `reads`. Each image is hashed once (kept bytes reuse the duplicate check's digest)."""
    views: list[View] = []
    rejected: list[dict] = []
    first_with_hash: dict[str, str] = {}
    for record in group.inputs:
        data = next(reads)
        if isinstance(data, BaseException):
            outcome: ValidImage | Rejected = Rejected(UNREADABLE, f"{type(data).__name__}: {data}")
        else:
            digest = hashlib.sha256(data).hexdigest()
            if digest in first_with_hash and data:
                outcome = Rejected(DUPLICATE_IN_GROUP, f"same bytes as {first_with_hash[digest]}")
            else:
                first_with_hash.setdefault(digest, record.uri)
                outcome = _validate(data, options)
        if isinstance(outcome, Rejected):
            rejected.append(
                {"source": text(record.uri), "group_id": text(group.group_id),
                 "reason": outcome.reason, "detail": text(outcome.detail)}
            )
        else:
            stored = digest if not outcome.reencoded else outcome.sha256
            views.append(View(text(record.uri), outcome, stored,
                              json.loads(record.meta) if record.meta is not None else None))
    return views, rejected


def text(value: str) -> str:
    """`value` as valid UTF-8 for parquet and JSON: file names that are not UTF-8 (decoded by
    Python with surrogate escapes) show their bad bytes as U+FFFD instead of failing the write."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _validate(data: bytes, options: BuildOptions) -> ValidImage | Rejected:
    """validate_image, with a last line of defence: no image may ever stop a build."""
    try:
        return validate_image(data, options.max_pixels, options.max_side, options.quality)
    except Exception as err:  # a decoder failure mode validate_image does not know yet
        return Rejected(CORRUPT, f"{type(err).__name__}: {err}")


def group_metadata(group: Group, views: list[View]) -> bytes:
    """The ``{key}.json`` member: group id, label, and per view its source, sha256 and size,
    and, when any view has some, its kept metadata (``meta``: manifest columns, a WebDataset
    sample's text members, null for a view without)."""
    meta = {
        "group_id": text(group.group_id),
        "label": text(group.label) if group.label is not None else None,
        "sources": [v.source for v in views],
        "sha256": [v.sha256 for v in views],
        "width": [v.image.width for v in views],
        "height": [v.image.height for v in views],
        "reencoded": [v.image.reencoded for v in views],
    }
    if any(v.meta is not None for v in views):
        meta["meta"] = [v.meta for v in views]
    return json.dumps(meta, sort_keys=True).encode("utf-8")
