"""The shard format: the contract between `sharding` (writes it) and `pipeline` (reads it).

See ARCHITECTURE.md section 1. Everything both sides must agree on lives here, so a change to
the format is a change to one file.

Format version 2 (the scale layout: nothing in it is one table of every sample). A dataset is a
folder or an ``s3://bucket/prefix`` holding::

    shards/{name}-{000000}.tar     WebDataset tar, one sample = one natural-view group
    shards/{name}-{000000}.idx     DALI wds2idx index of that tar (DALI never scans tars)
    index/{name}-{000000}.parquet  the index part of that shard: one row per sample, tar order
                                   (INDEX_SCHEMA); a reader reads only the parts of its shards
    quarantine/{name}-{000000}.parquet   inputs of that shard's plan that are in no shard, with
                                   the reason (QUARANTINE_SCHEMA); written only when non-empty
    shards.parquet                 one row per finished shard (SHARDS_SCHEMA), in shard order:
                                   what a rank plans an epoch from (O(shards), not O(samples))
    manifest.json                  a small summary: format version, counts, label vocabulary,
                                   the build config (see MANIFEST_KEYS below); never a list
                                   that grows with the shards
    _parts/{name}-{000000}.json    the finished-shard record a rerun checks (readers ignore it)
    duplicates.parquet             photos (sha256) held by more than one group, with every group
                                   and place holding them (DUPLICATES_SCHEMA; sharding.dedup)
    merged.parquet                 only after ``--dedup-across-groups merge``: each group merged
                                   into another (MERGED_SCHEMA)
    shards/{name}-{000000}-dd.tar  (+ .idx, index/ and quarantine/ parts, _parts/ record) a shard
                                   rewritten by ``--dedup-across-groups drop|keep-first|merge``;
                                   shards.parquet lists it instead of the original, which stays
                                   (what a rerun or another mode starts from) but is read by no one
    _dedup/                        the duplicate scan's intermediate files (readers ignore it)

Format version 1 (before): one ``index.parquet`` and one ``quarantine.parquet`` for the whole
dataset and a ``shards`` list inside manifest.json. `viewstream migrate ROOT` rewrites such a
dataset in place as version 2 (the tars and .idx files are unchanged).

Sample members: ``{key}.{i}.{ext}`` for views i = 0..n-1 and ``{key}.json`` with the group's
metadata (group id, sources, label, per-view sha256). Keys contain no dots.
"""
from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (2,)  # version 1 is migrated (`viewstream migrate`), not read

SHARDS_DIR = "shards"
INDEX_DIR = "index"
QUARANTINE_DIR = "quarantine"
SHARDS_FILE = "shards.parquet"
MANIFEST_FILE = "manifest.json"
PARTS_DIR = "_parts"
DUPLICATES_FILE = "duplicates.parquet"
MERGED_FILE = "merged.parquet"
DEDUP_DIR = "_dedup"
REWRITTEN_SUFFIX = "-dd"  # data-000003.tar rewritten by the dedup pass is data-000003-dd.tar
# Format version 1 only (read by the migration):
V1_INDEX_FILE = "index.parquet"
V1_QUARANTINE_FILE = "quarantine.parquet"

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
        ("view_sha256", pa.list_(pa.string())),  # sha256 (hex) of each view's bytes, as in {key}.json
    ]
)

# Version 1 index rows had no view_sha256 (the migration reads it from the {key}.json members).
V1_INDEX_SCHEMA = pa.schema([f for f in INDEX_SCHEMA if f.name != "view_sha256"])

SHARDS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),         # shard file name relative to SHARDS_DIR, e.g. "data-000000.tar"
        ("num_samples", pa.int64()),   # rows in its index part
        ("num_views", pa.int64()),     # photos in it
        ("bytes", pa.int64()),         # tar size
        ("sha256", pa.string()),       # of the tar
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

DUPLICATES_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),       # hex sha256 of the stored bytes, held by >= 2 groups
        ("group_ids", pa.list_(pa.string())),  # per occurrence, in (shard, tar position, view) order:
        ("shards", pa.list_(pa.string())),     #   its group, the (pre-dedup) shard holding it,
        ("keys", pa.list_(pa.string())),       #   the sample key,
        ("views", pa.list_(pa.int32())),       #   and the view index i of member {key}.{i}.{ext}
    ]
)

MERGED_SCHEMA = pa.schema(
    [
        ("group_id", pa.string()),     # a group merged away (it is no longer a sample)
        ("key", pa.string()),
        ("shard", pa.string()),        # the (pre-dedup) shard it was in
        ("merged_into", pa.string()),  # the group id now holding its photos
        ("into_key", pa.string()),
        ("into_shard", pa.string()),   # the shard (as shards.parquet names it) of that group
    ]
)

# manifest.json keys (a plain JSON object, small whatever the dataset's size):
#   format_version: int                 FORMAT_VERSION
#   name: str                           shard name prefix
#   complete: bool                      false while a build is running or was interrupted; true once
#                                       every planned shard, its index part and shards.parquet exist
#   num_inputs: int                     inputs found (the whole plan)
#   num_planned_shards: int             shards in the plan (a shard whose inputs were all
#                                       quarantined has no tar and is not listed); while a build
#                                       runs, the shards planned so far (planning overlaps building)
#   num_samples, num_views, num_quarantined: int     over the listed (finished) shards
#   quarantined_by_reason: {reason: count}
#   total_bytes: int                    sum of shard file sizes
#   num_shards: int                     finished shards (rows of shards.parquet)
#   labels: list[str]                   sorted distinct labels of all samples ([] if unlabelled):
#                                       the label vocabulary, so no reader scans the index for it
#   duplicates_across_groups: dict     the dedup pass: mode, duplicate sha256s, their occurrences,
#                                       groups holding one, shards rewritten, groups merged away
#   config: dict                        the (secret-free) configuration that built the dataset,
#                                       including "input"; never the executor or worker count
# (Version 1 also had "shards": a list of {"name", "idx", "num_samples", "num_views", "bytes",
# "sha256"}; version 2 keeps those rows in shards.parquet.)


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


def index_part_name(tar_name: str) -> str:
    """The index part (relative to INDEX_DIR) of a shard, e.g. ``data-000000.parquet``."""
    return tar_name[: -len(".tar")] + ".parquet"


def quarantine_part_name(tar_name: str) -> str:
    """The quarantine part (relative to QUARANTINE_DIR) of a shard's plan."""
    return tar_name[: -len(".tar")] + ".parquet"


def rewritten_name(tar_name: str) -> str:
    """The name of shard `tar_name` once the dedup pass has rewritten it."""
    return tar_name[: -len(".tar")] + REWRITTEN_SUFFIX + ".tar"
