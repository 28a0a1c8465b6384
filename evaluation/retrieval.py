"""Retrieval of natural views: does a photo find another photo of the same group?

For product photos (several per listing) this is the number users feel: query with one photo,
and one of the top k results should be another photo of the same listing. Every row whose group
has at least two rows is a query; the gallery is every other row (the query itself is left out).
recall@k = share of queries with at least one same-group row among their k nearest neighbours.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from evaluation.search import IndexConfig, SearchIndex
from groundfloor.errors import UsageError

DEFAULT_RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalResult:
    recall: dict[int, float] = field(default_factory=dict)   # k -> recall@k in [0, 1]
    num_queries: int = 0
    num_gallery: int = 0
    index_kind: str = "flat"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["recall"] = {f"recall@{k}": v for k, v in self.recall.items()}
        return out


def group_recall_at_k(
    vectors: np.ndarray,
    groups: Sequence[str],
    ks: Iterable[int] = DEFAULT_RECALL_KS,
    *,
    config: IndexConfig = IndexConfig(),
    index: SearchIndex | None = None,
) -> RetrievalResult:
    """recall@k of finding another row of the same group, for each k (cosine similarity).

    `index` may be a prebuilt SearchIndex over exactly these rows (same order); otherwise one is
    built with `config` (exact for small sets).
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UsageError(f"recall ks must be positive integers, got {ks}")
    if len(groups) != len(vectors):
        raise UsageError(f"{len(vectors)} vectors but {len(groups)} group ids")
    _, codes, counts = np.unique(np.asarray(groups, dtype=object), return_inverse=True, return_counts=True)
    queries = np.flatnonzero(counts[codes] >= 2)
    if len(queries) == 0:
        raise UsageError("no natural-view groups: every group has a single image, so retrieval recall is undefined")
    index = index or SearchIndex.build(vectors, groups=list(groups), config=config)
    # One extra neighbour: the query finds itself (or an identical copy) and that one is dropped.
    res = index.search(vectors[queries], k=ks[-1] + 1)
    hits = np.zeros((len(queries), ks[-1]), dtype=bool)
    for row, (q, found) in enumerate(zip(queries, res.indices)):
        others = [i for i in found if i != q and i >= 0][: ks[-1]]
        hits[row, : len(others)] = codes[others] == codes[q]
    recall = {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
    return RetrievalResult(recall, int(len(queries)), int(len(vectors)), index.kind)
