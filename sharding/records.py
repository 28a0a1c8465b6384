"""The input record: one row of the plan (INPUT_SCHEMA), as Arrow and as a Python value.

Text columns are Arrow *binary* (UTF-8, with file names that are not UTF-8 kept byte-exact via
surrogate escapes), so the plan can sort and hash them without a Python object per input.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

ENC = "surrogateescape"

INPUT_SCHEMA = pa.schema(
    [
        ("group_id", pa.binary()),
        ("uri", pa.binary()),
        ("label", pa.binary()),   # null: no label
        ("size", pa.int64()),     # listed size (0 when a manifest does not list sizes)
        ("file", pa.int32()),     # number of the manifest file the row came from (0 for listings)
        ("meta", pa.binary()),    # kept manifest columns as a JSON object (null: none)
    ]
)


@dataclass(frozen=True, order=True)
class InputRecord:
    """One input: where it is, the group it belongs to, its label, its listed size, and the
    metadata kept with it (JSON text). A WebDataset tar or a Parquet row group of embedded
    images is one input that holds many samples (`sharding.containers`)."""

    group_id: str
    uri: str
    label: str | None = None
    size: int = 0
    meta: str | None = None


def encode(value: str) -> bytes:
    return value.encode("utf-8", ENC)


def decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", ENC)
