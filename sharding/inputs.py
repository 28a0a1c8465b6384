"""Turn what the user points at into a stream of input-record batches (uri, group, label, size).

Kinds of input, one output type (Arrow record batches of INPUT_SCHEMA, never the whole list):
  * a folder tree (local or ``s3://bucket/prefix``), listed as a stream: each file is a sample,
    or with ``group_by="dir"`` each leaf folder is one natural-view group;
  * a manifest (``.csv``, ``.jsonl``, ``.parquet``; local or s3) with a uri column and optional
    group, label, size and kept columns (`sharding.manifests`), read in record batches;
  * several manifests as one input: a glob (``lists/part-*.parquet``), a folder that holds only
    manifest files, or an S3 Inventory ``manifest.json`` (its Parquet data files list
    bucket/key/size: the way to enumerate 1e9 objects without a LIST of the bucket);
  * WebDataset tars: a folder or prefix holding tars (other files beside them, such as
    img2dataset's ``.parquet`` and ``_stats.json``, are skipped), one tar, a glob of tars or a
    brace pattern (``shards-{000000..000999}.tar``, matched against one listing); and Parquet
    with the image bytes inside. Each such container is one row (`sharding.containers`).
The ``file`` column numbers the manifest file a row came from (for `--dry-run`'s "groups split
across manifest files"). Order does not matter: the plan sorts, so the output bytes depend
only on the inputs, never on listing order.
"""
from __future__ import annotations

import fnmatch
import glob
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

import pyarrow as pa

from groundfloor.errors import UsageError
from groundfloor.storage import FileEntry, Storage, local_path
from groundfloor.storage.uri import s3_uri
from sharding.containers import (
    BRACE,
    IMAGE_EXTS,
    TAR_EXTS,
    embedded_bytes_column,
    field_spec,
    has_braces,
    is_tar,
    rowgroup_batches,
    tar_batches,
)
from sharding.manifests import BATCH_ROWS, Columns, parquet_batches, read_manifest_batches
from sharding.records import ENC, INPUT_SCHEMA, InputRecord, decode, encode  # noqa: F401 (re-exported)

GroupBy = Literal["file", "dir"]
LabelFrom = Literal["none", "parent"]
MANIFEST_EXTS = (".csv", ".jsonl", ".parquet")
INVENTORY_FILE = "manifest.json"  # S3 Inventory's manifest: {"files": [{"key": ...}], "fileFormat": ...}
GLOB_CHARS = "*?["
EXPECTED = (f"a folder of images or of WebDataset tars, a manifest {'/'.join(MANIFEST_EXTS)}, a glob "
            "of manifests or tars, a tar, a brace pattern such as shards-{000000..000099}.tar, an S3 "
            "Inventory manifest.json or s3://bucket/prefix")
# What --group-by / --label-from may say for each kind of input (the part before a ':').
ALLOWED = {
    "listing": ({"file", "dir"}, {"none", "parent"}, "a folder of images"),
    "inventory": ({"file", "dir"}, {"none", "parent"}, "an S3 Inventory of images"),
    "manifests": ({"file", "dir", "column", "json"}, {"none", "parent", "column", "cls", "json"}, "a manifest"),
    "tars": ({"file", "json"}, {"none", "cls", "json"}, "WebDataset tars"),
    "embedded": ({"file", "column"}, {"none", "column"}, "a Parquet of image bytes"),
}


@dataclass(frozen=True)
class InputOptions:
    """How inputs become records: grouping, labels and (manifests) column names."""

    group_by: str = "file"         # file | dir | json:FIELD | column:NAME
    label_from: str = "none"       # none | parent | cls | json:FIELD | column:NAME
    uri_column: str = "uri"
    keep_columns: tuple[str, ...] = ()
    bytes_column: str | None = None

    def columns(self) -> Columns:
        group_kind, group = field_spec(self.group_by)
        label_kind, label = field_spec(self.label_from)
        required = tuple(n for k, n in ((group_kind, group), (label_kind, label)) if k == "column")
        return Columns(uri=self.uri_column, group=group if group_kind == "column" else "group",
                       label=label if label_kind == "column" else "label", keep=tuple(self.keep_columns),
                       required=required)


@dataclass(frozen=True)
class InputSource:
    """What `source` resolved to: a folder listing, manifest files, inventory data files,
    WebDataset tars (a listing, a brace pattern or files) or embedded-bytes Parquet files."""

    kind: Literal["listing", "manifests", "inventory", "tars", "embedded"]
    root: str
    files: tuple[str, ...] = field(default=())


def resolve_source(source: str, storage: Storage, bytes_column: str | None = None) -> InputSource:
    """Decide what `source` is (see module docstring); UsageError when it holds nothing."""
    local = local_path(source)
    exists = local is not None and os.path.exists(local)
    if has_braces(source) and not exists:
        if not is_tar(source):
            raise UsageError(f"input {source!r} is a brace pattern of files that are not WebDataset tars "
                             f"({'/'.join(TAR_EXTS)}); a pattern such as shards-{{000000..000099}}.tar is read")
        return InputSource("tars", source)
    if any(c in source for c in GLOB_CHARS) and not exists:
        files = _glob(source, storage)
        if not files:
            raise UsageError(f"input {source!r} matches no files")
        tars = [f for f in files if is_tar(f)]
        if tars and len(tars) == len(files):
            return InputSource("tars", source, tuple(files))
        bad = [f for f in files if not f.lower().endswith(MANIFEST_EXTS)]
        if bad:
            what = "a WebDataset tar among manifests" if tars else "not a manifest nor a WebDataset tar"
            raise UsageError(f"input {source!r} matches {bad[0]!r}, which is {what} (a glob names only "
                             f"manifests {'/'.join(MANIFEST_EXTS)} or only tars {'/'.join(TAR_EXTS)})")
        return _manifests(source, tuple(files), storage, bytes_column)
    if posixpath.basename(source) == INVENTORY_FILE:
        return InputSource("inventory", source, tuple(_inventory_files(source, storage)))
    if is_tar(source):
        if not (os.path.isfile(local) if local is not None else storage.exists(source)):
            raise UsageError(f"WebDataset tar {source!r} does not exist")
        return InputSource("tars", source, (source,))
    if source.lower().endswith(MANIFEST_EXTS):
        if local is not None and not os.path.isfile(local):
            raise UsageError(f"manifest {source!r} does not exist")
        return _manifests(source, (source,), storage, bytes_column)
    if not storage.is_folder(source):
        raise UsageError(f"input {source!r} does not exist or is not a folder (expected {EXPECTED})")
    # Peek at the listing: tars make it WebDataset, an image a folder of images, and a folder
    # of manifest files only is several manifests.
    manifests: list[str] = []
    others = False
    try:
        for entry in storage.iter_files(source):
            name = entry.relpath.lower()
            if is_tar(name):
                return InputSource("tars", source)
            if name.rsplit(".", 1)[-1] in IMAGE_EXTS:
                return InputSource("listing", source)
            if name.endswith(MANIFEST_EXTS):
                manifests.append(entry.uri)
            else:
                others = True
    except Exception as err:  # S3: no such bucket, no credentials, unreachable endpoint
        raise UsageError(f"cannot list input {source!r}: {err}") from None
    if manifests and not others:
        return _manifests(source, tuple(sorted(manifests)), storage, bytes_column)
    return InputSource("listing", source)


def _manifests(source: str, files: tuple[str, ...], storage: Storage, bytes_column: str | None) -> InputSource:
    """Manifests of uris, or (a Parquet with image bytes inside) embedded images."""
    if files[0].lower().endswith(".parquet") and embedded_bytes_column(files[0], storage, bytes_column):
        return InputSource("embedded", source, files)
    if bytes_column is not None:
        raise UsageError(f"--bytes-column {bytes_column!r} reads Parquet files; input {source!r} is "
                         f"{files[0]!r}")
    return InputSource("manifests", source, files)


def check_options(source: str, kind: str, options: InputOptions) -> None:
    """UsageError when a grouping, label or column option does not apply to this kind of input."""
    groups, labels, what = ALLOWED[kind]
    for flag, value, allowed in (("--group-by", options.group_by, groups), ("--label-from", options.label_from, labels)):
        if field_spec(value)[0] not in allowed:
            shown = ", ".join(sorted(a + (":NAME" if a in ("json", "column") else "") for a in allowed))
            raise UsageError(f"{flag} {value} does not apply to input {source!r}, which is {what} "
                             f"(use one of: {shown})")
    if options.keep_columns and kind not in ("manifests", "embedded"):
        raise UsageError(f"--keep-columns names manifest columns; input {source!r} is {what}"
                         + (" (a tar's text members are kept in meta already)" if kind == "tars" else ""))


def iter_input_batches(
    source: str, storage: Storage, group_by: str = "file", label_from: str = "none",
    resolved: InputSource | None = None, options: InputOptions | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every input found at `source` as record batches of INPUT_SCHEMA, in no particular order.

    Raises UsageError when `source` does not exist, is a manifest without its uri column, or an
    option does not apply to it (an input that holds nothing is reported by the caller, which
    counts rows).
    """
    options = options or InputOptions(group_by=group_by, label_from=label_from)
    for flag, value, kinds in (("group_by", options.group_by, ALLOWED["manifests"][0] | {"json"}),
                               ("label_from", options.label_from, ALLOWED["manifests"][1])):
        kind, name = field_spec(value)
        if kind not in kinds or (kind in ("json", "column")) != bool(name):
            raise UsageError(f"{flag} {value!r} is not one of: {', '.join(sorted(kinds - {'json', 'column'}))}, "
                             "json:FIELD, column:NAME")
    resolved = resolved or resolve_source(source, storage, options.bytes_column)
    check_options(source, resolved.kind, options)
    if resolved.kind == "listing":
        yield from _entry_batches(_images(resolved.root, storage), options.group_by, options.label_from)
    elif resolved.kind == "inventory":
        for number, uri in enumerate(resolved.files):
            yield from _entry_batches(_inventory_entries(uri, storage), options.group_by, options.label_from, number)
    elif resolved.kind == "tars":
        yield from tar_batches(_tar_entries(resolved, storage))
    elif resolved.kind == "embedded":
        for number, path in enumerate(resolved.files):
            yield from rowgroup_batches(path, storage, number)
    else:
        columns = options.columns()
        for number, path in enumerate(resolved.files):
            yield from read_manifest_batches(path, storage, number, columns)


def discover_inputs(
    source: str, storage: Storage, group_by: str = "file", label_from: str = "none"
) -> list[InputRecord]:
    """Every input at `source` as a sorted list: for small inputs and tests only (the build
    itself streams `iter_input_batches` into the plan)."""
    records = []
    for batch in iter_input_batches(source, storage, group_by, label_from):
        for row in batch.to_pylist():
            records.append(InputRecord(decode(row["group_id"]), decode(row["uri"]), decode(row["label"]),
                                       row["size"], decode(row["meta"])))
    if not records:
        raise UsageError(f"input {source!r} holds no files (expected images in a folder or manifest rows)")
    return sorted(records)


# ---- WebDataset tars ---------------------------------------------------------------------------
def _tar_entries(resolved: InputSource, storage: Storage) -> Iterator[FileEntry]:
    if resolved.files:
        for uri in resolved.files:
            local = local_path(uri)
            yield FileEntry(uri, posixpath.basename(uri), os.path.getsize(local) if local else storage.size(uri))
    elif has_braces(resolved.root):
        yield from _brace_entries(resolved.root, storage)
    else:
        yield from (e for e in _listing(resolved.root, storage) if is_tar(e.relpath))


def _brace_entries(pattern: str, storage: Storage) -> Iterator[FileEntry]:
    """The tars a brace pattern names, found in one listing of the folder above the first brace
    (no request per name, no list of names), each range checked numerically; UsageError when
    not all of them exist."""
    regex, ranges, expected = _brace_regex(pattern)
    root = pattern[: pattern.index("{")].rsplit("/", 1)[0] or "/"
    found = 0
    for entry in _listing(root, storage):
        match = regex.fullmatch(entry.uri)
        if match and all(lo <= int(match.group(i + 1)) <= hi for i, (lo, hi) in enumerate(ranges)):
            found += 1
            yield entry
    if found != expected:
        raise UsageError(f"input {pattern!r} names {expected} tars but {found} of them exist")


def _brace_regex(pattern: str) -> tuple[re.Pattern, list[tuple[int, int]], int]:
    """A regex for a brace pattern: ``{a..b}`` (numbers, same width when zero-padded) and
    ``{x,y}`` alternatives; the numeric ranges in order; how many names it stands for."""
    parts, ranges, expected, at = [], [], 1, 0
    for match in BRACE.finditer(pattern):
        parts.append(re.escape(pattern[at: match.start()]))
        body = match.group()[1:-1]
        if ".." in body:
            lo, hi = body.split("..", 1)
            if not (lo.isdigit() and hi.isdigit()):
                raise UsageError(f"brace range {match.group()!r} of {pattern!r} is not numeric")
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else None
            parts.append(f"(\\d{{{width}}})" if width else "(\\d+)")
            ranges.append((int(lo), int(hi)))
            expected *= max(0, int(hi) - int(lo) + 1)
        else:
            options = body.split(",")
            parts.append("(?:" + "|".join(re.escape(o) for o in options) + ")")
            expected *= len(set(options))
        at = match.end()
    parts.append(re.escape(pattern[at:]))
    return re.compile("".join(parts)), ranges, expected


# ---- listings ------------------------------------------------------------------------------
def _images(root: str, storage: Storage) -> Iterator[FileEntry]:
    """A folder of images, refusing a tar among them (it would be quarantined as not an image)."""
    for entry in _listing(root, storage):
        if is_tar(entry.relpath):
            raise UsageError(f"input {root!r} holds WebDataset tars among images ({entry.relpath!r}): "
                             "shard the tars on their own (a folder, glob or brace pattern of tars only "
                             "is read as WebDataset) or move them out")
        yield entry


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
         pa.array(sizes, pa.int64()), pa.array([file_number] * len(uris), pa.int32()),
         pa.nulls(len(uris), pa.binary())],
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
    for batch in parquet_batches(uri, storage, ["bucket", "key", "size"]):
        for bucket, key, size in zip(*(batch.column(c).to_pylist() for c in ("bucket", "key", "size"))):
            if not key or key.endswith("/"):  # folder placeholder objects
                continue
            yield FileEntry(s3_uri(bucket, key), key, int(size or 0))
