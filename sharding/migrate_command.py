"""`viewstream migrate ROOT`: argument parsing only; the work is `sharding.migrate`."""
from __future__ import annotations

import argparse
import json


def add_commands(subparsers) -> None:
    """Register `migrate` on the front door's subparsers."""
    parser = subparsers.add_parser(
        "migrate", help="rewrite a dataset of an older format version in place",
        description="Rewrite a format-version-1 dataset (folder or s3:// prefix) in place as "
                    "version 2: per-shard index parts, shards.parquet, a small manifest. "
                    "Idempotent; a version-2 dataset is left as it is.")
    parser.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO, moto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from sharding.migrate import migrate_dataset

    report = migrate_dataset(args.dataset, endpoint_url=args.endpoint_url,
                             progress=not args.no_progress)
    print(json.dumps(report.as_dict()))
    return 0
