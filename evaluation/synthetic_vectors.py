"""Random-but-clustered vectors written as an embeddings dataset (for index tests and the
benchmark). Real embeddings are clustered at two scales: products of a kind sit together
(clusters), and the photos of one listing sit closer still (groups). Isotropic noise around
cluster centres alone would make every point of a cluster about equally far from every other
(high dimensions), so "the nearest neighbour" would be noise that no compressed index, nor
any real use, cares about."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.embeddings import embedding_table, write_embedding_table


def write_clustered_embeddings(out: str | Path, num: int, dim: int, *, clusters: int = 1000,
                               group_size: int = 5, group_noise: float = 0.6, photo_noise: float = 0.25,
                               rows_per_file: int = 50_000, seed: int = 0) -> str:
    """`num` vectors: groups of `group_size` rows (a listing's photos) around a group point,
    itself around one of `clusters` random unit centres (noise per dimension scaled by
    1/sqrt(dim)); written `rows_per_file` at a time as part files of folder `out` (memory: one
    file). A group's rows are contiguous, so the group column names them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = 1 / np.sqrt(dim)
    out = Path(out)
    rows_per_file -= rows_per_file % group_size
    for f, start in enumerate(range(0, num, rows_per_file)):
        n = min(rows_per_file, num - start)
        num_groups = -(-n // group_size)
        which = rng.integers(0, clusters, num_groups)
        points = centres[which] + rng.standard_normal((num_groups, dim)).astype(np.float32) * (group_noise * scale)
        group = np.repeat(np.arange(num_groups), group_size)[:n]
        x = points[group] + rng.standard_normal((n, dim)).astype(np.float32) * (photo_noise * scale)
        keys = [f"v{start + i:09d}" for i in range(n)]
        groups = [f"g{(start // group_size) + g:09d}" for g in group]
        table = embedding_table(x, keys, groups, None, metadata={"synthetic": True},
                                shard=f"part-{f:05d}", dataset="synthetic")
        write_embedding_table(str(out / f"part-{f:05d}.parquet"), table)
    return str(out)
