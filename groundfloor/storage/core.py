"""`Storage`: the one object the rest of viewstream reads and writes bytes through."""
from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator, Optional

from groundfloor.storage.backend import Backend, FileEntry
from groundfloor.storage.registry import BACKENDS, backend_key
from groundfloor.storage.settings import S3Settings
from groundfloor.storage.uri import is_local, fs_path, local_path

STREAM_BUFFER_BYTES = 1 << 20


class Storage:
    """Bytes at any URI the registry knows: local paths, ``s3://``, ``http(s)://`` (read-only).

    `endpoint_url` is the S3 endpoint given by a flag or config (None: the environment, then
    AWS; see `groundfloor.storage.settings`). A Storage is cheap to make and to pickle: backends
    are made on first use and drop their clients when pickled, so it ships to worker
    processes and Ray tasks.
    """

    def __init__(self, endpoint_url: Optional[str] = None):
        self.settings = S3Settings.resolve(endpoint_url)
        self._backends: dict[str, Backend] = {}

    @property
    def endpoint_url(self) -> Optional[str]:
        """The resolved S3 endpoint (None: AWS)."""
        return self.settings.endpoint_url

    def __getstate__(self) -> dict:
        return {"settings": self.settings, "_backends": {}}

    def backend(self, uri: str) -> Backend:
        """The backend that serves `uri` (one instance per kind, made on first use)."""
        key = backend_key(uri)
        if key not in self._backends:
            self._backends[key] = BACKENDS[key](self.settings)
        return self._backends[key]

    @property
    def s3(self):
        """The boto3 client of the S3 backend (tests and benchmarks make buckets with it)."""
        return self.backend("s3://_").client

    # ---- reading -------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        """The whole content of `uri`; FileNotFoundError naming it if it does not exist."""
        return self.backend(uri).read_bytes(uri)

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """`length` bytes of `uri` from offset `start` (one range request when remote)."""
        if length <= 0:
            return b""
        return self.backend(uri).read_range(uri, start, length)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        """A streaming binary reader for `uri` (remote bodies are streamed, not buffered)."""
        with self.backend(uri).open_read(uri) as f:
            yield f

    def open_stream(self, uri: str, buffer_bytes: int = STREAM_BUFFER_BYTES, start: int = 0) -> BinaryIO:
        """A buffered reader for reading `uri` from byte `start` to the end over a long time: on
        S3 it resumes after a dropped connection without losing or repeating a byte. The caller
        closes it."""
        return self.backend(uri).open_stream(uri, buffer_bytes, start)

    def exists(self, uri: str) -> bool:
        """True if `uri` is an existing file or object."""
        return self.backend(uri).exists(uri)

    def size(self, uri: str) -> int:
        """Size of `uri` in bytes."""
        return self.backend(uri).size(uri)

    def is_folder(self, uri: str) -> bool:
        """True if `uri` can be listed (a local folder, any S3 prefix; never an http URL)."""
        return self.backend(uri).is_folder(uri)

    def iter_files(self, root: str) -> Iterator[FileEntry]:
        """Every file under `root`, recursively, sorted by relative path, streamed page by page
        (S3) or folder by folder (local): a listing of 1e8 objects never sits in memory."""
        return self.backend(root).iter_files(root)

    def list_files(self, root: str) -> list[FileEntry]:
        """`iter_files` as a list, for roots known to be small (a dataset's shard folder)."""
        return list(self.iter_files(root))

    def local_path(self, uri: str) -> Optional[str]:
        """The filesystem path of `uri` when it is on this machine, else None."""
        return local_path(uri)

    # ---- writing -------------------------------------------------------------------------
    def check_writable(self, root: str) -> None:
        """UsageError with the reason unless files can be written under `root` (made if local)."""
        self.backend(root).check_writable(root)

    @contextlib.contextmanager
    def open_atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        """A binary writer whose content appears at `uri` only if the block exits cleanly
        (local: temporary file renamed over the target; S3: multipart upload completed)."""
        with self.backend(uri).open_atomic_write(uri) as f:
            yield f

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Atomically write `data` to `uri`."""
        with self.open_atomic_write(uri) as f:
            f.write(data)

    def remove(self, uri: str) -> None:
        """Remove the one file or object at `uri`. Removing one that does not exist is a no-op
        (S3's delete semantics, kept for local files too), so a cleanup that was interrupted
        can simply run again. Read-only storage (http) raises UsageError."""
        self.backend(uri).remove(uri)

    def remove_unfinished_writes(self, root: str, folders: tuple[str, ...] = ("",)) -> int:
        """Remove what killed atomic writes left in `folders` of `root` (local temporary files,
        S3 incomplete multipart uploads). Only for an output no other process writes to."""
        return self.backend(root).remove_unfinished_writes(root, folders)

    # ---- Ray Train -----------------------------------------------------------------------
    def arrow_filesystem(self, uri: str):
        """(path, pyarrow filesystem or None) for Ray Train's RunConfig: local folders go as
        absolute paths; remote roots as this Storage seen through a pyarrow adapter, so Ray
        Train writes checkpoints through the same client and settings as everything else."""
        if is_local(uri):
            import os

            return os.path.abspath(fs_path(uri)), None
        from groundfloor.storage.arrow import arrow_filesystem

        return arrow_filesystem(self, uri)
