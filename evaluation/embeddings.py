"""Embeddings as Parquet: one row per image (key, group, label, vector), written as it streams.

The vector column is ``fixed_size_list<float32>[D]`` so readers (pyarrow, DuckDB, pandas,
FAISS loaders) get a dense [N, D] matrix without parsing. The file's schema metadata carries
``viewstream`` JSON (dimension plus whatever produced it: checkpoint, method, backbone), so a
file says where its vectors came from. Writing streams row groups: memory stays one batch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from evaluation.features import FeatureBatch
from viewstream.errors import UsageError

METADATA_KEY = b"viewstream"
COLUMNS = ("key", "group", "label", "vector")


def embeddings_schema(dim: int, metadata: Optional[dict[str, Any]] = None) -> pa.Schema:
    """The Parquet schema of an embeddings file with `dim`-dimensional vectors."""
    meta = {"dim": dim, "format": 1} | (metadata or {})
    return pa.schema(
        [
            ("key", pa.string()),
            ("group", pa.string()),
            ("label", pa.int64()),
            ("vector", pa.list_(pa.float32(), dim)),
        ],
        metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()},
    )


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
                 flush_rows: int = 65536) -> None:
        self.path = Path(path)
        self.metadata = metadata or {}
        self.flush_rows = flush_rows
        self.rows = 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer: Optional[pq.ParquetWriter] = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._dim: Optional[int] = None

    def write(self, batch: FeatureBatch) -> None:
        feats = batch.features.detach().cpu().float().numpy()
        n, dim = feats.shape
        if self._dim is None:
            self._dim = dim
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, embeddings_schema(dim, self.metadata))
        elif dim != self._dim:
            raise UsageError(f"embedding dimension changed from {self._dim} to {dim} within one file")
        keys = batch.keys if batch.keys is not None else [str(self.rows + i) for i in range(n)]
        groups = batch.group_ids if batch.group_ids is not None else keys
        labels = batch.labels.numpy().astype(np.int64) if batch.labels is not None else None
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim)
        record = pa.RecordBatch.from_arrays(
            [pa.array(keys, pa.string()), pa.array(groups, pa.string()),
             pa.array(labels, pa.int64()) if labels is not None else pa.nulls(n, pa.int64()), vectors],
            schema=self._writer.schema,
        )
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
            pq.write_table(embeddings_schema(0, self.metadata).empty_table(), self._tmp)
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


def write_embeddings(path: str | os.PathLike, batches: Iterable[FeatureBatch], *,
                     metadata: Optional[dict[str, Any]] = None, progress: bool = True,
                     total: Optional[int] = None) -> int:
    """Write every batch of `batches` to `path` with a progress bar; return the number of rows."""
    with EmbeddingWriter(path, metadata=metadata) as writer:
        for batch in tqdm(batches, total=total, desc="embed", unit="batch", disable=not progress):
            writer.write(batch)
    return writer.rows


def read_embeddings_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``viewstream`` metadata (dim, producer) of an embeddings file, without reading rows."""
    schema = _open(path).schema_arrow
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
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
    """The whole embeddings file in memory (labels missing from some rows read as -1)."""
    pf = _open(path)
    return _to_embeddings(pf.read(), read_embeddings_metadata(path))


def iter_embeddings(path: str | os.PathLike, batch_size: int = 65536) -> Iterator[Embeddings]:
    """Stream an embeddings file in chunks of at most `batch_size` rows (for indexing big files)."""
    pf = _open(path)
    meta = read_embeddings_metadata(path)
    for record in pf.iter_batches(batch_size=batch_size):
        yield _to_embeddings(pa.Table.from_batches([record]), meta)
