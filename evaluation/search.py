"""Nearest-neighbour search over embeddings with FAISS (faiss-cpu).

Vectors are l2-normalised and searched by inner product, i.e. cosine similarity, the same
measure kNN and training use. Which index is a registry entry:

- ``flat``: exact (``IndexFlatIP``); the right choice up to ~100k vectors, and the reference;
- ``hnsw``: ``IndexHNSWFlat`` graph, no training, high recall at millisecond latency (default
  for large collections; M=24, efSearch=256 gives recall@10 ~0.99 on 100k random 32-d vectors);
- ``ivf``: ``IndexIVFFlat`` with ~4 sqrt(N) lists, smaller and faster to build for very large,
  clustered collections (real embeddings), recall set by ``ivf_nprobe``.

``auto`` picks ``flat`` up to ``exact_max`` vectors and ``hnsw`` above. A saved index is a
folder: ``index.faiss``, ``rows.parquet`` (key and group of each row, in index order) and
``index.json`` (kind, dimension, count, config).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from groundfloor.parquet_files import read_parquet
from groundfloor.errors import UsageError

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.parquet"
INFO_FILE = "index.json"


class IndexConfig(BaseModel):
    """Which FAISS index to build and its knobs (defaults favour recall)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    exact_max: int = Field(100_000, ge=0, description="auto: exact search up to this many vectors")
    hnsw_m: int = Field(24, ge=4)
    hnsw_ef_construction: int = Field(32, ge=8)
    hnsw_ef_search: int = Field(256, ge=8)
    ivf_nlist: Optional[int] = Field(None, ge=1, description="None: 4 * sqrt(N)")
    ivf_nprobe: int = Field(32, ge=1)

    def resolve_kind(self, num_vectors: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "flat" if num_vectors <= self.exact_max else "hnsw"


def _build_flat(dim: int, vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


def _build_hnsw(dim: int, vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    index.hnsw.efSearch = cfg.hnsw_ef_search
    return index


def _build_ivf(dim: int, vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(len(vectors))))
    nlist = min(nlist, len(vectors))  # k-means needs at least one point per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = min(cfg.ivf_nprobe, nlist)
    return index


INDEX_BUILDERS: dict[str, Callable[[int, np.ndarray, IndexConfig], faiss.Index]] = {
    "flat": _build_flat,
    "hnsw": _build_hnsw,
    "ivf": _build_ivf,
}


def normalized(vectors: np.ndarray) -> np.ndarray:
    """A contiguous float32 copy of `vectors` with unit rows (what the index stores and queries)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise UsageError(f"expected a 2-d array of vectors, got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


@dataclass
class SearchResult:
    """Top-k of each query: similarity scores (cosine) and row numbers, best first; -1 = no row."""

    scores: np.ndarray    # float32 [Q, k]
    indices: np.ndarray   # int64 [Q, k]

    def named(self, keys: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per query, its (key, score) pairs, best first (rows -1 left out)."""
        return [[(keys[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(self.scores, self.indices)]


def rows_of(keys: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """The row of each of `wanted` among `keys`; unknown keys are a UsageError (query by key)."""
    row = {k: i for i, k in enumerate(keys)}
    missing = [k for k in wanted if k not in row]
    if missing:
        raise UsageError(f"keys not in the index: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [row[k] for k in wanted]


@dataclass
class SearchIndex:
    """A FAISS index plus the key and group of every row, so results name images, not numbers."""

    index: faiss.Index
    keys: list[str]
    groups: list[str]
    kind: str
    config: IndexConfig

    @classmethod
    def build(cls, vectors: np.ndarray, keys: Optional[Sequence[str]] = None,
              groups: Optional[Sequence[str]] = None, config: IndexConfig = IndexConfig()) -> "SearchIndex":
        """Index `vectors` (normalised here) with the kind `config` resolves to for their number."""
        x = normalized(vectors)
        if len(x) == 0:
            raise UsageError("cannot build a search index from zero vectors")
        keys = list(keys) if keys is not None else [str(i) for i in range(len(x))]
        groups = list(groups) if groups is not None else list(keys)
        if not len(keys) == len(groups) == len(x):
            raise UsageError(f"{len(x)} vectors but {len(keys)} keys and {len(groups)} groups")
        kind = config.resolve_kind(len(x))
        index = INDEX_BUILDERS[kind](x.shape[1], x, config)
        index.add(x)
        return cls(index, keys, groups, kind, config)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> SearchResult:
        """The k most similar rows of every query vector (normalised here)."""
        q = normalized(queries)
        if q.shape[1] != self.dim:
            raise UsageError(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        scores, indices = self.index.search(q, min(k, len(self)))
        return SearchResult(scores, indices.astype(np.int64))

    def search_keys(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """Like `search`, as (key, score) pairs per query."""
        return self.search(queries, k).named(self.keys)

    def vectors_of(self, keys: Sequence[str]) -> np.ndarray:
        """The stored vectors of `keys` (to query by key); unknown keys are a UsageError."""
        return np.stack([self.index.reconstruct(r) for r in rows_of(self.keys, keys)])

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        pq.write_table(pa.table({"key": pa.array(self.keys, pa.string()),
                                 "group": pa.array(self.groups, pa.string())}), directory / ROWS_FILE)
        info = {"kind": self.kind, "dim": self.dim, "count": len(self), "config": self.config.model_dump()}
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SearchIndex":
        directory = Path(directory)
        if not (directory / INDEX_FILE).is_file() or not (directory / INFO_FILE).is_file():
            raise UsageError(f"{str(directory)!r} is not a search index folder (expected {INDEX_FILE} and {INFO_FILE})")
        info = json.loads((directory / INFO_FILE).read_text())
        index = faiss.read_index(str(directory / INDEX_FILE))
        config = IndexConfig(**info["config"])
        if info["kind"] == "hnsw":
            index.hnsw.efSearch = config.hnsw_ef_search  # search-time knobs are not stored by FAISS
        rows = read_parquet(directory / ROWS_FILE)
        return cls(index, rows.column("key").to_pylist(), rows.column("group").to_pylist(), info["kind"], config)
