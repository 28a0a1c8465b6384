"""A real S3-compatible server (moto) on 127.0.0.1 with test credentials, for any test module."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3_server(set_endpoint_env: bool = False) -> Iterator[str]:
    """Start moto's threaded server on a free 127.0.0.1 port; yield its endpoint URL.

    Test credentials are put in the environment for the duration (moto accepts any), and
    AWS_ENDPOINT_URL too when `set_endpoint_env` (else it is unset, so only code given the
    endpoint explicitly finds the server); the environment is restored afterwards.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = dict(TEST_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if not set_endpoint_env:
        del os.environ["AWS_ENDPOINT_URL"]
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
