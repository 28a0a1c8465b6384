"""Phase two of a build: turn one planned shard into a finished, atomically published shard.

`build_shard` reads and validates each group's images, streams the samples through a
`TarWriter` into an atomic writer (temporary file + rename, or a multipart upload completed at
the end), then publishes the `.idx`, and last the shard's *part record*
(``_parts/{stem}.json``: its index and quarantine rows, checksum and fingerprint). The part
record is the proof that the shard is finished: the orchestrator lists a shard in
manifest.json only after reading it, and a rerun skips shards whose record matches.
It is a plain function of (task, output, options) so any executor can run it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field

from sharding.format import SHARDS_DIR, idx_name
from sharding.plan import Group, ShardTask
from sharding.storage import Storage, join
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

PARTS_DIR = "_parts"


@dataclass(frozen=True)
class BuildOptions:
    """What decides the bytes of a shard besides its inputs."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    quality: int = 90


@dataclass
class ShardRecord:
    """The outcome of building one shard; stored as its part record."""

    name: str
    fingerprint: str
    num_inputs: int
    num_samples: int = 0
    num_views: int = 0
    num_reencoded: int = 0
    bytes: int = 0
    sha256: str | None = None
    index_rows: list[dict] = field(default_factory=list)
    quarantine_rows: list[dict] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "ShardRecord":
        return cls(**json.loads(data))

    def manifest_entry(self) -> dict:
        return {
            "name": self.name,
            "idx": idx_name(self.name),
            "num_samples": self.num_samples,
            "num_views": self.num_views,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


def part_uri(output: str, shard_name: str) -> str:
    """Where the part record of `shard_name` lives."""
    return join(output, PARTS_DIR, shard_name[: -len(".tar")] + ".json")


def build_shard(task: ShardTask, output: str, options: BuildOptions, storage: Storage) -> ShardRecord:
    """Build, publish and record shard `task` under `output` (see module docstring)."""
    record = ShardRecord(task.name, task.fingerprint(asdict(options)), task.num_inputs)
    tar_uri = join(output, SHARDS_DIR, task.name)
    with contextlib.ExitStack() as stack:
        writer: TarWriter | None = None
        for group in task.groups:
            views, rejected = validate_group(group, options, storage)
            record.quarantine_rows.extend(rejected)
            if not views:
                continue
            if writer is None:  # opened lazily: a shard whose every input is bad writes no tar
                writer = TarWriter(stack.enter_context(storage.open_atomic_write(tar_uri)))
            members = [(f"{i}.{v.ext}", v.data) for i, (_, v) in enumerate(views)]
            members.append(("json", group_metadata(group, views)))
            writer.write_sample(group.key, members)
            record.num_samples += 1
            record.num_views += len(views)
            record.num_reencoded += sum(v.reencoded for _, v in views)
            record.index_rows.append(
                {
                    "shard": task.name,
                    "key": group.key,
                    "group_id": text(group.group_id),
                    "num_views": len(views),
                    "view_exts": [v.ext for _, v in views],
                    "bytes": sum(len(v.data) for _, v in views),
                    "label": text(group.label) if group.label is not None else None,
                }
            )
        if writer is not None:
            writer.close()
            record.bytes, record.sha256 = writer.size, writer.sha256
    # The tar is published (closing the stack renamed/completed it); now its index, then the
    # record that marks the shard finished.
    if writer is not None:
        storage.write_bytes(join(output, SHARDS_DIR, idx_name(task.name)), writer.index_text().encode())
    storage.write_bytes(part_uri(output, task.name), record.to_json())
    return record


def validate_group(
    group: Group, options: BuildOptions, storage: Storage
) -> tuple[list[tuple[str, ValidImage]], list[dict]]:
    """The group's valid views as (source uri, image), and quarantine rows for the rest."""
    views: list[tuple[str, ValidImage]] = []
    rejected: list[dict] = []
    first_with_hash: dict[str, str] = {}
    for record in group.inputs:
        try:
            data = storage.read_bytes(record.uri)
        except Exception as err:  # missing, permission, broken symlink, a folder, S3 error
            outcome: ValidImage | Rejected = Rejected(UNREADABLE, f"{type(err).__name__}: {err}")
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
            views.append((text(record.uri), outcome))
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


def group_metadata(group: Group, views: list[tuple[str, ValidImage]]) -> bytes:
    """The ``{key}.json`` member: group id, label, and per view its source, sha256 and size."""
    meta = {
        "group_id": text(group.group_id),
        "label": text(group.label) if group.label is not None else None,
        "sources": [source for source, _ in views],
        "sha256": [v.sha256 for _, v in views],
        "width": [v.width for _, v in views],
        "height": [v.height for _, v in views],
        "reencoded": [v.reencoded for _, v in views],
    }
    return json.dumps(meta, sort_keys=True).encode("utf-8")
