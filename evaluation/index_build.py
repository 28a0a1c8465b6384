"""Compressed, sharded FAISS indexes built from an embeddings Parquet file or dataset, streaming.

At 1e9 x 2048-d float32 the raw vectors are ~8 TB: no machine holds them, so nothing here
does. Any FAISS factory string works (``"IVF4096,PQ32"``, ``"OPQ32,IVF4096,PQ32"``,
``"IVF4096_HNSW32,PQ32"`` for an HNSW graph over the IVF centroids, ``"Flat"``); the metric is
inner product on l2-normalised vectors (cosine), as everywhere in evaluation.

1. *Train* on a seeded sample of rows (IVF k-means and PQ codebooks need a sample, not the
   corpus; default max(39 x lists, 65536) rows), gathered in one streaming pass. With `gpu`,
   k-means runs on every visible GPU (faiss-gpu; faiss-cpu falls back to the CPU and says so).
2. *Add* the rows in batches of `add_batch`: memory is one batch of float vectors plus the
   compressed codes, never the corpus's floats. With ``shards > 1`` the rows are split into
   contiguous ranges, each its own index cloned from the one trained template (same centroids
   and codebooks, so scores compare across shards); `build_shard` builds one range alone, so
   shards can be built by separate jobs, and queries merge the shards' top-k.
3. *Hold out* `hold_out` seeded rows (not indexed) as the query sample of `search eval`.

Folder layout::

    index.json          factory, dim, count, shards [{name, offset, count}], source, config
    trained.faiss       the trained, empty template
    shard-00000/        index.faiss + rows.parquet (key, group of each row, in id order)
    queries.parquet     held-out rows (row, key, group, vector), when hold_out > 0
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from evaluation.embeddings import (Embeddings, count_embeddings, embedding_files, iter_embeddings,
                                   read_embeddings_metadata)
from evaluation.faiss_gpu import flat_index_on_gpus, gpu_available
from evaluation.search import INDEX_FILE, INFO_FILE, ROWS_FILE, normalized
from groundfloor.errors import UsageError

log = logging.getLogger(__name__)
TRAINED_FILE = "trained.faiss"
QUERIES_FILE = "queries.parquet"
LAYOUT = "sharded-v1"


class BuildConfig(BaseModel):
    """How to build a compressed index (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str = "IVF4096,PQ32"
    train_size: Optional[int] = Field(None, ge=1, description="training sample rows (default max(39 x lists, 65536))")
    add_batch: int = Field(65536, ge=1, description="rows per add: the memory bound")
    shards: int = Field(1, ge=1)
    hold_out: int = Field(0, ge=0, description="rows kept out of the index as eval queries")
    seed: int = 0
    gpu: bool = False


@dataclass
class BuildReport:
    count: int
    dim: int
    shards: int
    train_rows: int
    train_seconds: float
    add_seconds: float
    index_bytes: int
    gpu_used: bool

    @property
    def bytes_per_vector(self) -> float:
        return self.index_bytes / max(1, self.count)

    def as_dict(self) -> dict:
        return asdict(self) | {"bytes_per_vector": self.bytes_per_vector}


def make_index(dim: int, factory: str) -> faiss.Index:
    """An empty index of `factory` for `dim`-d vectors, inner product; UsageError if FAISS refuses."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "invalid"
        raise UsageError(f"--index {factory!r} is not a FAISS factory string for {dim}-d vectors ({first}); "
                         "e.g. 'IVF4096,PQ32', 'OPQ32,IVF4096,PQ32', 'IVF4096_HNSW32,PQ32', 'HNSW32', 'Flat'") from None
    # Polysemous training reorders PQ centroids for Hamming pre-filtering, which we never turn
    # on (polysemous_ht = 0); it is 3-10x the cost of the PQ k-means itself.
    for part in (index, _ivf_or_none(index)):
        part = faiss.downcast_index(part) if part is not None else None
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    return index


def _ivf_or_none(index: faiss.Index) -> Optional[faiss.Index]:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def default_train_size(index: faiss.Index) -> int:
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index (PQ, HNSW-PQ...): a plain sample
        nlist = 0
    return max(39 * nlist, 65536)


def iter_rows(path: str, lo: int, hi: int, batch: int) -> Iterator[tuple[int, Embeddings]]:
    """(first global row, chunk) for rows [lo, hi) of an embeddings file or dataset, streaming;
    files entirely outside the range are not opened beyond their footers."""
    from evaluation.embeddings import _open

    offset = 0
    for f in embedding_files(path):
        n = _open(f).metadata.num_rows
        if offset + n > lo and offset < hi:
            row = offset
            for chunk in iter_embeddings(f, batch):
                end = row + len(chunk)
                if end > lo and row < hi:
                    a, b = max(lo, row) - row, min(hi, end) - row
                    yield row + a, _slice(chunk, a, b)
                row = end
        offset += n
        if offset >= hi:
            return


def _slice(chunk, a: int, b: int):

    if a == 0 and b == len(chunk):
        return chunk
    return Embeddings(chunk.keys[a:b], chunk.groups[a:b], None if chunk.labels is None else chunk.labels[a:b],
                      chunk.vectors[a:b], chunk.metadata)


def _sample_rows(total: int, size: int, seed: int, salt: int, exclude: np.ndarray) -> np.ndarray:
    size = min(size, total)
    rows = np.random.default_rng([seed, salt]).choice(total, size=size, replace=False)
    return np.setdiff1d(rows, exclude)  # sorted


def _gather(path: str, rows: np.ndarray, batch: int, desc: str, progress: bool = True
            ) -> tuple[np.ndarray, list[str], list[str]]:
    """The vectors (and keys, groups) of sorted global `rows`, in one streaming pass."""
    vectors, keys, groups = [], [], []
    for start, chunk in tqdm(iter_rows(path, 0, int(rows[-1]) + 1 if len(rows) else 0, batch), desc=desc, unit="chunk",
                             leave=False, disable=not progress):
        local = rows[(rows >= start) & (rows < start + len(chunk))] - start
        if len(local):
            vectors.append(chunk.vectors[local])
            keys += [chunk.keys[i] for i in local]
            groups += [chunk.groups[i] for i in local]
    dim = vectors[0].shape[1] if vectors else 0
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), keys, groups


def _train(index: faiss.Index, sample: np.ndarray, gpu: bool) -> bool:
    """Train `index` on `sample`; k-means on the GPUs when asked and present. Whether GPUs were used."""
    used = False
    if gpu and gpu_available():
        try:
            ivf = faiss.extract_index_ivf(index)
            ivf.clustering_index = flat_index_on_gpus(ivf.d)
            used = True
        except RuntimeError:
            log.warning("--device cuda: %s has no IVF stage to train on the GPU; training on the CPU", type(index).__name__)
    index.train(sample)
    return used


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous global row ranges of the shards (held-out rows are dropped inside them)."""
    return [(s * count // shards, (s + 1) * count // shards) for s in range(shards)]


def build_index(embeddings: str, out: str | Path, config: BuildConfig = BuildConfig(), *,
                progress: bool = True) -> BuildReport:
    """Train, then add every shard of the index of `embeddings` into folder `out`."""
    out = Path(out)
    total = count_embeddings(embeddings)
    meta = read_embeddings_metadata(embeddings)
    dim = int(meta.get("dim") or 0)
    if total == 0 or dim == 0:
        raise UsageError(f"embeddings {embeddings!r} hold no vectors")
    if config.hold_out >= total:
        raise UsageError(f"--hold-out {config.hold_out}: the embeddings have only {total} rows")
    if config.gpu and not gpu_available():
        print("--device cuda: this faiss has no GPU support or sees no GPU; building on the CPU")
    out.mkdir(parents=True, exist_ok=True)
    held = np.sort(np.random.default_rng([config.seed, 1]).choice(total, config.hold_out, replace=False)) \
        if config.hold_out else np.zeros(0, np.int64)
    if len(held):
        vectors, keys, groups = _gather(embeddings, held, config.add_batch, "held-out queries", progress)
        pq.write_table(pa.table({"row": pa.array(held, pa.int64()), "key": keys, "group": groups,
                                 "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)}),
                       out / QUERIES_FILE)
    template = make_index(dim, config.factory)
    t0 = time.perf_counter()
    train_rows, gpu_used = 0, False
    if not template.is_trained:
        rows = _sample_rows(total, config.train_size or default_train_size(template), config.seed, 2, held)
        sample, _, _ = _gather(embeddings, rows, config.add_batch, "training sample", progress)
        train_rows = len(sample)
        gpu_used = _train(template, normalized(sample), config.gpu)
        del sample
    faiss.write_index(template, str(out / TRAINED_FILE))
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    shards = []
    bounds = shard_bounds(total, config.shards)
    with tqdm(total=total, desc="add", unit="vec", unit_scale=True, disable=not progress) as bar:
        for s, (lo, hi) in enumerate(bounds):
            shards.append(build_shard(embeddings, out, s, lo, hi, held, config.add_batch, bar))
    offset = 0
    for entry in shards:
        entry["offset"], offset = offset, offset + entry["count"]
    index_bytes = sum((out / e["name"] / INDEX_FILE).stat().st_size for e in shards)
    info = {"layout": LAYOUT, "kind": "factory", "factory": config.factory, "dim": dim, "count": offset,
            "shards": shards, "config": config.model_dump(), "held_out": int(len(held)),
            "source": {"embeddings": str(embeddings), "rows": total}, "index_bytes": index_bytes,
            "bytes_per_vector": index_bytes / max(1, offset)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return BuildReport(offset, dim, len(shards), train_rows, train_seconds, time.perf_counter() - t1,
                       index_bytes, gpu_used)


def build_shard(embeddings: str, out: str | Path, shard: int, lo: int, hi: int, held: np.ndarray,
                batch: int, bar=None) -> dict:
    """Add rows [lo, hi) (minus `held`) to a clone of `out`/trained.faiss; write shard-NNNNN/."""
    out = Path(out)
    index = faiss.read_index(str(out / TRAINED_FILE))
    name = f"shard-{shard:05d}"
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("key", pa.string()), ("group", pa.string())])
    with pq.ParquetWriter(folder / ROWS_FILE, schema) as rows_out:
        for start, chunk in iter_rows(embeddings, lo, hi, batch):
            keep = np.ones(len(chunk), bool)
            drop = held[(held >= start) & (held < start + len(chunk))] - start
            keep[drop] = False
            if keep.any():
                index.add(normalized(chunk.vectors[keep]))
                idx = np.flatnonzero(keep)
                rows_out.write_table(pa.table({"key": [chunk.keys[i] for i in idx],
                                               "group": [chunk.groups[i] for i in idx]}, schema=schema))
            if bar is not None:
                bar.update(len(chunk))
    faiss.write_index(index, str(folder / INDEX_FILE))
    return {"name": name, "count": int(index.ntotal), "rows": [lo, hi]}


def nlist_of(index: faiss.Index) -> Optional[int]:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return None


def log2_range(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit` (inclusive): the nprobe values a tuning pass tries."""
    return [2 ** i for i in range(int(math.log2(max(1, limit))) + 1)] + ([limit] if limit & (limit - 1) else [])
