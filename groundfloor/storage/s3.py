"""S3 backend (AWS or any S3-compatible store) on boto3, the one S3 client of viewstream.

Reads are GETs (ranged for `read_range`), long reads are `ResumableS3Stream`s that pick up
with ``Range: bytes=<offset>-`` after a dropped connection, listings are ``list_objects_v2``
pages (S3 returns keys in UTF-8 binary order, so pages arrive sorted and nothing is
accumulated), and atomic writes are multipart uploads completed on success and aborted on
error, so no partial object is ever visible.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import BinaryIO, Iterator

from groundfloor.storage.backend import Backend, FileEntry
from groundfloor.storage.settings import S3Settings
from groundfloor.storage.uri import split_bucket
from groundfloor.errors import UsageError

log = logging.getLogger(__name__)

# S3 multipart parts must be >= 5 MiB (except the last); 8 MiB is boto3's own default.
MULTIPART_PART_BYTES = 8 * 1024 * 1024
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def _split(uri: str) -> tuple[str, str]:
    try:
        return split_bucket(uri)
    except ValueError as err:
        raise UsageError(str(err)) from None


@contextlib.contextmanager
def _missing_as_not_found(uri: str) -> Iterator[None]:
    """botocore's 404s become FileNotFoundError naming the URI, like a local open()."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in _MISSING:
            raise FileNotFoundError(f"no such object: {uri}") from None
        err.uri = uri  # the front door's one-line error names it (botocore's message does not)
        raise


class S3Backend(Backend):
    """``s3://bucket/key`` URIs. Holds a lazily made client, dropped when pickled."""

    name = "s3"
    writable = True
    LIST_PAGE_SIZE = 1000  # S3's maximum keys per listing page

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self._client = None

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def read_bytes(self, uri: str) -> bytes:
        """The whole object; a body cut mid-way is resumed from the byte it stopped at."""
        bucket, key = _split(uri)
        with contextlib.closing(ResumableS3Stream(self.client, bucket, key)) as stream:
            return stream.readall()

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """Bytes [start, start + length); a cut body is resumed inside the range."""
        bucket, key = _split(uri)
        with contextlib.closing(ResumableS3Stream(self.client, bucket, key, start=start,
                                                  end=start + length)) as stream:
            return stream.readall()

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        bucket, key = _split(uri)
        with contextlib.closing(ResumableS3Stream(self.client, bucket, key)) as stream:
            yield io.BufferedReader(stream, 1 << 20)

    def open_stream(self, uri: str, buffer_bytes: int, start: int = 0) -> BinaryIO:
        bucket, key = _split(uri)
        return io.BufferedReader(ResumableS3Stream(self.client, bucket, key, start=start), buffer_bytes)

    def _head(self, uri: str) -> dict:
        bucket, key = _split(uri)
        with _missing_as_not_found(uri):
            return self.client.head_object(Bucket=bucket, Key=key)

    def exists(self, uri: str) -> bool:
        try:
            self._head(uri)
            return True
        except FileNotFoundError:
            return False

    def size(self, uri: str) -> int:
        return int(self._head(uri)["ContentLength"])

    def is_folder(self, uri: str) -> bool:
        return True  # any prefix may hold objects; listing it says whether it does

    def iter_files(self, root: str) -> Iterator[FileEntry]:
        bucket, prefix = _split(root)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix,
                                   PaginationConfig={"PageSize": self.LIST_PAGE_SIZE})
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):  # folder placeholder objects made by consoles
                    continue
                yield FileEntry(f"s3://{bucket}/{key}", key[len(prefix):], int(obj["Size"]))

    def check_writable(self, root: str) -> None:
        bucket, _ = _split(root)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as err:
            raise UsageError(f"output {root!r} is not writable: bucket {bucket!r}: {err}") from None

    @contextlib.contextmanager
    def open_atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        writer = _S3AtomicWriter(self.client, *_split(uri))
        try:
            yield writer
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def remove_unfinished_writes(self, root: str, folders: tuple[str, ...]) -> int:
        bucket, prefix = _split(root)
        removed = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                removed += 1
        return removed

    def remove(self, uri: str) -> None:
        bucket, key = _split(uri)
        self.client.delete_object(Bucket=bucket, Key=key)


class _S3AtomicWriter(io.RawIOBase):
    """A write-only stream that uploads in parts and completes the upload on `commit`."""

    def __init__(self, client, bucket: str, key: str, part_bytes: int = MULTIPART_PART_BYTES):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            chunk = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            self._upload_part(chunk)
        return len(data)

    def _upload_part(self, chunk: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        etag = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
            PartNumber=number, Body=chunk)["ETag"]
        self._parts.append({"ETag": etag, "PartNumber": number})

    def commit(self) -> None:
        if self._upload_id is None:  # small object: one request, atomic by nature
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)


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

    Every S3 read goes through it: whole objects (manifests, index parts, checkpoints), ranged
    reads (`end`: stop before that byte) and long shard streams. botocore retries a request
    only until its headers arrive; when the connection drops inside the body this asks again
    from the byte it stopped at after a back-off, so no byte is lost or repeated. Up to
    `max_retries` consecutive failures (no byte received in between) are retried with
    exponential back-off starting at `backoff_s`; progress resets the count; then one
    ConnectionError names the URI, the byte and the attempts. `resumes` counts reconnects.
    """

    def __init__(self, client, bucket: str, key: str, *, max_retries: int = 6,
                 backoff_s: float = 0.1, start: int = 0, end: int | None = None):
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._max_retries, self._backoff_s = max_retries, backoff_s
        self._pos = start
        self._end = end
        self._size: int | None = None
        self._body = None
        self.resumes = 0
        self._errors = _transient_errors()

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        from botocore.exceptions import ClientError

        last = "" if self._end is None else str(self._end - 1)
        try:
            with _missing_as_not_found(f"s3://{self._bucket}/{self._key}"):
                response = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                                   Range=f"bytes={self._pos}-{last}")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            self._size = self._pos  # at or past the end (an empty object has no byte 0)
            return
        if self._size is None:
            content_range = response.get("ContentRange") or ""
            total = content_range.rpartition("/")[2]
            self._size = int(total) if total.isdigit() else self._pos + int(response["ContentLength"])
            if self._end is not None:
                self._size = min(self._size, self._end)
        self._body = response["Body"]

    def readall(self) -> bytes:
        """The rest of the object (or range), read in large pieces."""
        chunks = []
        while chunk := self.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

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
            except FileNotFoundError:
                raise
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
