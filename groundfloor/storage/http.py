"""Read-only ``http://`` / ``https://`` backend on urllib3 (already installed with botocore).

For manifests that point at images on a web server or CDN. A URL cannot be listed or written;
a 404/410 is FileNotFoundError naming the URL, other errors and dropped connections (after a
few retries with back-off) are ConnectionError naming the URL, so a shard build quarantines
the sample with the reason instead of failing the run.
"""
from __future__ import annotations

import contextlib
import io
from typing import BinaryIO, Iterator

from groundfloor.storage.backend import Backend

RETRIES = 3
BACKOFF_S = 0.2
TIMEOUT_S = 30.0


class HttpBackend(Backend):
    """GET and HEAD (ranged GET for `read_range`) through one pooled urllib3 manager."""

    name = "http(s)"

    def __init__(self) -> None:
        self._pool = None

    def __getstate__(self) -> dict:
        return {"_pool": None}

    @property
    def pool(self):
        if self._pool is None:
            import urllib3

            retry = urllib3.Retry(total=RETRIES, backoff_factor=BACKOFF_S, raise_on_status=False,
                                  status_forcelist=(429, 500, 502, 503, 504))
            self._pool = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(TIMEOUT_S))
        return self._pool

    def _request(self, method: str, uri: str, headers: dict | None = None, stream: bool = False):
        import urllib3

        try:
            response = self.pool.request(method, uri, headers=headers or {}, preload_content=not stream)
        except urllib3.exceptions.HTTPError as err:
            reason = getattr(err, "reason", None) or err
            raise ConnectionError(f"{uri}: {reason}") from None
        if response.status in (404, 410):
            response.release_conn()
            raise FileNotFoundError(f"no such object: {uri} (HTTP {response.status})")
        if response.status >= 400:
            response.release_conn()
            raise ConnectionError(f"{uri}: HTTP {response.status} {response.reason}")
        return response

    def read_bytes(self, uri: str) -> bytes:
        return self._request("GET", uri).data

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        response = self._request("GET", uri, {"Range": f"bytes={start}-{start + length - 1}"})
        if response.status == 206:
            return response.data
        return response.data[start:start + length]  # a server that ignores Range

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        response = self._request("GET", uri, stream=True)
        try:
            yield response
        finally:
            response.release_conn()

    def open_stream(self, uri: str, buffer_bytes: int, start: int = 0) -> BinaryIO:
        headers = {"Range": f"bytes={start}-"} if start else None
        return io.BufferedReader(self._request("GET", uri, headers=headers, stream=True), buffer_bytes)

    def exists(self, uri: str) -> bool:
        try:
            self._request("HEAD", uri)
            return True
        except FileNotFoundError:
            return False

    def size(self, uri: str) -> int:
        length = self._request("HEAD", uri).headers.get("Content-Length")
        if length is None:
            return len(self.read_bytes(uri))
        return int(length)
