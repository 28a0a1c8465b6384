"""Byte storage for local paths and ``s3://bucket/key`` URIs: read, ranged read, list, atomic write.

One small class, `Storage`, hides the difference so the rest of the stage only ever says
``storage.read_bytes(uri)``. Writes are atomic: a local file is written to a temporary name in
the same folder and renamed; an S3 object becomes visible only when its (multipart) upload
completes. A `Storage` holds no open resources between calls except a lazily made boto3 client,
which it drops when pickled, so it can be shipped to worker processes and Ray tasks.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from viewstream.errors import UsageError

S3_SCHEME = "s3://"
# S3 multipart parts must be >= 5 MiB (except the last); 8 MiB is boto3's own default.
MULTIPART_PART_BYTES = 8 * 1024 * 1024
TEMP_PREFIX = ".tmp-"  # local atomic writes go to {folder}/.tmp-XXXX-{name} until renamed


def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/key`` URIs."""
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``; raises UsageError without a bucket."""
    if not is_s3(uri):
        raise UsageError(f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise UsageError(f"{uri!r} has no bucket (expected s3://bucket/key)")
    return bucket, key


def join(root: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and s3:// URIs alike."""
    out = root.rstrip("/") if root not in ("/", S3_SCHEME) else root
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if not out.endswith("/") else out + part
    return out


@dataclass(frozen=True)
class FileEntry:
    """One file found by `Storage.list_files`: its URI, its path relative to the listed root, size."""

    uri: str
    relpath: str
    size: int


class Storage:
    """Reads and writes bytes at local paths and s3:// URIs.

    `endpoint_url` selects a non-AWS S3 endpoint (MinIO, moto); when None, boto3 uses the
    standard ``AWS_ENDPOINT_URL`` environment variable or AWS itself.
    """

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url or None
        self._client = None

    def __getstate__(self) -> dict:
        return {"endpoint_url": self.endpoint_url, "_client": None}

    @property
    def s3(self):
        """The boto3 S3 client, made on first use (boto3 is slow to import and to build one)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

    # ---- reading -------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        """The whole content of `uri`."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with open(uri, "rb") as f:
            return f.read()

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """`length` bytes of `uri` from offset `start` (one HTTP range request on S3)."""
        if length <= 0:
            return b""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            rng = f"bytes={start}-{start + length - 1}"
            return self.s3.get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()
        with open(uri, "rb") as f:
            f.seek(start)
            return f.read(length)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        """A streaming binary reader for `uri` (S3 bodies are streamed, not buffered)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                yield body
            finally:
                body.close()
        else:
            with open(uri, "rb") as f:
                yield f

    def exists(self, uri: str) -> bool:
        """True if `uri` is an existing file or object."""
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return os.path.isfile(uri)

    def size(self, uri: str) -> int:
        """Size of `uri` in bytes."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return int(self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        return os.path.getsize(uri)

    def list_files(self, root: str) -> list[FileEntry]:
        """Every file under `root` (recursively), sorted by relative path.

        Local: regular files and symlinks to files (symlinked folders are not followed, which
        rules out cycles); a broken symlink is listed with size 0 so that it reaches validation
        and is quarantined rather than silently dropped. S3: every object under the prefix.
        """
        entries = list(self._list_s3(root) if is_s3(root) else self._list_local(root))
        entries.sort(key=lambda e: e.relpath)
        return entries

    def iter_files(self, root: str) -> Iterator[FileEntry]:
        """Every file under `root` like `list_files`, but streamed (S3: page by page) and in no
        guaranteed order: for listings too big to hold (the shard plan does not need order)."""
        return self._list_s3(root) if is_s3(root) else self._list_local(root)

    def _list_local(self, root: str) -> Iterator[FileEntry]:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    size = os.stat(path).st_size
                except OSError:  # broken symlink, vanished file: validation will say why
                    size = 0
                yield FileEntry(path, os.path.relpath(path, root).replace(os.sep, "/"), size)

    def _list_s3(self, root: str) -> Iterator[FileEntry]:
        bucket, prefix = split_s3(root)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):  # folder placeholder objects made by consoles
                    continue
                yield FileEntry(f"{S3_SCHEME}{bucket}/{key}", key[len(prefix):], int(obj["Size"]))

    # ---- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def open_atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        """A binary writer whose content appears at `uri` only if the block exits cleanly.

        Local: a temporary file next to the target, fsynced and renamed over it. S3: a
        multipart upload (parts of MULTIPART_PART_BYTES) completed at the end, or a single
        put for small objects; aborted on error so no partial object is ever visible.
        """
        if is_s3(uri):
            writer = _S3AtomicWriter(self.s3, *split_s3(uri))
            try:
                yield writer
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            return
        folder = os.path.dirname(os.path.abspath(uri))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix="-" + os.path.basename(uri))
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, uri)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically write `data` to `uri`."""
        with self.open_atomic_write(uri) as f:
            f.write(data)

    def remove_unfinished_writes(self, root: str, folders: tuple[str, ...] = ("",)) -> int:
        """Remove what killed atomic writes left in `folders` of `root`: local temporary files,
        S3 incomplete multipart uploads. Only for an output no other process is writing to."""
        removed = 0
        if is_s3(root):
            bucket, prefix = split_s3(root)
            uploads = self.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
            for upload in uploads:
                self.s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                removed += 1
            return removed
        for folder in folders:
            path = os.path.join(root, folder)
            names = os.listdir(path) if os.path.isdir(path) else []
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(path, name))
                        removed += 1
        return removed

    def delete(self, uri: str) -> None:
        """Remove `uri` if it exists."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(uri)


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
                Bucket=self._bucket, Key=self._key
            )["UploadId"]
        number = len(self._parts) + 1
        etag = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
            PartNumber=number, Body=chunk,
        )["ETag"]
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
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        if self._upload_id is not None:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
