"""Byte streams of shard files: local files, and S3 objects that survive dropped connections.

`sharding.storage.Storage` reads whole objects and ranges; a training run streams large shards
for hours, so it also needs a stream that, when the connection drops mid-object, asks again
with ``Range: bytes=<offset>-`` after a back-off and carries on where it stopped: no byte is
lost or repeated. `ResumableS3Stream` is that stream; `open_shard` picks local or S3.
"""
from __future__ import annotations

import io
import logging
import time
from typing import BinaryIO

from sharding.storage import Storage, is_s3, split_s3

log = logging.getLogger(__name__)

STREAM_BUFFER_BYTES = 1 << 20


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the connection broke", not "the request is wrong"."""
    from botocore.exceptions import (ConnectionClosedError, EndpointConnectionError,
                                     IncompleteReadError, ReadTimeoutError,
                                     ResponseStreamingError)
    from urllib3.exceptions import HTTPError as Urllib3Error

    return (ConnectionError, TimeoutError, OSError, ConnectionClosedError, EndpointConnectionError,
            IncompleteReadError, ReadTimeoutError, ResponseStreamingError, Urllib3Error)


class ResumableS3Stream(io.RawIOBase):
    """A read-only stream of one S3 object that resumes with a Range request after a drop.

    Up to `max_retries` consecutive failures (no byte received in between) are retried with
    exponential back-off starting at `backoff_s`; progress resets the count. `resumes` counts
    how many times the stream had to reconnect (tests and logs use it).
    """

    def __init__(self, client, bucket: str, key: str, *, max_retries: int = 6,
                 backoff_s: float = 0.1, start: int = 0):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._max_retries, self._backoff_s = max_retries, backoff_s
        self._pos = start
        self._size: int | None = None
        self._body = None
        self.resumes = 0
        self._errors = _transient_errors()

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        response = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                           Range=f"bytes={self._pos}-")
        if self._size is None:
            content_range = response.get("ContentRange") or ""
            total = content_range.rpartition("/")[2]
            self._size = int(total) if total.isdigit() else self._pos + int(response["ContentLength"])
        self._body = response["Body"]

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # the connection is already broken; nothing to keep
                pass
            self._body = None

    def readinto(self, buffer) -> int:
        if self._size is not None and self._pos >= self._size:
            return 0
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._open()
                    if self._pos >= self._size:
                        return 0
                data = self._body.read(len(buffer))
                if not data:  # the server closed early: the object is not finished
                    raise ConnectionError(f"stream ended at byte {self._pos} of {self._size}")
                buffer[: len(data)] = data
                self._pos += len(data)
                return len(data)
            except self._errors as err:
                self._drop_body()
                failures += 1
                if failures > self._max_retries:
                    raise ConnectionError(
                        f"s3://{self._bucket}/{self._key}: gave up at byte {self._pos} after "
                        f"{failures} failed attempts ({err})") from err
                self.resumes += 1
                delay = self._backoff_s * 2 ** (failures - 1)
                log.warning("s3://%s/%s: connection dropped at byte %d (%s); resuming in %.2fs",
                            self._bucket, self._key, self._pos, type(err).__name__, delay)
                time.sleep(delay)

    def close(self) -> None:
        self._drop_body()
        super().close()


def open_shard(storage: Storage, uri: str, start: int = 0) -> BinaryIO:
    """A buffered binary stream of the shard at `uri` (local path or s3://) from byte `start`."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return io.BufferedReader(ResumableS3Stream(storage.s3, bucket, key, start=start),
                                 STREAM_BUFFER_BYTES)
    stream = open(uri, "rb", buffering=STREAM_BUFFER_BYTES)
    if start:
        stream.seek(start)
    return stream


def stream_resumes(stream: BinaryIO) -> int:
    """How many times `stream` reconnected (0 for local files)."""
    raw = getattr(stream, "raw", None)
    return getattr(raw, "resumes", 0)
