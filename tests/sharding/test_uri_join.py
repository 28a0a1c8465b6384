"""`join` of local paths and URIs: one separator between parts, whatever slashes they bring."""
from __future__ import annotations

from groundfloor.storage import join


def test_join_paths_and_uris():
    assert join("s3://b/pre/", "shards", "x.tar") == "s3://b/pre/shards/x.tar"
    assert join("/data", "shards/", "/x.tar") == "/data/shards/x.tar"
