"""Several dataset roots read as one training set, with per-root epoch sizes.

`data.dataset` is one root, or a list whose items are roots or ``{"root": ..., one of
"repeat" | "choose" | "proportion"}`` (mosaicml/streaming's `Stream` knobs): `repeat` x the
root's samples per epoch, an absolute `choose` per epoch, or a `proportion` of `epoch_size`
(default: the sum of all roots' samples). Roots without a knob are read once per epoch.
Resolved epoch sizes are exact integers (largest remainder for proportions), so every epoch
has the same length and `pipeline.epochs` plans it exactly.

Only shard-level metadata is read here (manifest.json and shards.parquet of each root): the
per-sample index parts are read later, by the rank that reads the shard.

With ``natural_views=False`` the unit of an epoch is a photo, not a group: the plan counts each
shard's photos (shards.parquet ``num_views``) instead of its groups, and the knobs count photos.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from sharding.dataset import load_manifest, read_shards
from groundfloor.storage import Storage
from pipeline.epochs import ShardTable
from groundfloor.errors import UsageError

RootSpec = Union[str, dict]
KNOBS = ("repeat", "choose", "proportion")


@dataclass(frozen=True)
class Root:
    """One root of a mixture: where it is and what it gives per epoch (at most one knob)."""

    root: str
    repeat: Optional[float] = None
    choose: Optional[int] = None
    proportion: Optional[float] = None


def parse_roots(dataset: Union[RootSpec, Sequence[RootSpec]]) -> list[Root]:
    """`dataset` as a list of Roots; a one-line UsageError for anything malformed."""
    items = [dataset] if isinstance(dataset, (str, dict)) else list(dataset)
    if not items:
        raise UsageError("dataset: expected a root or a non-empty list of roots")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Root(item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("root"), str):
            raise UsageError(f"dataset entry {item!r}: expected a root or {{'root': ..., "
                             f"'repeat' | 'choose' | 'proportion': ...}}")
        unknown = sorted(set(item) - {"root", *KNOBS})
        knobs = [k for k in KNOBS if item.get(k) is not None]
        if unknown or len(knobs) > 1:
            raise UsageError(f"dataset entry {item!r}: expected 'root' and at most one of "
                             f"{list(KNOBS)}")
        value = item[knobs[0]] if knobs else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0 or (knobs[0] == "choose" and int(value) != value)):
            raise UsageError(f"dataset entry {item['root']!r}: {knobs[0]}={value!r} must be a "
                             "number >= 0 (choose: an integer)")
        out.append(Root(item["root"], **({knobs[0]: value} if knobs else {})))
    if len({r.root.rstrip("/") for r in out}) != len(out):
        raise UsageError("dataset: the same root is listed twice")
    return out


def epoch_sizes(roots: list[Root], sizes: list[int], epoch_size: Optional[int] = None) -> list[int]:
    """Samples each root gives per epoch (exact integers)."""
    out: list[Optional[int]] = []
    for root, n in zip(roots, sizes):
        if root.choose is not None:
            out.append(int(root.choose))
        elif root.repeat is not None:
            out.append(int(round(root.repeat * n)))
        elif root.proportion is None:
            out.append(n)
        else:
            out.append(None)
    weighted = [i for i, r in enumerate(roots) if r.proportion is not None]
    if weighted:
        total = int(epoch_size) if epoch_size is not None else sum(sizes)
        weights = np.array([roots[i].proportion for i in weighted], dtype=np.float64)
        if weights.sum() <= 0:
            raise UsageError("dataset: proportions must not all be 0")
        total -= sum(k for k in out if k is not None)  # what the other roots leave
        if total < 0:
            raise UsageError(f"data.epoch_size={epoch_size} is smaller than the roots without "
                             "a proportion take")
        exact = weights / weights.sum() * total
        base = np.floor(exact).astype(np.int64)
        order = np.argsort(-(exact - base), kind="stable")
        base[order[: total - int(base.sum())]] += 1
        for i, b in zip(weighted, base.tolist()):
            out[i] = b
    elif epoch_size is not None:
        raise UsageError("data.epoch_size needs a root with a 'proportion'")
    for root, n, k in zip(roots, sizes, out):
        if k and not n:
            raise UsageError(f"{root.root!r} has no samples but is asked for {k} per epoch")
    return [int(k) for k in out]


@dataclass
class Mixture:
    """The shard-level view of a list of roots: names, counts, labels, the plan's ShardTable."""

    roots: list[str]
    manifests: list[dict]
    shard_names: list[list[str]]   # per root, in shard order
    table: ShardTable
    first_shard: np.ndarray        # int64 [R]: global number of each root's first shard
    label_vocabulary: list[str]

    def locate(self, shard: int) -> tuple[int, str]:
        """(root number, shard file name) of global shard `shard`."""
        r = int(self.table.root_of[shard])
        return r, self.shard_names[r][shard - int(self.first_shard[r])]


def load_mixture(dataset: Union[RootSpec, Sequence[RootSpec]], storage: Storage,
                 epoch_size: Optional[int] = None, natural_views: bool = True) -> Mixture:
    """Read each root's manifest and shards.parquet (O(shards)) and resolve the epoch sizes.

    `natural_views=False`: the table counts photos per shard (every photo its own sample)."""
    unit = "num_samples" if natural_views else "num_views"
    roots = parse_roots(dataset)
    manifests, names, counts = [], [], []
    for root in roots:
        manifests.append(load_manifest(root.root, storage))
        shards = read_shards(root.root, storage, columns=["name", unit])
        names.append(shards.column("name").to_pylist())
        # to_pylist, not to_numpy: ChunkedArray.to_numpy imports pandas (~30 MB RSS)
        counts.append(np.array(shards.column(unit).to_pylist(), dtype=np.int64))
        del shards
    # mimalloc (arrow's default pool) keeps the decode buffers of a Parquet read mapped: ~1 KB
    # per shard of RSS for nothing once the columns are Python lists and arrays
    pa.default_memory_pool().release_unused()
    sizes = [int(c.sum()) for c in counts]
    choose = np.array(epoch_sizes(roots, sizes, epoch_size), dtype=np.int64)
    all_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    root_of = np.concatenate([np.full(len(c), r, np.int32) for r, c in enumerate(counts)])
    first = np.concatenate([[0], np.cumsum([len(c) for c in counts])[:-1]]).astype(np.int64)
    labels = sorted({l for m in manifests for l in (m.get("labels") or [])})
    return Mixture([r.root for r in roots], manifests, names,
                   ShardTable(all_counts, root_of, choose), first, labels)
