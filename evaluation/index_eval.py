"""`search eval`: how much a compressed index loses against exact search, and what it costs.

Queries are the rows `search build --hold-out N` kept out of the index (or any embeddings
file): a query never finds itself. Exact neighbours come from one streaming pass over the
index's source embeddings (the same rows in the same id order, the held-out ones skipped),
keeping a running top k per query: memory is Q x k plus one batch, so ground truth for a
billion-row index needs no flat index.

Two recalls are reported, FAISS's definitions:
- ``recall@k`` ("1-recall@k"): share of queries whose exact nearest neighbour is among the
  index's top k. This is the figure the issue's ">= 0.9" and nprobe tuning use.
- ``overlap@k`` ("k-recall@k"): mean share of the exact top k found in the index's top k
  (stricter: PQ codes reorder close neighbours).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.index_build import QUERIES_FILE, iter_rows, log2_range, nlist_of
from evaluation.search import normalized
from groundfloor.parquet_files import read_parquet
from groundfloor.errors import UsageError


@dataclass
class RecallResult:
    k: int
    queries: int
    recall: float            # 1-recall@k
    overlap: float           # k-recall@k
    query_ms: float          # per query, batch search, this machine
    params: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def exact_top_k(source: str, queries: np.ndarray, k: int, held_out: Sequence[int] = (), *,
                batch: int = 65536, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the exact top k of each query over the rows of `source` (cosine), ids
    counted over the rows that are not `held_out`, i.e. the index's ids."""
    q = normalized(queries)
    held = np.asarray(sorted(held_out), dtype=np.int64)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    next_id = 0
    for start, chunk in tqdm(iter_rows(source, 0, np.iinfo(np.int64).max, batch), desc="exact", unit="chunk",
                             disable=not progress, leave=False):
        keep = np.ones(len(chunk), bool)
        keep[held[(held >= start) & (held < start + len(chunk))] - start] = False
        x = normalized(chunk.vectors[keep])
        ids = next_id + np.arange(len(x))
        next_id += len(x)
        scores = q @ x.T
        cat_s = np.concatenate([best_s, scores], 1)
        cat_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], 1)
        top = np.argpartition(-cat_s, min(k, cat_s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def recall_against(found: np.ndarray, exact: np.ndarray, k: int) -> tuple[float, float]:
    """(1-recall@k, k-recall@k) of index results `found` [Q, >=k] against exact ids [Q, >=k]."""
    f, e = found[:, :k], exact[:, :k]
    first = np.mean([e[i, 0] in f[i] for i in range(len(f))])
    overlap = np.mean([len(set(f[i]) & set(e[i][e[i] >= 0])) / max(1, (e[i] >= 0).sum()) for i in range(len(f))])
    return float(first), float(overlap)


def load_queries(index_dir: str | Path, queries: Optional[str] = None, limit: Optional[int] = None) -> np.ndarray:
    """The held-out query vectors of an index folder, or those of embeddings `queries`."""
    if queries:
        from evaluation.embeddings import read_embeddings

        vectors = read_embeddings(queries).vectors
    else:
        path = Path(index_dir) / QUERIES_FILE
        if not path.is_file():
            raise UsageError(f"index {str(index_dir)!r} has no held-out queries: rebuild it with --hold-out N "
                             "or pass --queries EMBEDDINGS")
        col = read_parquet(path, columns=["vector"]).column("vector").combine_chunks()
        vectors = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
    return vectors[:limit] if limit else vectors


def evaluate(index, queries: np.ndarray, exact_ids: np.ndarray, k: int, params: Optional[dict] = None) -> RecallResult:
    """recall@k of `index` (a ShardedIndex) with `params` set, and its per-query time."""
    if params:
        index.set_params(params)
    start = time.perf_counter()
    found = index.search(queries, k).indices
    ms = 1000 * (time.perf_counter() - start) / max(1, len(queries))
    recall, overlap = recall_against(found, exact_ids, k)
    return RecallResult(k, len(queries), recall, overlap, ms, dict(params or {}))


def tune_nprobe(index, queries: np.ndarray, exact_ids: np.ndarray, k: int, target: float,
                extra: Optional[dict] = None) -> tuple[Optional[RecallResult], list[RecallResult]]:
    """The smallest power-of-two nprobe reaching recall@k >= target (None if none does), and
    every point tried."""
    nlist = nlist_of(index.shards[0])
    if nlist is None:
        raise UsageError(f"index {index.info['factory']!r} has no inverted lists: nothing to tune (try --param efSearch=N)")
    tried = []
    for nprobe in log2_range(nlist):
        result = evaluate(index, queries, exact_ids, k, (extra or {}) | {"nprobe": nprobe})
        tried.append(result)
        if result.recall >= target:
            return result, tried
    return None, tried


@dataclass
class IndexEvaluation:
    """What `search eval` reports: the chosen (or only) setting and every setting tried."""

    info: dict
    count: int
    dim: int
    bytes_per_vector: float
    index_bytes: int
    num_queries: int
    chosen: Optional[RecallResult]
    tried: list[RecallResult]


def held_out_rows(index_dir: str | Path) -> list[int]:
    """Row ids `search build --hold-out` kept out of the index (skipped by the exact pass)."""
    path = Path(index_dir) / QUERIES_FILE
    return read_parquet(path, columns=["row"]).column("row").to_pylist() if path.is_file() else []


def evaluate_index_dir(index_dir: str, *, queries: Optional[str] = None, max_queries: Optional[int] = None,
                       k: int = 10, tune: bool = False, target: float = 0.9, params: Optional[dict] = None,
                       gpu: bool = False) -> IndexEvaluation:
    """recall@k of a compressed index folder against exact search over its source embeddings
    (held-out rows, or `queries`); with `tune`, the smallest nprobe reaching `target`."""
    import json

    from evaluation.sharded_index import ShardedIndex

    info_path = Path(index_dir) / "index.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "shards" not in info:
        raise UsageError(f"{index_dir!r} is not a compressed index; build one with "
                         "`search build --index FACTORY --hold-out N`")
    index = ShardedIndex.load(index_dir, gpu=gpu, with_rows=False)
    vectors = load_queries(index_dir, queries, max_queries)
    held = [] if queries else held_out_rows(index_dir)
    _, exact_ids = exact_top_k(info["source"]["embeddings"], vectors, k, held)
    if tune:
        chosen, tried = tune_nprobe(index, vectors, exact_ids, k, target, params)
    else:
        chosen = evaluate(index, vectors, exact_ids, k, params)
        tried = [chosen]
    return IndexEvaluation(info, len(index), index.dim, index.bytes_per_vector, index.index_bytes,
                           len(vectors), chosen, tried)
