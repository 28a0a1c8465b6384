"""The interface every storage backend implements, and the listing entry they return."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from groundfloor.errors import UsageError


@dataclass(frozen=True)
class FileEntry:
    """One listed file: its URI, its path relative to the listed root, its size in bytes."""

    uri: str
    relpath: str
    size: int


class Backend:
    """One kind of storage (local, S3, HTTP). Methods a backend cannot do raise UsageError.

    Contract (checked by tests/sharding/test_storage_conformance.py for every backend):
    a missing object raises FileNotFoundError whose message names the URI; `iter_files`
    yields entries sorted by relative path, page by page, never the whole listing at once;
    `open_atomic_write` makes content visible only when its block exits cleanly; `remove` of a
    missing object is a no-op.
    """

    name = "?"
    writable = False

    def read_bytes(self, uri: str) -> bytes:
        raise NotImplementedError

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        raise NotImplementedError

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        raise NotImplementedError
        yield  # pragma: no cover

    def open_stream(self, uri: str, buffer_bytes: int, start: int = 0) -> BinaryIO:
        """A buffered reader for long sequential reads from byte `start` (S3: resumes after a
        dropped connection)."""
        raise NotImplementedError

    def exists(self, uri: str) -> bool:
        raise NotImplementedError

    def size(self, uri: str) -> int:
        raise NotImplementedError

    def is_folder(self, uri: str) -> bool:
        """Could `uri` hold files to list? (S3: any prefix can; HTTP: never.)"""
        return False

    def iter_files(self, root: str) -> Iterator[FileEntry]:
        raise UsageError(f"{root!r}: {self.name} storage cannot be listed (use a manifest of URIs)")

    def check_writable(self, root: str) -> None:
        if not self.writable:
            raise UsageError(f"{root!r}: {self.name} storage is read-only")

    @contextlib.contextmanager
    def open_atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        raise UsageError(f"{uri!r}: {self.name} storage is read-only")
        yield  # pragma: no cover

    def remove_unfinished_writes(self, root: str, folders: tuple[str, ...]) -> int:
        return 0

    def remove(self, uri: str) -> None:
        """Remove one file or object; a missing one is a no-op (see `Storage.remove`)."""
        raise UsageError(f"{uri!r}: {self.name} storage is read-only")
