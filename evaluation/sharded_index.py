"""Query a (possibly sharded) compressed index folder made by `evaluation.index_build`.

Each shard is searched for its own top k and the shards' lists are merged by score: the shards
share one trained template, so their scores are on the same scale and the merge is exact (the
same top k one index over all rows would return). Ids are global: a shard's local ids plus its
offset. Search-time knobs (``nprobe``, ``efSearch``, ``quantizer_efSearch`` for HNSW over the
IVF centroids, ...) go through FAISS's ParameterSpace, so every factory string takes the
parameters FAISS knows for it. `gpu` moves the shards to the GPUs when faiss-gpu sees one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import faiss
import numpy as np

from evaluation.search import INDEX_FILE, INFO_FILE, ROWS_FILE, SearchResult, normalized, rows_of
from groundfloor.parquet_files import read_parquet
from groundfloor.errors import UsageError


def parse_params(pairs: Sequence[str]) -> dict[str, float]:
    """``["nprobe=32", "efSearch=64"]`` -> {"nprobe": 32, "efSearch": 64}; UsageError otherwise."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UsageError(f"--param {pair!r}: expected NAME=NUMBER, e.g. nprobe=32 or efSearch=128")
    return out


class ShardedIndex:
    """Shards of one compressed index plus the key and group of every row (global id order)."""

    def __init__(self, shards: list[faiss.Index], offsets: list[int], keys: list[str], groups: list[str],
                 info: dict, directory: Optional[Path] = None):
        self.shards, self.offsets, self.keys, self.groups, self.info = shards, offsets, keys, groups, info
        self.directory = directory
        self.kind = f"factory:{info['factory']}"
        self.params: dict[str, float] = {}
        self.on_gpu = False
        self._direct_maps: set[int] = set()

    @classmethod
    def load(cls, directory: str | Path, *, params: Optional[dict[str, float]] = None, gpu: bool = False,
             with_rows: bool = True) -> "ShardedIndex":
        directory = Path(directory)
        info = json.loads((directory / INFO_FILE).read_text())
        shards, offsets, keys, groups = [], [], [], []
        for entry in info["shards"]:
            shards.append(faiss.read_index(str(directory / entry["name"] / INDEX_FILE)))
            offsets.append(int(entry["offset"]))
            if with_rows:
                rows = read_parquet(directory / entry["name"] / ROWS_FILE)
                keys += rows.column("key").to_pylist()
                groups += rows.column("group").to_pylist()
        index = cls(shards, offsets, keys, groups, info, directory)
        if gpu:
            index.to_gpu()
        if params:
            index.set_params(params)
        return index

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def __len__(self) -> int:
        return sum(int(s.ntotal) for s in self.shards)

    @property
    def index_bytes(self) -> int:
        """Bytes of the serialized shards (codes, ids, lists, centroids): what RAM/disk it costs."""
        return int(self.info.get("index_bytes") or sum(faiss.serialize_index(s).nbytes for s in self.shards))

    @property
    def bytes_per_vector(self) -> float:
        return self.index_bytes / max(1, len(self))

    def to_gpu(self) -> bool:
        """Spread the shards over the visible GPUs (faiss-gpu, `evaluation.faiss_gpu`); False (and a
        note) with faiss-cpu."""
        from evaluation.faiss_gpu import gpu_available, shards_to_gpus

        if not gpu_available():
            print("--device cuda: this faiss has no GPU support or sees no GPU; searching on the CPU")
            return False
        self.shards = shards_to_gpus(self.shards)
        self.on_gpu = True
        return True

    def set_params(self, params: dict[str, float]) -> None:
        """Search-time parameters (nprobe, efSearch, quantizer_efSearch, ...) on every shard."""
        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        for shard in self.shards:
            for name, value in params.items():
                try:
                    space.set_index_parameter(shard, name, value)
                except RuntimeError:
                    raise UsageError(f"search parameter {name}={value} does not apply to index "
                                     f"{self.info['factory']!r} (IVF takes nprobe, HNSW efSearch, "
                                     "IVF over HNSW centroids quantizer_efSearch)") from None
        self.params = dict(self.params) | dict(params)

    def search(self, queries: np.ndarray, k: int = 10) -> SearchResult:
        """Global top-k over all shards (scores are cosine estimates of the compressed codes)."""
        q = normalized(queries)
        if q.shape[1] != self.dim:
            raise UsageError(f"query vectors have dimension {q.shape[1]}, the index has {self.dim}")
        k = min(k, len(self))
        all_scores, all_ids = [], []
        for shard, offset in zip(self.shards, self.offsets):
            if shard.ntotal == 0:
                continue
            scores, ids = shard.search(q, min(k, int(shard.ntotal)))
            all_scores.append(scores)
            all_ids.append(np.where(ids >= 0, ids + offset, -1))
        scores, ids = np.concatenate(all_scores, 1), np.concatenate(all_ids, 1)
        scores = np.where(ids >= 0, scores, -np.inf)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
        return SearchResult(np.where(ids >= 0, scores, 0).astype(np.float32), ids.astype(np.int64))

    def search_keys(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        return self.search(queries, k).named(self.keys)

    def vectors_of(self, keys: Sequence[str]) -> np.ndarray:
        """The (decoded, approximate for PQ) stored vectors of `keys`, to query by key."""
        out = []
        for g in rows_of(self.keys, keys):
            s = int(np.searchsorted(self.offsets, g, side="right") - 1)
            shard = self.shards[s]
            if s not in self._direct_maps:  # IVF needs id -> list position to reconstruct
                try:
                    faiss.extract_index_ivf(shard).make_direct_map()
                except RuntimeError:
                    pass
                self._direct_maps.add(s)
            out.append(shard.reconstruct(g - self.offsets[s]))
        return np.stack(out)


def search_params(nprobe: Optional[int] = None, ef_search: Optional[int] = None,
                  pairs: Sequence[str] = ()) -> dict[str, float]:
    """Query-time parameters from the CLI's --nprobe / --ef-search / --param NAME=VALUE."""
    params = parse_params(pairs)
    if nprobe is not None:
        params["nprobe"] = nprobe
    if ef_search is not None:
        params["efSearch"] = ef_search
    return params


def load_index(directory: str | Path, *, params: Optional[dict[str, float]] = None, gpu: bool = False):
    """A saved index folder: a compressed/sharded one (`ShardedIndex`) or an in-memory-built
    `SearchIndex` (flat/hnsw/ivf), with query-time parameters applied."""
    from evaluation.search import SearchIndex

    directory = Path(directory)
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise UsageError(f"{str(directory)!r} is not a search index folder (expected {INFO_FILE})")
    if "shards" in json.loads(info_path.read_text()):
        return ShardedIndex.load(directory, params=params, gpu=gpu)
    index = SearchIndex.load(directory)
    if params:
        space = faiss.ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(index.index, name, value)
            except RuntimeError:
                raise UsageError(f"search parameter {name}={value} does not apply to a {index.kind} index") from None
    if gpu:
        print("--device cuda: only compressed indexes (search build --index ...) move to the GPU; searching on the CPU")
    return index
