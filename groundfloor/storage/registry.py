"""The one place where a URI's scheme picks its backend class.

Adding a store (GCS, Azure) is one `Backend` subclass and one line here; nothing else in the
code base knows which schemes exist.
"""
from __future__ import annotations

from typing import Callable

from groundfloor.storage.backend import Backend
from groundfloor.storage.http import HttpBackend
from groundfloor.storage.local import LocalBackend
from groundfloor.storage.s3 import S3Backend
from groundfloor.storage.settings import S3Settings
from groundfloor.storage.uri import require_location, scheme_of
from groundfloor.errors import UsageError

# scheme -> factory(settings) -> backend; "" is a plain local path.
BACKENDS: dict[str, Callable[[S3Settings], Backend]] = {
    "": lambda settings: LocalBackend(),
    "file": lambda settings: LocalBackend(),
    "s3": S3Backend,
    "http": lambda settings: HttpBackend(),
    "https": lambda settings: HttpBackend(),
}


def backend_key(uri: str) -> str:
    """The registry key for `uri` (backends shared by several schemes share one instance)."""
    scheme = scheme_of(require_location(uri))
    if scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS if s)
        raise UsageError(f"{uri!r}: unsupported storage scheme {scheme}:// (known: {known}, or a local path)")
    return {"file": "", "https": "http"}.get(scheme, scheme)
