"""What `embed --ray` needs of a dataset, at shard granularity: its shards, one shard's index
rows, the label vocabulary, all through `sharding.dataset` (format version 2: a small index part
per shard and the vocabulary in the manifest), so nothing here reads a whole-dataset table.
"""
from __future__ import annotations

import posixpath
from typing import Optional

import pyarrow as pa

from sharding import dataset as ds
from groundfloor.storage import Storage


def shard_names(root: str, storage: Optional[Storage] = None) -> list[str]:
    """The finished shards of `root` (tar names, e.g. ``data-000000.tar``), in shard order."""
    return [posixpath.basename(uri) for uri in ds.shard_uris(root, storage)]


def shard_rows(root: str, shard: str, storage: Optional[Storage] = None) -> pa.Table:
    """The index rows of one shard (key, group_id, view_exts, label, ...), in tar order."""
    return ds.read_index_part(root, shard, storage)


def label_vocabulary(root: str, storage: Optional[Storage] = None) -> list[str]:
    """The dataset's sorted distinct labels ([] when unlabelled), as the pipeline numbers them."""
    return sorted(ds.load_manifest(root, storage).get("labels") or [])
