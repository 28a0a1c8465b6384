"""Turn what the user points at into a sorted list of input records (uri, group, label).

Three kinds of input, one output type:
  * a folder tree (local or ``s3://bucket/prefix``): each file is a sample, or with
    ``group_by="dir"`` each leaf folder is one natural-view group;
  * a manifest (``.csv``, ``.jsonl``, ``.parquet``; local or s3) with a ``uri`` column and
    optional ``group`` and ``label`` columns.
Records are sorted by (group, uri) so that the shard plan, and so the output bytes, depend only
on the inputs, never on listing order.
"""
from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import Literal

from viewstream.errors import UsageError

from sharding.storage import Storage, resolve_relative

GroupBy = Literal["file", "dir"]
LabelFrom = Literal["none", "parent"]
MANIFEST_EXTS = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True, order=True)
class InputRecord:
    """One input image: where it is, the group it belongs to, its label, its listed size."""

    group_id: str
    uri: str
    label: str | None = None
    size: int = 0


def discover_inputs(
    source: str,
    storage: Storage,
    group_by: GroupBy = "file",
    label_from: LabelFrom = "none",
) -> list[InputRecord]:
    """Every input found at `source`, sorted by (group_id, uri).

    `source` is a folder, an s3:// prefix, or a manifest file. Raises UsageError when it does not
    exist, holds no files, or is a manifest without a ``uri`` column.
    """
    if group_by not in ("file", "dir"):
        raise UsageError(f"group_by {group_by!r} is not one of: file, dir")
    if label_from not in ("none", "parent"):
        raise UsageError(f"label_from {label_from!r} is not one of: none, parent")
    if source.lower().endswith(MANIFEST_EXTS):
        records = read_manifest(source, storage)
    else:
        records = list_folder(source, storage, group_by, label_from)
    if not records:
        raise UsageError(f"input {source!r} holds no files (expected images in a folder or manifest rows)")
    return sorted(records)


def list_folder(
    root: str, storage: Storage, group_by: GroupBy, label_from: LabelFrom
) -> list[InputRecord]:
    """Records for every file under a local folder or s3:// prefix.

    Group ids are paths relative to `root`: the file's path (group_by="file") or its folder's
    path (group_by="dir"; files directly in `root` are then groups of one). With
    label_from="parent" the label is the name of the folder above the sample: the image's
    folder for single images, the group folder's parent for dir groups (ImageFolder style).
    """
    if not storage.is_folder(root):
        raise UsageError(
            f"input {root!r} does not exist or is not a folder "
            f"(expected a folder, a manifest {'/'.join(MANIFEST_EXTS)} or s3://bucket/prefix)"
        )
    try:
        entries = storage.list_files(root)
    except Exception as err:  # S3: no such bucket, no credentials, unreachable endpoint
        raise UsageError(f"cannot list input {root!r}: {err}") from None
    records = []
    for entry in entries:
        folder = posixpath.dirname(entry.relpath)
        if group_by == "dir" and folder:
            group_id, sample_parent = folder, posixpath.dirname(folder)
        else:
            group_id, sample_parent = entry.relpath, folder
        label = (posixpath.basename(sample_parent) or None) if label_from == "parent" else None
        records.append(InputRecord(group_id, entry.uri, label, entry.size))
    return records


def read_manifest(path: str, storage: Storage) -> list[InputRecord]:
    """Records from a CSV / JSONL / Parquet manifest with columns uri [, group, label].

    Relative local uris are resolved against the manifest's folder. A row without a group is a
    group of one (its uri). Sizes are not listed in manifests; the plan then counts samples.
    """
    if not storage.exists(path):
        raise UsageError(f"manifest {path!r} does not exist")
    try:
        rows = _manifest_rows(path, storage.read_bytes(path))
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"manifest {path!r} cannot be parsed: {err}") from None
    records = []
    for number, row in enumerate(rows, start=1):
        uri = row.get("uri")
        if not isinstance(uri, str) or not uri:
            raise UsageError(f"manifest {path!r} row {number} has an empty 'uri'")
        uri = resolve_relative(path, uri)
        group = row.get("group")
        label = row.get("label")
        records.append(
            InputRecord(
                group_id=str(group) if group not in (None, "") else uri,
                uri=uri,
                label=str(label) if label not in (None, "") else None,
            )
        )
    return records


def _manifest_rows(path: str, data: bytes) -> list[dict]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        columns = table.column_names
        rows = table.to_pylist()
    elif lower.endswith(".jsonl"):
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        if not all(isinstance(r, dict) for r in rows):
            raise UsageError(f"manifest {path!r} must hold one JSON object per line")
        columns = sorted({k for r in rows for k in r})
    else:
        import csv

        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = list(reader)
        columns = reader.fieldnames or []
    if "uri" not in columns:
        raise UsageError(
            f"manifest {path!r} has no 'uri' column (found: {', '.join(map(str, columns)) or 'none'}; "
            "expected uri and optional group, label)"
        )
    return rows
