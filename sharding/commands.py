"""`viewstream shard` and `viewstream inspect`: argument parsing only; the work is in run/inspect.

Bad usage is a one-line error and exit code 2: argparse's own errors (unknown flag values,
malformed sizes) are printed as ``viewstream shard: error: ...`` without the usage block, and
everything the library rejects is a UsageError, which the front door prints the same way.
"""
from __future__ import annotations

import argparse
import re

from viewstream.errors import UsageError

from viewstream.argtypes import positive_int
from sharding.validate import DEFAULT_MAX_PIXELS

DEFAULT_PREFETCH = 8  # sharding.build.DEFAULT_PREFETCH (not imported: it would pull in PIL at start-up)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000, '64MiB' -> 67_108_864, '1000' -> 1000 (argparse type)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (expected e.g. 1000, 64MB, 256MiB)")
    unit = (match.group(2) or "").lower().rstrip("b")
    if unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} has an unknown unit (expected k, M, G, T, Ki, Mi, Gi, Ti)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def add_commands(subparsers) -> None:
    """Register `shard` and `inspect` on the front door's subparsers."""
    shard = subparsers.add_parser(
        "shard", help="pack images / natural-view groups into WebDataset shards",
        description="Pack a folder, a manifest (.csv/.jsonl/.parquet with a uri column), several "
                    "manifests (a glob, a folder of manifest files, an S3 Inventory manifest.json) "
                    "or an s3:// prefix into WebDataset shards with .idx, per-shard index and "
                    "quarantine parts, shards.parquet and manifest.json. Rerun the same command "
                    "to resume.",
    )
    shard.add_argument("input", help="folder, manifest file, glob of manifests ('lists/*.parquet'), "
                                     "S3 Inventory manifest.json, or s3://bucket/prefix")
    shard.add_argument("output", nargs="?", help="output folder or s3://bucket/prefix (not with --dry-run)")
    shard.add_argument("--group-by", choices=("file", "dir"), default="file",
                       help="file: each image is a sample; dir: each leaf folder is one natural-view group")
    shard.add_argument("--label-from", choices=("none", "parent"), default="none",
                       help="parent: the folder above the sample is its label (ImageFolder style)")
    shard.add_argument("--name", default="data", help="shard name prefix (letters, digits, _ and -)")
    shard.add_argument("--shard-bytes", type=parse_size, default=256 * 2**20,
                       help="target input bytes per shard (e.g. 256MiB)")
    shard.add_argument("--shard-samples", type=positive_int, default=10_000, help="max samples per shard")
    order = shard.add_mutually_exclusive_group()
    order.add_argument("--shuffle-seed", type=int, default=0,
                       help="groups are spread over shards in this seeded order (default 0), so every "
                            "shard is a fair mix even when paths cluster classes")
    order.add_argument("--sorted", action="store_true", help="keep groups sorted by id instead of shuffled")
    shard.add_argument("--max-side", type=positive_int, default=None,
                       help="resize images whose longer side exceeds this (re-encodes them)")
    shard.add_argument("--quality", type=positive_int, default=90, help="JPEG quality of re-encoded images (1-100)")
    shard.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                       help="quarantine images with more pixels (decompression bombs)")
    where = shard.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=1, help="local worker processes")
    where.add_argument("--ray", action="store_true", help="build shards as Ray tasks")
    shard.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    shard.add_argument("--ray-cpus", type=positive_int, default=None, help="CPUs of a local Ray started here")
    shard.add_argument("--endpoint-url", default=None,
                       help="S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    shard.add_argument("--prefetch", type=positive_int, default=DEFAULT_PREFETCH,
                       help=f"reads in flight per shard task (default {DEFAULT_PREFETCH}, sized for S3 latency; "
                            "does not change the output)")
    shard.add_argument("--dry-run", action="store_true",
                       help="only plan: print inputs, groups, shards, bytes per shard, the largest group "
                            "and groups split across manifest files; build nothing")
    shard.add_argument("--no-progress", action="store_true", help="no progress bar")
    shard.set_defaults(func=run_shard)

    inspect = subparsers.add_parser(
        "inspect", help="summarize a dataset, verify shard checksums, draw a contact sheet",
    )
    inspect.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    inspect.add_argument("--grid", default=None, help="write a contact sheet PNG here")
    inspect.add_argument("--groups", type=positive_int, default=8, help="groups (rows) in the contact sheet")
    inspect.add_argument("--seed", type=int, default=0, help="which random groups the sheet shows")
    inspect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every shard")
    inspect.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    inspect.set_defaults(func=run_inspect)


def run_shard(args: argparse.Namespace) -> int:
    from sharding.run import plan_dataset, shard_dataset

    fields = dict(name=args.name, group_by=args.group_by, label_from=args.label_from,
                  shard_bytes=args.shard_bytes, shard_samples=args.shard_samples, max_side=args.max_side,
                  quality=args.quality, max_pixels=args.max_pixels,
                  shuffle_seed=None if args.sorted else args.shuffle_seed)
    if args.dry_run:
        print(plan_dataset(args.input, endpoint_url=args.endpoint_url, progress=not args.no_progress,
                           **fields).format())
        return 0
    if args.output is None:
        raise UsageError("shard needs an OUTPUT folder or s3://bucket/prefix (or --dry-run)")
    summary = shard_dataset(
        args.input, args.output, **fields,
        workers=args.workers if not args.ray else (args.ray_cpus or 1), ray=args.ray,
        ray_address=args.ray_address, endpoint_url=args.endpoint_url, progress=not args.no_progress,
        prefetch=args.prefetch,
    )
    print(summary.format())
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from sharding.inspect import inspect_dataset

    report = inspect_dataset(args.dataset, verify=not args.no_verify, grid=args.grid,
                             grid_groups=args.groups, seed=args.seed, endpoint_url=args.endpoint_url)
    print(report.format())
    return 0 if report.ok else 1
