"""Inputs that hold many samples: WebDataset tars and Parquet row groups of embedded images.

The plan packs such a *container* whole (one plan row: a tar, or ``{parquet}#rowgroup={i}``,
listed from metadata alone, so the driver never reads a sample); the build streams it and
turns its samples into groups, never extracting anything to disk:

  * a tar (``.tar``, ``.tar.gz``, ``.tgz``) is read front to back over `Storage.open_stream`
    (`sharding.tar_reader`: tarfile's stream mode, with a fast path for plain members); members
    are grouped by key the way webdataset does (``base_plus_ext``: ``a/b/0001.seg.png`` is
    field ``seg.png`` of key ``a/b/0001``). A sample's image members are its photos; its other
    members (``txt``, ``json``, ``url``, ``cls``, ...) are kept as its ``meta`` when they are
    text, and never decoded otherwise (no pickles). A member that does not decode is
    quarantined as ``{tar}#{member}``; a tar that ends early keeps the samples before the break
    and quarantines the rest as one row (``{tar}#{last member read}``).
  * a Parquet row group is read in small record batches of the image column (``image`` as the
    Hub writes it, ``struct<bytes, path>``, or any binary column named with --bytes-column).

Groups: each sample (tar key, Parquet row) is a group, or with ``json:FIELD`` / ``column:NAME``
consecutive samples of one container with the same value are one group (webdataset's
``group_by_keys``, one container at a time). Limitations: a group never spans two containers
(write a listing's photos next to each other, as img2dataset does with a sorted input), and
--shard-samples counts containers, not their samples (known only once read).
"""
from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa

from groundfloor.errors import UsageError
from groundfloor.storage import FileEntry, Storage, local_path
from sharding.plan import Group, group_key
from sharding.records import INPUT_SCHEMA, InputRecord, encode
from sharding.tar_reader import tar_members

TAR_EXTS = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = frozenset("jpg jpeg png webp gif bmp tif tiff ppm pgm pbm pnm jp2 avif".split())
ROWGROUP = re.compile(r"^(?P<uri>.*)#rowgroup=(?P<number>\d+)$")
BRACE = re.compile(r"\{[^{}]*\.\.[^{}]*\}|\{[^{}]*,[^{}]*\}")
WHOLE_READ_BYTES = 64 << 20   # a remote Parquet up to this size is fetched in one GET
PARQUET_BATCH_ROWS = 64       # embedded images per record batch (~64 photos in memory)
NO_IMAGE = "no_image"         # quarantine reason: a sample with no image member
STREAM_BROKEN = "unreadable"  # the container stream broke (truncated tar, bad gzip)


def is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_EXTS)


def is_container(uri: str) -> bool:
    """True for a plan row the build streams as many samples (see module docstring)."""
    return is_tar(uri) or ROWGROUP.match(uri) is not None


def has_braces(source: str) -> bool:
    """``shards-{000000..000999}.tar``: a brace pattern as webdataset and img2dataset write it."""
    return BRACE.search(source) is not None


def expand_braces(source: str) -> Iterator[str]:
    """Every name of a brace pattern, lazily (a million shards are never a list)."""
    from braceexpand import braceexpand

    return braceexpand(source)


def field_spec(value: str) -> tuple[str, str]:
    """``"json:listing_id"`` -> ("json", "listing_id"); ``"cls"`` -> ("cls", "")."""
    kind, _, name = value.partition(":")
    return kind, name


# ---- the driver: containers as plan rows --------------------------------------------------------
def tar_batches(entries: Iterable[FileEntry], file_number: int = 0) -> Iterator[pa.RecordBatch]:
    """One plan row per tar: its uri is its group (ranked like any group), its size the tar's."""
    rows: list[FileEntry] = []
    for entry in entries:
        rows.append(entry)
        if len(rows) >= 65_536:
            yield _rows(rows, file_number)
            rows = []
    if rows:
        yield _rows(rows, file_number)


def brace_entries(pattern: str, storage: Storage) -> Iterator[FileEntry]:
    """The tars a brace pattern names, each checked to exist (a missing one is a UsageError)."""
    for uri in expand_braces(pattern):
        try:
            size = storage.size(uri)
        except FileNotFoundError:
            raise UsageError(f"input {pattern!r} names {uri!r}, which does not exist") from None
        yield FileEntry(uri, posixpath.basename(uri), size)


def _rows(entries: list[FileEntry], file_number: int) -> pa.RecordBatch:
    uris = pa.array([encode(e.uri) for e in entries], pa.binary())
    n = len(entries)
    return pa.record_batch([uris, uris, pa.nulls(n, pa.binary()), pa.array([e.size for e in entries], pa.int64()),
                            pa.array([file_number] * n, pa.int32()), pa.nulls(n, pa.binary())],
                           schema=INPUT_SCHEMA)


def open_random_access(uri: str, storage: Storage):
    """A seekable source for Parquet: a local path, a small object fetched whole, or a large
    object read by ranged GETs (only the footer and the pages asked for)."""
    local = local_path(uri)
    if local is not None:
        return local
    size = storage.size(uri)
    if size <= WHOLE_READ_BYTES:
        return io.BytesIO(storage.read_bytes(uri))
    return _RangedFile(storage, uri, size)


class _RangedFile(io.RawIOBase):
    def __init__(self, storage: Storage, uri: str, size: int):
        super().__init__()
        self._storage, self._uri, self._size, self._pos = storage, uri, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = [offset, self._pos + offset, self._size + offset][whence]
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n:
            buffer[:n] = self._storage.read_range(self._uri, self._pos, n)
            self._pos += n
        return n


def embedded_bytes_column(uri: str, storage: Storage, bytes_column: str | None) -> str | None:
    """The column of a Parquet file that holds image bytes (`bytes_column`, or ``image`` of
    ``struct<bytes, path>``), or None for a manifest of uris."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(open_random_access(uri, storage))
    except FileNotFoundError:
        raise UsageError(f"manifest {uri!r} does not exist") from None
    except Exception as err:
        raise UsageError(f"manifest {uri!r} cannot be parsed: {err}") from None
    if bytes_column is not None:
        if bytes_column not in schema.names:
            raise UsageError(f"Parquet {uri!r} has no column {bytes_column!r} (--bytes-column; found: "
                             f"{', '.join(schema.names)})")
        if not _holds_bytes(schema.field(bytes_column).type):
            raise UsageError(f"column {bytes_column!r} of {uri!r} is {schema.field(bytes_column).type}, "
                             "not binary image bytes (nor struct<bytes, path>)")
        return bytes_column
    if "image" in schema.names and pa.types.is_struct(schema.field("image").type) \
            and _holds_bytes(schema.field("image").type):
        return "image"
    return None


def _holds_bytes(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return any(kind.field(i).name == "bytes" and _holds_bytes(kind.field(i).type) for i in range(kind.num_fields))
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def rowgroup_batches(uri: str, storage: Storage, file_number: int = 0) -> Iterator[pa.RecordBatch]:
    """One plan row per row group of an embedded-bytes Parquet, from its footer alone."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(open_random_access(uri, storage))
    entries = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        size = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        entries.append(FileEntry(f"{uri}#rowgroup={i}", "", size))
    yield from tar_batches(entries, file_number)


# ---- the build: containers as groups -------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSpec:
    """How samples of a container become groups (from the build's options)."""

    group_by: str | None = None        # json:FIELD | column:NAME
    label_from: str | None = None      # cls | json:FIELD | column:NAME
    bytes_column: str | None = None
    keep_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    """One sample of a container: its name, its image members (record, bytes) and its group."""

    name: str
    group: str | None
    label: str | None
    images: list[tuple[InputRecord, bytes]]


@dataclass(frozen=True)
class Problem:
    """Something of a container that is in no shard: a quarantine row."""

    source: str
    group_id: str
    reason: str
    detail: str


def container_samples(record: InputRecord, storage: Storage, spec: ContainerSpec) -> Iterator[Sample | Problem]:
    """The samples of one container row, in container order (see module docstring)."""
    match = ROWGROUP.match(record.uri)
    if match:
        yield from _parquet_samples(match["uri"], int(match["number"]), storage, spec)
    else:
        yield from _tar_samples(record.uri, storage, spec)


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's base_plus_ext: (key, field) of a member name; field "" when it has none."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext


def _tar_samples(uri: str, storage: Storage, spec: ContainerSpec) -> Iterator[Sample | Problem]:
    key, members, last = None, [], "(start)"
    with contextlib.closing(storage.open_stream(uri)) as stream:
        try:
            for name, data in tar_members(stream, lambda: storage.open_stream(uri), _is_field):
                member_key, ext = _split_member(name)
                if member_key != key and members:
                    yield _tar_sample(uri, key, members, spec)
                    members = []
                key, last = member_key, name
                members.append((name, ext, data))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            # The sample being read may be incomplete: it goes with the rest, in this one row.
            yield Problem(f"{uri}#{last}", key or uri, STREAM_BROKEN,
                          f"the tar stream breaks after member {last!r}: {type(err).__name__}: {err}; "
                          f"sample {key!r} and every later member are not read")
            return
    if members:
        yield _tar_sample(uri, key, members, spec)


def _is_field(name: str) -> bool:
    """A member that is a field of a sample: not hidden, not webdataset's ``__key__``-style
    entries, and with an extension."""
    return bool(_split_member(name)[1]) and not posixpath.basename(name).startswith((".", "__"))


def _tar_sample(uri: str, key: str, members: list[tuple[str, str, bytes]], spec: ContainerSpec) -> Sample | Problem:
    meta: dict = {"__key__": key}
    images = []
    for name, ext, data in members:
        if ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
            images.append((name, data))
            continue
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary fields (.pyd, .npy, ...) are never decoded
        if ext == "json":
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        meta[ext] = value
    group = _field(meta, spec.group_by, "json")
    label = (str(meta["cls"]).strip() or None) if spec.label_from == "cls" and "cls" in meta \
        else _field(meta, spec.label_from, "json")
    if not images:
        return Problem(f"{uri}#{key}", group or key, NO_IMAGE,
                       f"sample {key!r} has no image member (fields: {', '.join(e for _, e, _ in members)})")
    text = json.dumps(meta, sort_keys=True, ensure_ascii=False)
    return Sample(key, group, label, [(InputRecord(group or key, f"{uri}#{name}", label, len(data), text), data)
                                      for name, data in images])


def _field(values: dict, spec: str | None, kind: str) -> str | None:
    if not spec:
        return None
    got, name = field_spec(spec)
    if got != kind:
        return None
    source = values.get("json") if kind == "json" else values
    value = source.get(name) if isinstance(source, dict) else None
    return None if value is None or value == "" else str(value)


def _parquet_samples(uri: str, number: int, storage: Storage, spec: ContainerSpec) -> Iterator[Sample | Problem]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(open_random_access(uri, storage), pre_buffer=False, buffer_size=1 << 20)
    names = parquet.schema_arrow.names
    column = spec.bytes_column or "image"
    group_col = field_spec(spec.group_by)[1] if spec.group_by and spec.group_by.startswith("column:") else None
    label_col = field_spec(spec.label_from)[1] if spec.label_from and spec.label_from.startswith("column:") else None
    wanted = [c for c in dict.fromkeys([column, group_col, label_col, *spec.keep_columns]) if c and c in names]
    row = sum(parquet.metadata.row_group(i).num_rows for i in range(number))
    base = posixpath.basename(uri)
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[number], columns=wanted,
                                      use_threads=False):
        for values in batch.to_pylist():
            cell = values.get(column)
            data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
            meta = {c: values.get(c) for c in spec.keep_columns}
            if path:
                meta["path"] = path
            group = _plain(values.get(group_col)) if group_col else None
            label = _plain(values.get(label_col)) if label_col else None
            name = f"{base}#row={row}"
            text = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=_plain) if meta else None
            record = InputRecord(group or name, f"{uri}#row={row}", label, len(data or b""), text)
            yield Sample(name, group, label, [(record, data or b"")])
            row += 1


def _plain(value) -> str | None:
    if value is None or value == "":
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def container_groups(record: InputRecord, storage: Storage,
                     spec: ContainerSpec) -> Iterator[tuple[Group, list[bytes]] | Problem]:
    """The groups of one container row with their images' bytes (in view order), and the
    quarantine rows of what is in no group, in container order."""
    pending: list[Sample] = []
    for item in container_samples(record, storage, spec):
        if isinstance(item, Problem):
            yield item
            continue
        if pending and not (spec.group_by and item.group is not None and item.group == pending[0].group):
            yield _group(record.uri, pending)
            pending = []
        pending.append(item)
    if pending:
        yield _group(record.uri, pending)


def _group(uri: str, samples: list[Sample]) -> tuple[Group, list[bytes]]:
    images = [image for sample in samples for image in sample.images]
    group_id = images[0][0].group_id
    label = next((s.label for s in samples if s.label is not None), None)
    key = group_key(group_id, unique=f"{uri}#{samples[0].name}")
    return Group(group_id, key, label, tuple(r for r, _ in images)), [data for _, data in images]
