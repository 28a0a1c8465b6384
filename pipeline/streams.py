"""Byte streams of shard files for the loader.

A training run streams large shards for hours; `Storage.open_stream` gives a buffered reader
that on S3 resumes after a dropped connection (`groundfloor.storage.ResumableS3Stream`, re-exported
here) without losing or repeating a byte.
"""
from __future__ import annotations

from typing import BinaryIO

from groundfloor.storage import STREAM_BUFFER_BYTES, ResumableS3Stream, Storage  # noqa: F401 (re-export)



def open_shard(storage: Storage, uri: str, start: int = 0) -> BinaryIO:
    """A buffered binary stream of the shard at `uri` from byte `start` (resumable on S3: see
    `Storage.open_stream`)."""
    return storage.open_stream(uri, STREAM_BUFFER_BYTES, start)


def stream_resumes(stream: BinaryIO) -> int:
    """How many times `stream` reconnected (0 for local files)."""
    raw = getattr(stream, "raw", None)
    return getattr(raw, "resumes", 0)
