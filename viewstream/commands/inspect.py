"""`viewstream inspect`: summary, sha256 check and contact sheet of a dataset (`sharding.inspect`)."""
from __future__ import annotations

import argparse
from dataclasses import asdict, is_dataclass

from viewstream.argtypes import positive_int
from viewstream.cliflags import add_endpoint_url, add_json, with_example, write_json


def add_command(subparsers) -> None:
    inspect = subparsers.add_parser(
        "inspect", help="summarize a dataset, verify shard checksums, draw a contact sheet",
        **with_example("viewstream inspect ds/ --grid sheet.png",
                       "viewstream inspect s3://bucket/ds --no-verify --json report.json"),
    )
    inspect.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    inspect.add_argument("--grid", default=None, help="write a contact sheet PNG here")
    inspect.add_argument("--groups", type=positive_int, default=8, help="groups (rows) in the contact sheet")
    inspect.add_argument("--seed", type=int, default=0, help="which random groups the sheet shows")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every shard")
    add_endpoint_url(inspect)
    add_json(inspect)
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from sharding.inspect import inspect_dataset

    report = inspect_dataset(args.dataset, verify=not args.no_verify, grid=args.grid,
                             grid_groups=args.groups, seed=args.seed, endpoint_url=args.endpoint_url)
    print(report.format())
    write_json(args.json_out, asdict(report) if is_dataclass(report) else vars(report))
    return 0 if report.ok else 1
