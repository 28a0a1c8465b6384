"""The storage layer: bytes at any URI, chosen by scheme in one registry.

    local paths / file://   LocalBackend   read, ranged read, list, atomic write (rename), remove
    s3://bucket/key          S3Backend      read, ranged read, list, atomic write (multipart), remove
    http(s)://host/path      HttpBackend    read, ranged read (read-only; not listable)

Everything else in viewstream goes through `Storage` and the URI helpers here; no other module
tests a scheme. The S3 endpoint precedence (flag > config > environment > AWS) and the one S3
client configuration (region, retries, timeouts, the standard credential chain) are in
`groundfloor.storage.settings`.

Why boto3 behind this small interface (and not pyarrow.fs or fsspec for everything):
  * listings must stream: boto3's ``list_objects_v2`` paginator yields sorted pages, while
    ``pyarrow.fs.get_file_info(FileSelector)`` returns the whole listing as one list;
  * atomic writes need an abortable multipart upload and a way to find the debris of killed
    ones (``list_multipart_uploads``), which pyarrow does not expose;
  * resuming a shard stream after a dropped connection needs botocore's error types;
  * fsspec's s3fs/HTTP filesystems are async (aiobotocore/aiohttp) with event loops that do not
    survive forking into DALI and Ray workers, and would add a second S3 stack.
Ray Train needs a pyarrow filesystem for checkpoints; `groundfloor.storage.arrow` adapts `Storage`
to one, so there is still one S3 client. HTTP uses urllib3, which botocore already depends on.
"""
from groundfloor.storage.backend import Backend, FileEntry
from groundfloor.storage.core import STREAM_BUFFER_BYTES, Storage
from groundfloor.storage.s3 import ResumableS3Stream
from groundfloor.storage.settings import S3Settings, resolve_endpoint
from groundfloor.storage.uri import absolute, join, local_path, resolve_relative

__all__ = ["Backend", "FileEntry", "ResumableS3Stream", "S3Settings", "STREAM_BUFFER_BYTES",
           "Storage", "absolute", "join", "local_path", "resolve_endpoint", "resolve_relative"]
