"""duplicates.parquet, and the duplicates as occurrences grouped by sha256.

Invariants: the report is streamed bucket by bucket in bucket order, which is sha256 order, so
the driver holds one bucket's duplicates at a time, and the file (format.DUPLICATES_SCHEMA) is
the same whatever the bucket count or the chunking. A group's place is (shard name, tar
position): shard names are zero-padded plan numbers, so ordering by place is plan order, the
deterministic order every mode decides in. See ARCHITECTURE.md section 1, "Duplicates across
groups".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from groundfloor.storage import Storage, join
from sharding.dedup.markers import dups_uri
from sharding.dedup.scan import read_view_rows
from sharding.format import DUPLICATES_FILE, DUPLICATES_SCHEMA

REPORT_ROWS = 65_536   # duplicate sha256s per written row group


@dataclass(frozen=True)
class Occurrence:
    """One view holding a duplicated sha256 (hex): its group, sample key, shard, tar position."""

    sha256: str
    group_id: str
    key: str
    shard: str
    row: int
    view: int

    @property
    def group(self) -> tuple[str, int]:
        """The group's place: (shard, tar position), the deterministic order of every mode."""
        return (self.shard, self.row)


def bucket_duplicates(output: str, storage: Storage, bucket: int) -> Iterator[list[Occurrence]]:
    """The occurrences of each duplicated sha256 of one bucket, in sha256 order."""
    table = read_view_rows(storage, dups_uri(output, bucket))
    current: list[Occurrence] = []
    for row in table.to_pylist():
        occ = Occurrence(row["sha256"].hex(), row["group_id"], row["key"], row["shard"], row["row"], row["view"])
        if current and current[0].sha256 != occ.sha256:
            yield current
            current = []
        current.append(occ)
    if current:
        yield current


def iter_duplicates(output: str, storage: Storage, buckets: int) -> Iterator[list[Occurrence]]:
    """Every duplicated sha256's occurrences, in sha256 order, one bucket in memory at a time."""
    for bucket in range(buckets):
        yield from bucket_duplicates(output, storage, bucket)


def write_report(output: str, storage: Storage, buckets: int) -> tuple[int, int]:
    """duplicates.parquet, streamed from the bucket parts (a bucket in memory at a time).
    Returns (duplicate sha256s, their occurrences)."""
    num_sha = num_occ = 0
    with storage.open_atomic_write(join(output, DUPLICATES_FILE)) as sink:
        with pq.ParquetWriter(sink, DUPLICATES_SCHEMA) as writer:
            rows: list[dict] = []
            for occs in iter_duplicates(output, storage, buckets):
                num_sha += 1
                num_occ += len(occs)
                rows.append({"sha256": occs[0].sha256, "group_ids": [o.group_id for o in occs],
                             "shards": [o.shard for o in occs], "keys": [o.key for o in occs],
                             "views": [o.view for o in occs]})
                if len(rows) >= REPORT_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA))
                    rows = []
            writer.write_table(pa.Table.from_pylist(rows, schema=DUPLICATES_SCHEMA))
    return num_sha, num_occ
