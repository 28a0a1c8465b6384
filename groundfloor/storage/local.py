"""Local filesystem backend: plain files, atomic writes by write-to-temporary-and-rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator

from groundfloor.storage.backend import Backend, FileEntry
from groundfloor.storage.uri import fs_path
from groundfloor.errors import UsageError

TEMP_PREFIX = ".tmp-"  # atomic writes go to {folder}/.tmp-XXXX-{name} until renamed


class LocalBackend(Backend):
    """Paths on this machine (``/a/b``, ``rel/b``, ``file:///a/b``)."""

    name = "local"
    writable = True

    def read_bytes(self, uri: str) -> bytes:
        with open(fs_path(uri), "rb") as f:
            return f.read()

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        with open(fs_path(uri), "rb") as f:
            f.seek(start)
            return f.read(length)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        with open(fs_path(uri), "rb") as f:
            yield f

    def open_stream(self, uri: str, buffer_bytes: int, start: int = 0) -> BinaryIO:
        stream = open(fs_path(uri), "rb", buffering=buffer_bytes)
        if start:
            stream.seek(start)
        return stream

    def exists(self, uri: str) -> bool:
        return os.path.isfile(fs_path(uri))

    def size(self, uri: str) -> int:
        return os.path.getsize(fs_path(uri))

    def is_folder(self, uri: str) -> bool:
        return os.path.isdir(fs_path(uri))

    def iter_files(self, root: str) -> Iterator[FileEntry]:
        """Depth-first, each folder's entries sorted by name with folders as ``name/``: this
        yields exactly the order of sorted relative paths while holding one folder at a time.

        Regular files and symlinks to files are listed; symlinked folders are not followed
        (no cycles); a broken symlink is listed with size 0 so that it reaches validation and
        is quarantined rather than silently dropped."""
        base = fs_path(root)
        if not os.path.isdir(base):
            return
        yield from self._walk(base, "")

    def _walk(self, folder: str, prefix: str) -> Iterator[FileEntry]:
        with os.scandir(folder) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
        entries.sort(key=lambda pair: pair[0])
        for key, entry in entries:
            if key.endswith("/"):
                yield from self._walk(entry.path, prefix + key)
                continue
            try:
                size = os.stat(entry.path).st_size
            except OSError:  # broken symlink, vanished file: validation will say why
                size = 0
            yield FileEntry(entry.path, prefix + entry.name, size)

    def check_writable(self, root: str) -> None:
        path = fs_path(root)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"output {root!r} exists and is not a folder")
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            raise UsageError(f"output {root!r} is not writable: {err.strerror or err}") from None

    @contextlib.contextmanager
    def open_atomic_write(self, uri: str) -> Iterator[BinaryIO]:
        """A temporary file next to the target, fsynced and renamed over it on success."""
        path = fs_path(uri)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(err, OSError) and err.filename is None:  # a write() failing names no file
                raise OSError(err.errno, err.strerror, path) from err
            raise

    def remove_unfinished_writes(self, root: str, folders: tuple[str, ...]) -> int:
        removed = 0
        for folder in folders:
            path = os.path.join(fs_path(root), folder)
            names = os.listdir(path) if os.path.isdir(path) else []
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(path, name))
                        removed += 1
        return removed

    def remove(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fs_path(uri))


