"""Read one Parquet file (bytes or a local path) into a table, on the calling thread only.

Every one-file read in the project goes through `read_parquet`, not `pyarrow.parquet.read_table`:
`read_table` goes through `pyarrow.dataset` and Arrow's CPU and IO thread pools, whose C++
threads can still be alive when the interpreter exits; the process then aborts after its work is
done ("terminate called without an active exception", exit 134: apache/arrow#34314, #38352),
which turned a finished `viewstream shard` into a failure about one run in ten on a busy box.
`ParquetFile(pre_buffer=False).read(use_threads=False)` decodes on the caller's thread and starts
no pool (pre-buffering reads its column chunks on the IO pool); it also spares a rank the ~55 MB
of RSS that the first use of `pyarrow.dataset` costs. Compute calls on tables follow the same
rule: `Table.group_by(..., use_threads=False)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

ParquetSource = Union[bytes, bytearray, memoryview, str, Path]


def read_parquet(source: ParquetSource, schema: pa.Schema | None = None,
                 columns: Sequence[str] | None = None) -> pa.Table:
    """The table in `source` (Parquet bytes or a local path).

    With `schema`, the result has exactly the schema's fields that `columns` names (all of them
    by default), in the schema's order and cast to its types, as `read_table(schema=...)` gives.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = pa.BufferReader(source)
    names = list(columns) if columns is not None else (schema.names if schema is not None else None)
    table = pq.ParquetFile(source, pre_buffer=False).read(columns=names, use_threads=False)
    if schema is None:
        return table
    return table.select(names).cast(pa.schema([schema.field(n) for n in names]))
