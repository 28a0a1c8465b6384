"""`viewstream migrate ROOT`: a format-version-1 dataset rewritten in place (`sharding.migrate`)."""
from __future__ import annotations

import argparse
import json

from viewstream.cliflags import add_endpoint_url, add_json, with_example, write_json


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate", help="rewrite a dataset of an older format version in place",
        description="Rewrite a format-version-1 dataset (folder or s3:// prefix) in place as "
                    "version 2: per-shard index parts, shards.parquet, a small manifest. "
                    "Idempotent; a version-2 dataset is left as it is.",
        **with_example("viewstream migrate data/shards",
                       "viewstream migrate s3://bucket/ds --endpoint-url http://127.0.0.1:9000"))
    parser.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    add_endpoint_url(parser)
    add_json(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from sharding.migrate import migrate_dataset

    report = migrate_dataset(args.dataset, endpoint_url=args.endpoint_url, progress=not args.no_progress)
    print(json.dumps(report.as_dict()))
    write_json(args.json_out, report.as_dict())
    return 0
