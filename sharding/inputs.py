"""Turn what the user points at into a stream of input-record batches (uri, group, label, size).

Kinds of input, one output type (Arrow record batches of INPUT_SCHEMA, never the whole list):
  * a folder tree (local or ``s3://bucket/prefix``), listed as a stream: each file is a sample,
    or with ``group_by="dir"`` each leaf folder is one natural-view group;
  * a manifest (``.csv``, ``.jsonl``, ``.parquet``; local or s3) with a ``uri`` column and
    optional ``group``, ``label`` and ``size`` (bytes, for --shard-bytes) columns, read in
    record batches;
  * several manifests as one input: a glob (``lists/part-*.parquet``), a folder that holds only
    manifest files, or an S3 Inventory ``manifest.json`` (its Parquet data files list
    bucket/key/size: the way to enumerate 1e9 objects without a LIST of the bucket).
Text columns are Arrow *binary* (UTF-8, with file names that are not UTF-8 kept byte-exact via
surrogate escapes), so the plan can sort and hash them without a Python object per input.
The ``file`` column numbers the manifest file a row came from (for `--dry-run`'s "groups split
across manifest files"). Order does not matter: the plan sorts, so the output bytes depend
only on the inputs, never on listing order.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc

from groundfloor.errors import UsageError

from groundfloor.storage import FileEntry, Storage, local_path
from groundfloor.storage.uri import ABSOLUTE_URI_REGEX, parent_folder, s3_uri

GroupBy = Literal["file", "dir"]
LabelFrom = Literal["none", "parent"]
MANIFEST_EXTS = (".csv", ".jsonl", ".parquet")
INVENTORY_FILE = "manifest.json"  # S3 Inventory's manifest: {"files": [{"key": ...}], "fileFormat": ...}
BATCH_ROWS = 65_536
GLOB_CHARS = "*?["
ENC = "surrogateescape"

INPUT_SCHEMA = pa.schema(
    [
        ("group_id", pa.binary()),
        ("uri", pa.binary()),
        ("label", pa.binary()),   # null: no label
        ("size", pa.int64()),     # listed size (0 when a manifest does not list sizes)
        ("file", pa.int32()),     # number of the manifest file the row came from (0 for listings)
    ]
)


@dataclass(frozen=True, order=True)
class InputRecord:
    """One input image: where it is, the group it belongs to, its label, its listed size."""

    group_id: str
    uri: str
    label: str | None = None
    size: int = 0


@dataclass(frozen=True)
class InputSource:
    """What `source` resolved to: a folder listing, manifest files, or inventory data files."""

    kind: Literal["listing", "manifests", "inventory"]
    root: str
    files: tuple[str, ...] = field(default=())


def encode(value: str) -> bytes:
    return value.encode("utf-8", ENC)


def decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", ENC)


def resolve_source(source: str, storage: Storage) -> InputSource:
    """Decide what `source` is (see module docstring); UsageError when it holds nothing."""
    local = local_path(source)
    if any(c in source for c in GLOB_CHARS) and (local is None or not os.path.exists(local)):
        files = _glob(source, storage)
        bad = [f for f in files if not f.lower().endswith(MANIFEST_EXTS)]
        if not files:
            raise UsageError(f"input {source!r} matches no files")
        if bad:
            raise UsageError(f"input {source!r} matches {bad[0]!r}, which is not a manifest "
                             f"({'/'.join(MANIFEST_EXTS)})")
        return InputSource("manifests", source, tuple(files))
    if posixpath.basename(source) == INVENTORY_FILE:
        return InputSource("inventory", source, tuple(_inventory_files(source, storage)))
    if source.lower().endswith(MANIFEST_EXTS):
        if local is not None and not os.path.isfile(local):
            raise UsageError(f"manifest {source!r} does not exist")
        return InputSource("manifests", source, (source,))
    if not storage.is_folder(source):
        raise UsageError(
            f"input {source!r} does not exist or is not a folder "
            f"(expected a folder, a manifest {'/'.join(MANIFEST_EXTS)}, a glob of manifests, "
            f"an S3 Inventory manifest.json or s3://bucket/prefix)"
        )
    # A folder that holds only manifest files is several manifests; peek at the listing.
    manifests: list[str] = []
    try:
        for entry in storage.iter_files(source):
            if not entry.relpath.lower().endswith(MANIFEST_EXTS):
                return InputSource("listing", source)
            manifests.append(entry.uri)
    except Exception as err:  # S3: no such bucket, no credentials, unreachable endpoint
        raise UsageError(f"cannot list input {source!r}: {err}") from None
    if manifests:
        return InputSource("manifests", source, tuple(sorted(manifests)))
    return InputSource("listing", source)


def iter_input_batches(
    source: str, storage: Storage, group_by: GroupBy = "file", label_from: LabelFrom = "none",
    resolved: InputSource | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every input found at `source` as record batches of INPUT_SCHEMA, in no particular order.

    Raises UsageError when `source` does not exist or is a manifest without a ``uri`` column
    (an input that holds nothing is reported by the caller, which counts rows).
    """
    if group_by not in ("file", "dir"):
        raise UsageError(f"group_by {group_by!r} is not one of: file, dir")
    if label_from not in ("none", "parent"):
        raise UsageError(f"label_from {label_from!r} is not one of: none, parent")
    resolved = resolved or resolve_source(source, storage)
    if resolved.kind == "listing":
        yield from _entry_batches(_listing(resolved.root, storage), group_by, label_from)
    elif resolved.kind == "inventory":
        for number, uri in enumerate(resolved.files):
            yield from _entry_batches(_inventory_entries(uri, storage), group_by, label_from, number)
    else:
        for number, path in enumerate(resolved.files):
            yield from read_manifest_batches(path, storage, number)


def discover_inputs(
    source: str, storage: Storage, group_by: GroupBy = "file", label_from: LabelFrom = "none"
) -> list[InputRecord]:
    """Every input at `source` as a sorted list: for small inputs and tests only (the build
    itself streams `iter_input_batches` into the plan)."""
    records = []
    for batch in iter_input_batches(source, storage, group_by, label_from):
        for row in batch.to_pylist():
            records.append(InputRecord(decode(row["group_id"]), decode(row["uri"]), decode(row["label"]), row["size"]))
    if not records:
        raise UsageError(f"input {source!r} holds no files (expected images in a folder or manifest rows)")
    return sorted(records)


# ---- listings ------------------------------------------------------------------------------
def _listing(root: str, storage: Storage) -> Iterator[FileEntry]:
    try:
        yield from storage.iter_files(root)
    except Exception as err:
        raise UsageError(f"cannot list input {root!r}: {err}") from None


def _entry_batches(entries: Iterable[FileEntry], group_by: GroupBy, label_from: LabelFrom,
                   file_number: int = 0) -> Iterator[pa.RecordBatch]:
    """Records for listed files. Group ids are paths relative to the listed root: the file's
    path (group_by="file") or its folder's path (group_by="dir"; files directly in the root are
    then groups of one). With label_from="parent" the label is the name of the folder above the
    sample: the image's folder for single images, the group folder's parent for dir groups."""
    groups: list[bytes] = []
    uris: list[bytes] = []
    labels: list[bytes | None] = []
    sizes: list[int] = []
    for entry in entries:
        folder = posixpath.dirname(entry.relpath)
        if group_by == "dir" and folder:
            group_id, sample_parent = folder, posixpath.dirname(folder)
        else:
            group_id, sample_parent = entry.relpath, folder
        label = (posixpath.basename(sample_parent) or None) if label_from == "parent" else None
        groups.append(encode(group_id))
        uris.append(encode(entry.uri))
        labels.append(encode(label) if label is not None else None)
        sizes.append(entry.size)
        if len(uris) >= BATCH_ROWS:
            yield _batch(groups, uris, labels, sizes, file_number)
            groups, uris, labels, sizes = [], [], [], []
    if uris:
        yield _batch(groups, uris, labels, sizes, file_number)


def _batch(groups, uris, labels, sizes, file_number: int) -> pa.RecordBatch:
    return pa.record_batch(
        [pa.array(groups, pa.binary()), pa.array(uris, pa.binary()), pa.array(labels, pa.binary()),
         pa.array(sizes, pa.int64()), pa.array([file_number] * len(uris), pa.int32())],
        schema=INPUT_SCHEMA,
    )


def _glob(pattern: str, storage: Storage) -> list[str]:
    local = local_path(pattern)
    if local is not None:
        return sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
    cut = min(pattern.index(c) for c in GLOB_CHARS if c in pattern)
    prefix = pattern[:cut].rsplit("/", 1)[0]
    try:
        return sorted(e.uri for e in storage.iter_files(prefix) if fnmatch.fnmatchcase(e.uri, pattern))
    except Exception as err:
        raise UsageError(f"cannot list input {prefix!r}: {err}") from None


# ---- S3 Inventory ----------------------------------------------------------------------------
def _inventory_files(path: str, storage: Storage) -> list[str]:
    """The data files an S3 Inventory manifest.json lists (Parquet format only)."""
    try:
        manifest = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        raise UsageError(f"inventory manifest {path!r} does not exist") from None
    except Exception as err:
        raise UsageError(f"inventory manifest {path!r} cannot be read: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise UsageError(f"{path!r} is not an S3 Inventory manifest (no 'files' list)")
    if str(manifest.get("fileFormat", "")).lower() != "parquet":
        raise UsageError(f"inventory {path!r} is in format {manifest.get('fileFormat')!r}; "
                         "only Parquet inventories are read")
    bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1]
    if not bucket:
        raise UsageError(f"inventory manifest {path!r} has no destinationBucket")
    return sorted(s3_uri(bucket, f["key"]) for f in manifest["files"])


def _inventory_entries(uri: str, storage: Storage) -> Iterator[FileEntry]:
    """bucket/key/size rows of one inventory data file as listing entries (relpath = key)."""
    for batch in _parquet_batches(uri, storage, ["bucket", "key", "size"]):
        for bucket, key, size in zip(*(batch.column(c).to_pylist() for c in ("bucket", "key", "size"))):
            if not key or key.endswith("/"):  # folder placeholder objects
                continue
            yield FileEntry(s3_uri(bucket, key), key, int(size or 0))


# ---- manifests -------------------------------------------------------------------------------
def read_manifest_batches(path: str, storage: Storage, file_number: int = 0) -> Iterator[pa.RecordBatch]:
    """Records of a CSV / JSONL / Parquet manifest with columns uri [, group, label, size], in
    batches.

    Relative local uris are resolved against the manifest's folder. A row without a group is a
    group of one (its uri). Without a size column sizes are 0: the plan then counts samples.
    """
    base = parent_folder(path)
    row = 0
    try:
        for raw in _raw_batches(path, storage):
            batch = _normalize(raw, base, path, row, file_number)
            row += batch.num_rows
            yield batch
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"manifest {path!r} does not exist") from None
    except Exception as err:
        raise UsageError(f"manifest {path!r} cannot be parsed: {err}") from None


def _no_uri(path: str, columns) -> UsageError:
    return UsageError(
        f"manifest {path!r} has no 'uri' column (found: {', '.join(map(str, columns)) or 'none'}; "
        "expected uri and optional group, label)"
    )


def _raw_batches(path: str, storage: Storage) -> Iterator[pa.RecordBatch | pa.Table]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from _parquet_batches(path, storage, ["uri", "group", "label", "size"], required="uri")
    elif lower.endswith(".jsonl"):
        yield from _jsonl_batches(path, storage)
    else:
        yield from _csv_batches(path, storage)


def _parquet_batches(uri: str, storage: Storage, columns: list[str], required: str | None = None):
    import pyarrow.parquet as pq

    # Parquet needs random access: a local file is read in place; an object is fetched whole
    # (one manifest part; split a huge manifest into several files, which are read one by one).
    local = local_path(uri)
    source = local if local is not None else io.BytesIO(storage.read_bytes(uri))
    # Buffered page reads, one thread: memory of a batch, not of a (possibly 128 MB) row group.
    parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=1 << 20)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    if required and required not in present:
        raise _no_uri(uri, parquet.schema_arrow.names)
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=present, use_threads=False)


def _csv_batches(path: str, storage: Storage):
    import pyarrow.csv as pacsv

    with storage.open_read(path) as stream:
        head = stream.read(1 << 16)
        first_line = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
        columns = next(csv.reader([first_line]), [])
        if "uri" not in columns:
            raise _no_uri(path, columns)
        wanted = [c for c in ("uri", "group", "label", "size") if c in columns]
        reader = pacsv.open_csv(
            _Chained(head, stream),
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.int64() if c == "size" else pa.string()
                                                                for c in wanted},
                                                  include_columns=wanted, strings_can_be_null=False),
        )
        for batch in reader:
            yield batch


class _Chained(io.RawIOBase):
    """`head` then the rest of `stream`: the CSV header was peeked at, not consumed twice."""

    def __init__(self, head: bytes, stream):
        super().__init__()
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _jsonl_batches(path: str, storage: Storage):
    """JSON lines parsed one by one (columns of any JSON type; pyarrow.json would insist on one
    type per column), in batches."""
    rows: list[dict] = []
    seen: set[str] = set()
    number = 0
    with storage.open_read(path) as stream:
        rest = b""
        while True:
            chunk = stream.read(1 << 22)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop() if chunk else b""
            for line in lines:
                if not line.strip():
                    continue
                number += 1
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise UsageError(f"manifest {path!r} must hold one JSON object per line (line {number})")
                seen.update(row)
                rows.append(row)
                if len(rows) >= BATCH_ROWS:
                    yield _json_table(rows, path, seen)
                    rows = []
            if not chunk:
                break
    if rows or not number:
        yield _json_table(rows, path, seen)


def _json_table(rows: list[dict], path: str, seen: set[str]) -> pa.Table:
    if "uri" not in seen:
        raise _no_uri(path, sorted(seen))

    def column(name: str) -> pa.Array:
        values = [row.get(name) for row in rows]
        return pa.array([None if v is None else (v if isinstance(v, str) else _json_text(v)) for v in values],
                        pa.string())

    sizes = pa.array([int(row["size"]) if row.get("size") not in (None, "") else 0 for row in rows], pa.int64())
    return pa.table({"uri": column("uri"), "group": column("group"), "label": column("label"), "size": sizes})


def _json_text(value) -> str:
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value)


def _sizes(raw) -> pa.Array:
    column = raw.column("size")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.fill_null(pc.cast(column, pa.int64()), 0)


def _normalize(raw, base: str, path: str, first_row: int, file_number: int) -> pa.RecordBatch:
    """One raw manifest batch as INPUT_SCHEMA: checked uris, resolved paths, default groups."""
    names = raw.schema.names
    n = raw.num_rows

    def text(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(n, pa.string())
        column = raw.column(name)
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())

    uri = text("uri")
    empty = pc.fill_null(pc.equal(pc.utf8_length(uri), 0), True)
    if n and pc.any(empty).as_py():
        bad = pc.index(empty, True).as_py()
        raise UsageError(f"manifest {path!r} row {first_row + bad + 1} has an empty 'uri'")
    relative = pc.invert(pc.match_substring_regex(uri, ABSOLUTE_URI_REGEX))
    if n and pc.any(relative).as_py():
        joined = pc.binary_join_element_wise(pa.scalar(base.rstrip("/") + "/"), uri, "")
        uri = pc.if_else(relative, joined, uri)
    group = text("group")
    group = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(group), 0), True), uri, group)
    label = text("label")
    label = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(label), 0), True), pa.scalar(None, pa.string()), label)
    return pa.record_batch(
        [pc.cast(group, pa.binary()), pc.cast(uri, pa.binary()), pc.cast(label, pa.binary()),
         _sizes(raw) if "size" in names else pa.nulls(n, pa.int64()).fill_null(0),
         pa.nulls(n, pa.int32()).fill_null(file_number)],
        schema=INPUT_SCHEMA,
    )
