"""The one S3 client configuration, and the one precedence rule for the endpoint.

Endpoint precedence, for every command and config (written here only):

    1. the command's ``--endpoint-url`` flag
    2. the config file's ``endpoint_url`` field (``data.endpoint_url`` for training)
    3. the environment: ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL`` (the AWS SDK names)
    4. none: AWS itself

The endpoint is resolved once, where a `Storage` is made, and travels with it when it is pickled
to workers (which may run on nodes whose environment lacks the variable). Region and
credentials come from the standard AWS chain (environment, shared config/credentials files,
instance or pod role): never from viewstream's own configs, so no secret is ever in one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Standard mode retries throttling and transient errors with back-off; 5 attempts rides out
# a brief outage of an S3-compatible store without stalling a broken run for minutes.
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 60


def resolve_endpoint(flag: Optional[str] = None, config: Optional[str] = None) -> Optional[str]:
    """The S3 endpoint by the precedence above (flag > config > environment > AWS)."""
    for value in (flag, config, *(os.environ.get(name) for name in ENDPOINT_ENV)):
        if value:
            return value
    return None


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: endpoint (None: AWS) and region (None: the AWS chain decides)."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None

    @classmethod
    def resolve(cls, endpoint_url: Optional[str] = None) -> "S3Settings":
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls(resolve_endpoint(endpoint_url), region)

    def client(self):
        """A boto3 S3 client for these settings (boto3 is slow to import: only on first use)."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                        connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url,
                                              region_name=self.region, config=config)
