"""`viewstream dedup`: near-duplicate photos across groups, from their embeddings.

A stock photo reused by many listings, or the same product shot re-uploaded with another crop
or compression, sits in several groups: a positive of its own group and a (false) negative of
every other. Exact byte duplicates are a sharding-time matter (sha256); near-duplicates show
only in embedding space. Every row queries the FAISS index for its `k` nearest neighbours; a
pair within cosine distance `threshold` (1 - cosine similarity) of rows in different groups
(any two rows with `same_group`) is written once (lower id first) to a Parquet of pairs with
scores, streaming: memory is the index plus one batch of queries and its pairs.

Without a prebuilt index, one is built in memory (exact up to 100k rows, HNSW above); for a
catalogue, pass `search build --index ...` output (its scores are those of the compressed
codes, so a threshold there is approximate; ids must follow the embeddings' row order, i.e.
an index built without --hold-out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from evaluation.embeddings import count_embeddings, iter_embeddings, read_embeddings, read_embeddings_metadata
from groundfloor.parquet_files import read_parquet
from groundfloor.errors import UsageError

PAIRS_SCHEMA = pa.schema([("key_a", pa.string()), ("group_a", pa.string()), ("key_b", pa.string()),
                          ("group_b", pa.string()), ("score", pa.float32()), ("distance", pa.float32())])


@dataclass
class DedupResult:
    rows: int
    pairs: int
    groups: int
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "pairs": self.pairs, "groups": self.groups, "threshold": self.threshold}


def find_near_duplicates(embeddings: str, out: str | Path, *, threshold: float, k: int = 20, index=None,
                         cross_group_only: bool = True, batch: int = 8192, progress: bool = True) -> DedupResult:
    """Write the pairs of rows within cosine distance `threshold` to Parquet `out`."""
    if not 0 <= threshold <= 2:
        raise UsageError(f"--threshold {threshold}: a cosine distance, expected 0 <= threshold <= 2")
    total = count_embeddings(embeddings)
    if index is None:
        from evaluation.search import SearchIndex

        emb = read_embeddings(embeddings)
        index = SearchIndex.build(emb.vectors, emb.keys, emb.groups)
        del emb
    if len(index) != total:
        raise UsageError(f"the index holds {len(index)} rows but {embeddings!r} has {total}: "
                         "pass an index built from these embeddings (without --hold-out)")
    k = min(k + 1, len(index))  # +1: a row finds itself
    groups_seen: set[str] = set()
    pairs, row = 0, 0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out, PAIRS_SCHEMA) as writer, \
            tqdm(total=total, desc="dedup", unit="row", disable=not progress) as bar:
        for chunk in iter_embeddings(embeddings, batch):
            found = index.search(chunk.vectors, k)
            ids = row + np.arange(len(chunk))
            near = (found.indices > ids[:, None]) & (1 - found.scores <= threshold)  # each pair once
            q, j = np.nonzero(near)
            other = found.indices[q, j]
            group_b = [index.groups[i] for i in other]
            keep = [not cross_group_only or chunk.groups[a] != g for a, g in zip(q, group_b)]
            q, j, other = q[keep], j[keep], other[keep]
            group_b = [g for g, kp in zip(group_b, keep) if kp]
            if len(q):
                scores = found.scores[q, j].astype(np.float32)
                table = pa.table({"key_a": [chunk.keys[a] for a in q], "group_a": [chunk.groups[a] for a in q],
                                  "key_b": [index.keys[i] for i in other], "group_b": group_b,
                                  "score": scores, "distance": (1 - scores).astype(np.float32)}, schema=PAIRS_SCHEMA)
                writer.write_table(table)
                pairs += len(q)
                groups_seen.update(table.column("group_a").to_pylist(), group_b)
            row += len(chunk)
            bar.update(len(chunk))
    return DedupResult(total, pairs, len(groups_seen), threshold, read_embeddings_metadata(embeddings))


def contact_sheet(pairs_path: str, dataset: str, out_png: str, num_pairs: int = 16,
                  endpoint_url: Optional[str] = None) -> Path:
    """A PNG of the `num_pairs` closest pairs of a pairs Parquet (photo 0 of each sample)."""
    from evaluation.plots import plot_pair_sheet
    from evaluation.sources import read_sample_image

    table = read_parquet(pairs_path)
    if table.num_rows == 0:
        raise UsageError(f"{pairs_path!r} lists no pairs: nothing to show (raise --threshold?)")
    order = np.argsort(-table.column("score").to_numpy(), kind="stable")[:num_pairs]
    rows = table.take(pa.array(order)).to_pylist()
    sheet = [(read_sample_image(dataset, r["key_a"], endpoint_url=endpoint_url),
              read_sample_image(dataset, r["key_b"], endpoint_url=endpoint_url),
              f"{r['score']:.3f}  {r['group_a'][-12:]} | {r['group_b'][-12:]}") for r in rows]
    return plot_pair_sheet(sheet, out_png)
