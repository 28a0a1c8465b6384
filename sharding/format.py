"""The shard format: the contract between `sharding` (writes it) and `pipeline` (reads it).

See shared/ARCHITECTURE.md section 1. Everything both sides must agree on lives here, so a
change to the format is a change to one file.

A dataset is a folder or an ``s3://bucket/prefix`` holding::

    shards/{name}-{000000}.tar     WebDataset tar, one sample = one natural-view group
    shards/{name}-{000000}.idx     DALI wds2idx index of that tar (DALI never scans tars)
    index.parquet                  one row per sample (INDEX_SCHEMA)
    manifest.json                  format version, counts, bytes, sha256 per shard, build config
    quarantine.parquet             inputs that are not in any shard, with the reason (QUARANTINE_SCHEMA)

Sample members: ``{key}.{i}.{ext}`` for views i = 0..n-1 and ``{key}.json`` with the group's
metadata (group id, sources, label, per-view sha256). Keys contain no dots.
"""
from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1

SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "manifest.json"
QUARANTINE_FILE = "quarantine.parquet"

# Extensions the decoders (DALI and PIL) read as-is; anything else is re-encoded.
KEPT_IMAGE_EXTS = ("jpg", "png")

INDEX_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),        # shard file name relative to SHARDS_DIR, e.g. "data-000000.tar"
        ("key", pa.string()),          # sample key inside the tar (no dots)
        ("group_id", pa.string()),     # the natural-view group this sample is (a listing, an object)
        ("num_views", pa.int32()),     # n: members {key}.0.{ext} .. {key}.{n-1}.{ext}
        ("view_exts", pa.list_(pa.string())),  # extension of each view, e.g. ["jpg", "png"]
        ("bytes", pa.int64()),         # total bytes of the sample's image members
        ("label", pa.string()),        # label if any (null otherwise)
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),       # the input's uri (local path or s3://...)
        ("group_id", pa.string()),     # the group it would have belonged to (null if none)
        ("reason", pa.string()),       # short machine-readable reason, e.g. "truncated", "zero_bytes"
        ("detail", pa.string()),       # human-readable detail (exception message, sizes)
    ]
)

# manifest.json keys (a plain JSON object):
#   format_version: int                 FORMAT_VERSION
#   name: str                           shard name prefix
#   complete: bool                      false while a build is running or was interrupted; true once
#                                       every planned shard, index.parquet and quarantine.parquet exist
#   num_inputs: int                     inputs found (the whole plan)
#   num_planned_shards: int             shards in the plan (a shard whose inputs were all
#                                       quarantined has no tar and is not listed)
#   num_samples, num_views, num_quarantined: int     over the listed (finished) shards
#   quarantined_by_reason: {reason: count}
#   total_bytes: int                    sum of shard file sizes
#   shards: list of {"name": "data-000000.tar", "idx": "data-000000.idx", "num_samples": int,
#                    "num_views": int, "bytes": int, "sha256": str}   only finished shards are listed
#   config: dict                        the (secret-free) configuration that built the dataset,
#                                       including "input"; never the executor or worker count
#
# Besides these, a dataset holds _parts/{name}-{000000}.json: one record per finished shard (its
# index and quarantine rows, sha256 and a fingerprint of its inputs and options). They are how a
# rerun knows which shards are done; readers ignore them.


def shard_name(name: str, number: int) -> str:
    """The tar file name of shard `number` of a dataset whose shards are called `name`."""
    return f"{name}-{number:06d}.tar"


def idx_name(tar_name: str) -> str:
    """The DALI index file that sits next to a shard."""
    return tar_name[: -len(".tar")] + ".idx"


def view_member(key: str, view: int, ext: str) -> str:
    """The tar member name of view `view` of sample `key`."""
    return f"{key}.{view}.{ext}"


def meta_member(key: str) -> str:
    """The tar member holding a sample's JSON metadata."""
    return f"{key}.json"
