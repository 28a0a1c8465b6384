"""Manifest files (CSV, JSONL, Parquet; local or remote) as record batches of INPUT_SCHEMA.

A manifest names its inputs in a uri column (``uri``, or any column: img2dataset's lists call it
``url``) with optional group, label and size columns, read in record batches, never whole.
Columns named in `Columns.keep` travel with each row as a small JSON object (the ``meta`` of the
row's view in its sample's ``{key}.json``). A row whose uri is a tar (``.tar``, ``.tar.gz``,
``.tgz``) is a WebDataset shard: the build streams it (`sharding.containers`).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from groundfloor.errors import UsageError
from groundfloor.storage import Storage
from groundfloor.storage.uri import ABSOLUTE_URI_REGEX, parent_folder
from sharding.records import INPUT_SCHEMA

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class Columns:
    """Which manifest column holds what. `group` and `label` are optional unless `required`
    names them (``--group-by column:NAME`` / ``--label-from column:NAME``)."""

    uri: str = "uri"
    group: str = "group"
    label: str = "label"
    keep: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    @property
    def wanted(self) -> list[str]:
        names = [self.uri, self.group, self.label, "size", *self.keep]
        return list(dict.fromkeys(names))

    def check(self, path: str, found: list[str]) -> None:
        """UsageError naming the first missing column (and the columns there are)."""
        hints = {self.uri: "; the column of inputs is named with --uri-column NAME",
                 **{n: "; named by --keep-columns" for n in self.keep}}
        for name in [self.uri, *self.required, *self.keep]:
            if name not in found:
                raise UsageError(
                    f"manifest {path!r} has no {name!r} column (found: {', '.join(map(str, found)) or 'none'}"
                    f"{hints.get(name, '')}; expected {self.uri} and optional {self.group}, {self.label}, size)")


def read_manifest_batches(path: str, storage: Storage, file_number: int = 0,
                          columns: Columns | None = None) -> Iterator[pa.RecordBatch]:
    """Records of a CSV / JSONL / Parquet manifest, in batches of INPUT_SCHEMA.

    Relative local uris are resolved against the manifest's folder. A row without a group is a
    group of one (its uri). Without a size column sizes are 0: the plan then counts samples.
    """
    columns = columns or Columns()
    base = parent_folder(path)
    row = 0
    try:
        for raw in _raw_batches(path, storage, columns):
            batch = _normalize(raw, base, path, row, file_number, columns)
            row += batch.num_rows
            yield batch
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"manifest {path!r} does not exist") from None
    except Exception as err:
        raise UsageError(f"manifest {path!r} cannot be parsed: {err}") from None


def _raw_batches(path: str, storage: Storage, columns: Columns) -> Iterator[pa.RecordBatch | pa.Table]:
    lower = path.lower()
    if lower.endswith(".parquet"):
        yield from parquet_batches(path, storage, columns.wanted, columns)
    elif lower.endswith(".jsonl"):
        yield from _jsonl_batches(path, storage, columns)
    else:
        yield from _csv_batches(path, storage, columns)


def parquet_batches(uri: str, storage: Storage, wanted: list[str], columns: Columns | None = None):
    """Batches of the `wanted` columns present in a Parquet file (a local file read in place, an
    object through ranged reads); `columns`, when given, checks the required ones first."""
    import pyarrow.parquet as pq

    from sharding.containers import open_random_access

    # Buffered page reads, one thread: memory of a batch, not of a (possibly 128 MB) row group.
    parquet = pq.ParquetFile(open_random_access(uri, storage), pre_buffer=False, buffer_size=1 << 20)
    if columns is not None:
        columns.check(uri, parquet.schema_arrow.names)
    present = [c for c in wanted if c in parquet.schema_arrow.names]
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=present, use_threads=False)


def _csv_batches(path: str, storage: Storage, columns: Columns):
    import pyarrow.csv as pacsv

    with storage.open_read(path) as stream:
        head = stream.read(1 << 16)
        first_line = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
        found = next(csv.reader([first_line]), [])
        columns.check(path, found)
        wanted = [c for c in columns.wanted if c in found]
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


def _jsonl_batches(path: str, storage: Storage, columns: Columns):
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
                    yield _json_table(rows, path, seen, columns)
                    rows = []
            if not chunk:
                break
    if rows or not number:
        yield _json_table(rows, path, seen, columns)


def _json_table(rows: list[dict], path: str, seen: set[str], columns: Columns) -> pa.Table:
    columns.check(path, sorted(seen))

    def column(name: str) -> pa.Array:
        values = [row.get(name) for row in rows]
        return pa.array([None if v is None else (v if isinstance(v, str) else _json_text(v)) for v in values],
                        pa.string())

    sizes = pa.array([int(row["size"]) if row.get("size") not in (None, "") else 0 for row in rows], pa.int64())
    names = [c for c in columns.wanted if c != "size"]
    return pa.table({**{name: column(name) for name in names}, "size": sizes})


def _json_text(value) -> str:
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value)


def _sizes(raw) -> pa.Array:
    column = raw.column("size")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.fill_null(pc.cast(column, pa.int64()), 0)


def meta_json(raw, names: tuple[str, ...]) -> pa.Array:
    """Per row, the kept columns `names` as one JSON object (binary); null when none are kept."""
    n = raw.num_rows
    if not names:
        return pa.nulls(n, pa.binary())
    values = [raw.column(name).to_pylist() for name in names]
    return pa.array([json.dumps(dict(zip(names, row)), sort_keys=True, default=_plain).encode("utf-8")
                     for row in zip(*values)], pa.binary())


def _plain(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _normalize(raw, base: str, path: str, first_row: int, file_number: int, columns: Columns) -> pa.RecordBatch:
    """One raw manifest batch as INPUT_SCHEMA: checked uris, resolved paths, default groups."""
    names = raw.schema.names
    n = raw.num_rows

    def text(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(n, pa.string())
        column = raw.column(name)
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())

    uri = text(columns.uri)
    empty = pc.fill_null(pc.equal(pc.utf8_length(uri), 0), True)
    if n and pc.any(empty).as_py():
        bad = pc.index(empty, True).as_py()
        raise UsageError(f"manifest {path!r} row {first_row + bad + 1} has an empty {columns.uri!r}")
    relative = pc.invert(pc.match_substring_regex(uri, ABSOLUTE_URI_REGEX))
    if n and pc.any(relative).as_py():
        joined = pc.binary_join_element_wise(pa.scalar(base.rstrip("/") + "/"), uri, "")
        uri = pc.if_else(relative, joined, uri)
    group = text(columns.group)
    group = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(group), 0), True), uri, group)
    label = text(columns.label)
    label = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(label), 0), True), pa.scalar(None, pa.string()), label)
    return pa.record_batch(
        [pc.cast(group, pa.binary()), pc.cast(uri, pa.binary()), pc.cast(label, pa.binary()),
         _sizes(raw) if "size" in names else pa.nulls(n, pa.int64()).fill_null(0),
         pa.nulls(n, pa.int32()).fill_null(file_number), meta_json(raw, columns.keep)],
        schema=INPUT_SCHEMA,
    )
