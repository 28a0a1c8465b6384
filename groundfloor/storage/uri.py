"""URI arithmetic that every backend shares: the scheme, joining, making local paths absolute.

Only this layer looks at a URI's scheme; the rest of the code asks `Storage` (or these
functions) instead of testing ``s3://`` itself, so a new backend is one class and one line in
`groundfloor.storage.registry`.
"""
from __future__ import annotations

import os
import posixpath
import re

from groundfloor.errors import UsageError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme_of(uri: str) -> str:
    """``"s3"`` for ``s3://b/k``, ``"https"`` for ``https://h/p``, ``""`` for a local path."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def is_local(uri: str) -> bool:
    """True for a path on this machine's filesystem (no scheme, or ``file://``)."""
    return scheme_of(uri) in ("", "file")


def fs_path(uri: str) -> str:
    """The filesystem path of a local URI (``file:///a/b`` -> ``/a/b``)."""
    return uri[len("file://"):] if uri.lower().startswith("file://") else uri


def local_path(uri: str) -> str | None:
    """The filesystem path of `uri` when it is on this machine, else None (remote)."""
    return fs_path(uri) if is_local(uri) else None


def join(root: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike (``join("s3://b", "k")``)."""
    scheme = scheme_of(root)
    bare = f"{scheme}://" if scheme else None
    out = root.rstrip("/") if root not in ("/", bare) else root
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}" if not out.endswith("/") else out + part
    return out


def require_location(uri: str) -> str:
    """`uri` itself, after checking that a remote URI names its bucket or host: ``s3://`` alone
    is a UsageError where it enters (stripped of its slashes it would read as a local folder
    ``s3:``)."""
    scheme = scheme_of(uri)
    if scheme and scheme != "file" and not _SCHEME.sub("", uri, count=1).strip("/"):
        raise UsageError(f"{uri!r} names no bucket (expected {scheme}://bucket/prefix)")
    return uri


def absolute(uri: str) -> str:
    """Local paths made absolute (workers run elsewhere); remote URIs without a trailing '/'."""
    if is_local(uri):
        return os.path.abspath(fs_path(uri))
    return require_location(uri).rstrip("/")


def resolve_relative(base_file: str, entry: str) -> str:
    """`entry` as written in the file `base_file` (a manifest): URIs and absolute paths stay,
    relative paths are taken relative to the folder holding `base_file`."""
    if scheme_of(entry) or os.path.isabs(entry):
        return entry
    if is_local(base_file):
        return os.path.join(os.path.dirname(os.path.abspath(fs_path(base_file))), entry)
    return posixpath.join(posixpath.dirname(base_file), entry)


def split_bucket(uri: str) -> tuple[str, str]:
    """``scheme://bucket/a/b`` -> ``("bucket", "a/b")``; ValueError without a bucket."""
    rest = _SCHEME.sub("", uri, count=1)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{uri!r} names no bucket (expected {scheme_of(uri)}://bucket/key)")
    return bucket, key


# A URI with any scheme, or an absolute local path: what a manifest entry needs no base for
# (as a regex, for vectorised checks over Arrow columns of uris).
ABSOLUTE_URI_REGEX = r"^([a-zA-Z][a-zA-Z0-9+.-]*://|/)"


def parent_folder(uri: str) -> str:
    """The folder holding `uri` (local: as an absolute path), the base of relative entries."""
    if is_local(uri):
        return os.path.dirname(os.path.abspath(fs_path(uri)))
    return posixpath.dirname(uri)


def s3_uri(bucket: str, key: str) -> str:
    """The URI of object `key` in S3 bucket `bucket` (S3 Inventory lists bucket and key apart)."""
    return f"s3://{bucket}/{key}"
