"""Where runs persist: a local folder or ``s3://bucket/prefix`` through pyarrow's filesystem.

Ray Train writes checkpoints through a pyarrow filesystem; the S3 endpoint comes from the
standard ``AWS_ENDPOINT_URL`` (S3-compatible stores, moto in tests) and credentials from the
usual AWS chain (environment, instance role), never from config files.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs


def s3_filesystem(uri: str) -> tuple[pafs.S3FileSystem, str]:
    """An S3 filesystem for `uri` and the ``bucket/prefix`` path inside it."""
    parsed = urlparse(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
    if endpoint:
        ep = urlparse(endpoint)
        kwargs["endpoint_override"] = ep.netloc or ep.path
        kwargs["scheme"] = ep.scheme or "https"
    fs = pafs.S3FileSystem(**kwargs)
    return fs, f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")


def storage_for(path: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, filesystem) for Ray Train's RunConfig from a folder or s3:// URI."""
    if path.startswith("s3://"):
        fs, inner = s3_filesystem(path)
        return inner, fs
    return os.path.abspath(path), None
