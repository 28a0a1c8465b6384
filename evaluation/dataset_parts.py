"""What `embed --ray` needs of a dataset, at shard granularity: its shards, one shard's index
rows, the label vocabulary.

All through `sharding.dataset`, never by opening index files here. The dataset format is
moving to per-shard index parts (format version 2: `read_index_part`, a `labels` vocabulary in
the manifest); until that lands, a shard's rows come from the whole-dataset `read_index`
(filtered, fine for the small version-1 datasets). Either way this is the one place that knows.
"""
from __future__ import annotations

import posixpath
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from sharding import dataset as ds
from sharding.storage import Storage


def shard_names(root: str, storage: Optional[Storage] = None) -> list[str]:
    """The finished shards of `root` (tar names, e.g. ``data-000000.tar``), in shard order."""
    return [posixpath.basename(uri) for uri in ds.shard_uris(root, storage)]


def shard_rows(root: str, shard: str, storage: Optional[Storage] = None) -> pa.Table:
    """The index rows of one shard (key, group_id, view_exts, label, ...), in tar order."""
    read_part = getattr(ds, "read_index_part", None)
    if read_part is not None:  # format version 2: one small part per shard
        return read_part(root, shard, storage)
    index = ds.read_index(root, storage)
    return index.filter(pc.equal(index.column("shard"), shard))


def label_vocabulary(root: str, storage: Optional[Storage] = None) -> list[str]:
    """The dataset's sorted distinct labels ([] when unlabelled), as the pipeline numbers them."""
    manifest = ds.load_manifest(root, storage)
    if isinstance(manifest.get("labels"), list):  # format version 2 records it
        return sorted(manifest["labels"])
    labels = ds.read_index(root, storage).column("label")
    return sorted({l for l in labels.to_pylist() if l is not None})
