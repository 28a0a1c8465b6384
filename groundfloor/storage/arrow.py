"""`Storage` seen as a pyarrow filesystem, because Ray Train persists checkpoints through one.

Ray Train's RunConfig takes a ``pyarrow.fs.FileSystem``; pyarrow's own S3FileSystem would be a
second S3 client with its own endpoint, retry and credential settings. This adapter keeps one:
Ray Train's uploads, listings and deletions go through the same backend as every other byte.
Object stores have no folders, so a "folder" is any prefix that has objects under it, and
`create_dir` is a no-op there.
"""
from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from groundfloor.storage.core import Storage
from groundfloor.storage.uri import scheme_of


def arrow_filesystem(storage: Storage, uri: str) -> tuple[str, pafs.FileSystem]:
    """(path inside the filesystem, filesystem) for a remote root like ``s3://bucket/prefix``."""
    scheme = scheme_of(uri)
    path = uri[len(scheme) + 3:].strip("/")
    return path, pafs.PyFileSystem(StorageHandler(storage, scheme))


class _CommitOnClose(io.RawIOBase):
    """A writer that completes an atomic write when closed (pyarrow closes, never exits a block)."""

    def __init__(self, context) -> None:
        super().__init__()
        self._context = context
        self._file = context.__enter__()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._file.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._context.__exit__(None, None, None)


class StorageHandler(pafs.FileSystemHandler):
    """pyarrow's FileSystemHandler over one remote scheme of a `Storage`."""

    def __init__(self, storage: Storage, scheme: str) -> None:
        self.storage, self.scheme = storage, scheme

    def __reduce__(self):
        return StorageHandler, (self.storage, self.scheme)

    def _uri(self, path: str) -> str:
        return f"{self.scheme}://{path.strip('/')}"

    def get_type_name(self) -> str:
        return f"viewstream-{self.scheme}"

    def equals(self, other) -> bool:
        return isinstance(other, StorageHandler) and other.scheme == self.scheme

    def normalize_path(self, path: str) -> str:
        return path.strip("/")

    def _info(self, path: str) -> pafs.FileInfo:
        path = path.strip("/")
        uri = self._uri(path)
        if path and "/" in path and self.storage.exists(uri):
            return pafs.FileInfo(path, pafs.FileType.File, size=self.storage.size(uri))
        if "/" not in path or next(iter(self.storage.iter_files(uri)), None) is not None:
            return pafs.FileInfo(path, pafs.FileType.Directory)  # a bucket, or a prefix with objects
        return pafs.FileInfo(path, pafs.FileType.NotFound)

    def get_file_info(self, paths):
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.strip("/")
        infos, folders = [], set()
        for entry in self.storage.iter_files(self._uri(base)):
            parts = entry.relpath.split("/")
            depth = len(parts) if selector.recursive else 1
            for i in range(1, min(len(parts), depth + 1)):
                folder = "/".join(parts[:i])
                if folder not in folders:
                    folders.add(folder)
                    infos.append(pafs.FileInfo(posixpath.join(base, folder), pafs.FileType.Directory))
            if len(parts) == 1 or selector.recursive:
                infos.append(pafs.FileInfo(posixpath.join(base, entry.relpath), pafs.FileType.File,
                                           size=entry.size))
        if not infos and not selector.allow_not_found and self._info(base).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such folder: {self._uri(base)}")
        return infos

    def create_dir(self, path, recursive):
        pass  # object stores have no folders

    def delete_dir_contents(self, path, missing_dir_ok=False):
        for entry in list(self.storage.iter_files(self._uri(path))):
            self.storage.remove(entry.uri)

    def delete_dir(self, path):
        self.delete_dir_contents(path)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete a whole bucket")

    def delete_file(self, path):
        uri = self._uri(path)
        self.storage.remove(uri)

    def copy_file(self, src, dest):
        self.storage.write_bytes(self._uri(dest), self.storage.read_bytes(self._uri(src)))

    def move(self, src, dest):
        self.copy_file(src, dest)
        self.delete_file(src)

    def open_input_stream(self, path):
        return pa.PythonFile(self.storage.open_stream(self._uri(path)), mode="r")

    def open_input_file(self, path):
        return pa.BufferReader(self.storage.read_bytes(self._uri(path)))

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_CommitOnClose(self.storage.open_atomic_write(self._uri(path))), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError(f"{self._uri(path)}: object stores cannot append")
