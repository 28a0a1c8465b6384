"""Where runs persist: any `groundfloor.storage` URI, handed to Ray Train as a pyarrow filesystem."""
from __future__ import annotations

from typing import Optional

from groundfloor.storage import Storage


def storage_for(path: str, endpoint_url: Optional[str] = None):
    """(storage_path, filesystem or None) for Ray Train's RunConfig from a folder or URI.

    The filesystem is `Storage` adapted to pyarrow, so checkpoints use the same S3 client,
    endpoint and credentials as the data (see `groundfloor.storage.arrow`)."""
    return Storage(endpoint_url).arrow_filesystem(path)
