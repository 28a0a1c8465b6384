"""Embeddings as Parquet: one row per image (key, group, label, vector), written as it streams.

The vector column is ``fixed_size_list<float32>[D]`` so readers (pyarrow, DuckDB, pandas,
FAISS loaders) get a dense [N, D] matrix without parsing. The file's schema metadata carries
``viewstream`` JSON (dimension plus whatever produced it: checkpoint, method, backbone), so a
file says where its vectors came from. Writing streams row groups: memory stays one batch.

An embeddings *dataset* is a folder (or s3:// prefix) of such files, one per shard, as
`embed --ray` writes them (`write_embedding_table`: atomic, through `groundfloor.storage`); they
also carry ``shard`` and ``dataset`` columns. Every reader here takes a file or a dataset.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
import posixpath
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from evaluation.features import FeatureBatch
from groundfloor.errors import UsageError

METADATA_KEY = b"viewstream"
COLUMNS = ("key", "group", "label", "vector")


PART_COLUMNS = ("shard", "dataset")  # per-shard files of an embeddings dataset add these
PARQUET_SUFFIX = ".parquet"
# A reader holds at least one row group: 8192 rows keeps streaming readers (index building,
# dedup) at a few MB even for 2048-d vectors (64 MiB), whatever the shard size.
ROW_GROUP_ROWS = 8192


def embeddings_schema(dim: int, metadata: Optional[dict[str, Any]] = None,
                      part_columns: bool = False) -> pa.Schema:
    """The Parquet schema of an embeddings file with `dim`-dimensional vectors."""
    meta = {"dim": dim, "format": 1} | (metadata or {})
    fields = [("key", pa.string()), ("group", pa.string()), ("label", pa.int64()),
              ("vector", pa.list_(pa.float32(), dim))]
    if part_columns:
        fields += [(name, pa.string()) for name in PART_COLUMNS]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def embedding_table(vectors: np.ndarray, keys: Sequence[str], groups: Sequence[str],
                    labels: Optional[np.ndarray], *, metadata: dict[str, Any], shard: str,
                    dataset: str) -> pa.Table:
    """One shard's embeddings as a table of `embeddings_schema(..., part_columns=True)`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    schema = embeddings_schema(dim, metadata, part_columns=True)
    return pa.Table.from_arrays(
        [pa.array(list(keys), pa.string()), pa.array(list(groups), pa.string()),
         pa.array(labels, pa.int64()) if labels is not None else pa.nulls(n, pa.int64()),
         pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
         pa.array([shard] * n, pa.string()), pa.array([dataset] * n, pa.string())],
        schema=schema)


def write_embedding_table(uri: str, table: pa.Table, storage=None) -> None:
    """Write `table` to `uri` (local or s3://) atomically: a reader sees all of it or nothing."""
    from groundfloor.storage import Storage

    storage = storage or Storage()
    with storage.open_atomic_write(uri) as f:
        pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS)


def embedding_files(path: str | os.PathLike, storage=None) -> list[str]:
    """The Parquet files of an embeddings file or dataset (folder or s3:// prefix), sorted.

    In a folder, names starting with "." (unfinished atomic writes) or "_" (run records) are
    not embeddings. No URI scheme is tested here: `groundfloor.storage` owns that.
    """
    from groundfloor.storage import Storage

    path = str(path)
    storage = storage or Storage()
    if path.endswith(PARQUET_SUFFIX) and storage.exists(path):
        return [path]
    try:
        files = [e.uri for e in storage.list_files(path) if e.relpath.endswith(PARQUET_SUFFIX)
                 and not posixpath.basename(e.relpath).startswith((".", "_"))]
    except FileNotFoundError:
        files = []
    if not files:
        raise UsageError(f"embeddings {path!r}: no such Parquet file, or a folder holding none")
    return files


@dataclass
class Embeddings:
    """Embeddings in memory: parallel columns and a dense float32 matrix."""

    keys: list[str]
    groups: list[str]
    labels: Optional[np.ndarray]          # int64 [N], None when no row has a label
    vectors: np.ndarray                   # float32 [N, D]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


class EmbeddingWriter:
    """Streams FeatureBatches into an embeddings Parquet file (one row group per `flush_rows`).

    Rows without keys get their running row number as key; rows without a group are their own
    group (a group of one). The file is written to a temporary name and renamed on close, so a
    reader never sees half a file.
    """

    def __init__(self, path: str | os.PathLike, *, metadata: Optional[dict[str, Any]] = None,
                 flush_rows: int = 65536, part_columns: bool = False) -> None:
        self.path = Path(path)
        self.part_columns = part_columns
        self.metadata = metadata or {}
        self.flush_rows = flush_rows
        self.rows = 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer: Optional[pq.ParquetWriter] = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._dim: Optional[int] = None

    def write(self, batch: FeatureBatch, *, dataset: Optional[str] = None, shard: Optional[str] = None) -> None:
        """Append `batch`; with `part_columns`, its rows' dataset root and shard (None: unknown)."""
        feats = batch.features.detach().cpu().float().numpy()
        n, dim = feats.shape
        if self._dim is None:
            self._dim = dim
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, embeddings_schema(dim, self.metadata, self.part_columns))
        elif dim != self._dim:
            raise UsageError(f"embedding dimension changed from {self._dim} to {dim} within one file")
        keys = batch.keys if batch.keys is not None else [str(self.rows + i) for i in range(n)]
        groups = batch.group_ids if batch.group_ids is not None else keys
        labels = batch.labels.numpy().astype(np.int64) if batch.labels is not None else None
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim)
        columns = [pa.array(keys, pa.string()), pa.array(groups, pa.string()),
                   pa.array(labels, pa.int64()) if labels is not None else pa.nulls(n, pa.int64()), vectors]
        if self.part_columns:
            columns += [pa.array([shard] * n, pa.string()), pa.array([dataset] * n, pa.string())]
        record = pa.RecordBatch.from_arrays(columns, schema=self._writer.schema)
        self._pending.append(record)
        self._pending_rows += n
        self.rows += n
        if self._pending_rows >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending))
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        if self._writer is None:  # nothing written: still produce a valid, empty file
            pq.write_table(embeddings_schema(0, self.metadata, self.part_columns).empty_table(), self._tmp)
        else:
            self._flush()
            self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # leave no half-written file behind
            if self._writer is not None:
                self._writer.close()
            self._tmp.unlink(missing_ok=True)


def write_embeddings(path: str | os.PathLike, batches: Iterable[FeatureBatch | tuple[FeatureBatch, str]], *,
                     metadata: Optional[dict[str, Any]] = None, progress: bool = True,
                     total: Optional[int] = None, part_columns: bool = False) -> int:
    """Write every batch of `batches` to `path` with a progress bar; return the number of rows.

    With `part_columns`, items are (batch, dataset root) pairs and the file gets the ``shard``
    (null: a single-process run does not track it) and ``dataset`` columns.
    """
    with EmbeddingWriter(path, metadata=metadata, part_columns=part_columns) as writer:
        for item in tqdm(batches, total=total, desc="embed", unit="batch", disable=not progress):
            if part_columns:
                writer.write(item[0], dataset=item[1])
            else:
                writer.write(item)
    return writer.rows


def read_embeddings_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``viewstream`` metadata (dim, producer) of an embeddings file or dataset (its first
    file), without reading rows."""
    schema = _open(embedding_files(path)[0]).schema_arrow
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    path = str(path)
    try:
        if os.path.isfile(path):
            pf = pq.ParquetFile(path, pre_buffer=False)  # no Arrow IO pool: see groundfloor.parquet_files
        else:  # object storage: one file of an embeddings dataset is one shard's rows
            from groundfloor.storage import Storage

            pf = pq.ParquetFile(pa.BufferReader(Storage().read_bytes(path)), pre_buffer=False)
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as err:
        raise UsageError(f"cannot read embeddings file {str(path)!r}: {err}") from None
    missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise UsageError(f"{str(path)!r} is not an embeddings file: missing columns {missing}, expected {list(COLUMNS)}")
    return pf


def _to_embeddings(table: pa.Table, metadata: dict[str, Any]) -> Embeddings:
    vec = table.column("vector").combine_chunks()
    dim = vec.type.list_size
    vectors = vec.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    label_col = table.column("label")
    labels = None if label_col.null_count == len(label_col) else label_col.fill_null(-1).to_numpy()
    return Embeddings(table.column("key").to_pylist(), table.column("group").to_pylist(), labels,
                      vectors, metadata)


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """A whole embeddings file or dataset in memory (labels missing from some rows read as -1)."""
    files = embedding_files(path)
    tables = [_open(f).read(columns=list(COLUMNS), use_threads=False) for f in files]
    meta = read_embeddings_metadata(files[0])
    tables = [t for t in tables if t.num_rows] or tables[:1]
    return _to_embeddings(pa.concat_tables(tables), meta)


def count_embeddings(path: str | os.PathLike) -> int:
    """Rows of an embeddings file or dataset (from the Parquet footers, no rows read)."""
    return sum(_open(f).metadata.num_rows for f in embedding_files(path))


def iter_embeddings(path: str | os.PathLike, batch_size: int = 65536) -> Iterator[Embeddings]:
    """Stream an embeddings file or dataset in chunks of at most `batch_size` rows: memory is
    one chunk, whatever the number of rows (for indexing big collections)."""
    files = embedding_files(path)
    meta = read_embeddings_metadata(files[0])
    for f in files:
        for record in _open(f).iter_batches(batch_size=batch_size, columns=list(COLUMNS), use_threads=False):
            if record.num_rows:
                yield _to_embeddings(pa.Table.from_batches([record]), meta)
