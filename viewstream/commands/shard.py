"""`viewstream shard`: flags and the YAML config to `sharding.run.shard_dataset` / `plan_dataset`.

Precedence: defaults < YAML --config < --set < flags given on the line. Every field is
validated (the build's `ShardConfig` and the run's `ShardRunOptions`) before any work, so a bad
value is one line naming the field.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, is_dataclass

from groundfloor.errors import UsageError
from viewstream.argtypes import parse_size, positive_int
from viewstream.cliflags import add_address, add_config, add_endpoint_url, add_json, with_example, write_json

DEFAULT_PREFETCH = 8  # sharding.build.DEFAULT_PREFETCH (not imported: it would pull in PIL at start-up)
DEFAULT_MAX_PIXELS = 89_478_485  # sharding.validate.DEFAULT_MAX_PIXELS, for --help (a test keeps them equal)

SHARD_EXAMPLES = (
    "viewstream shard photos/ ds/ --group-by dir --label-from parent",
    "viewstream shard s3://bucket/photos s3://bucket/ds --ray --address auto",
    "viewstream shard inputs.csv ds/   # a manifest of local paths, s3:// or https:// URIs",
    "viewstream shard --config configs/shard.yaml --set shard_samples=5000",
    "viewstream shard 'lists/*.parquet' --dry-run   # plan only: shards, bytes per shard, largest group",
    "viewstream shard listings.parquet ds/ --dedup-across-groups merge   # one group per shared photo",
    "viewstream shard 's3://b/laion/{00000..00999}.tar' s3://b/ds --label-from json:label   # WebDataset",
    "viewstream shard urls.parquet ds/ --uri-column url --keep-columns caption,key   # img2dataset list",
)
# Flags that are also fields of the YAML config (flag dest -> config key); a flag given on the
# command line wins over --set, which wins over the YAML file, which wins over the defaults.
CONFIG_FLAGS = ("input", "output", "name", "group_by", "label_from", "uri_column", "keep_columns",
                "bytes_column", "shard_bytes", "shard_samples",
                "shuffle_seed", "max_side", "quality", "max_pixels", "workers", "ray", "address",
                "ray_cpus", "endpoint_url", "prefetch", "dedup_across_groups")


def field_choice(*plain: str):
    """An argparse type: one of `plain`, or json:FIELD / column:NAME (cls for labels)."""
    shown = ", ".join([*plain, "json:FIELD", "column:NAME"])

    def parse(value: str) -> str:
        kind, _, name = value.partition(":")
        if value in plain or (kind in ("json", "column") and name):
            return value
        raise argparse.ArgumentTypeError(f"{value!r} is not one of: {shown}")
    return parse


def add_command(subparsers) -> None:
    shard = subparsers.add_parser(
        "shard", help="pack images / natural-view groups into WebDataset shards",
        description="Pack a folder, a manifest (.csv/.jsonl/.parquet with a uri column of local "
                    "paths or s3:// / http(s):// URIs, or a Parquet with the image bytes inside), several "
                    "manifests (a glob, a folder of manifest files, an S3 Inventory manifest.json), "
                    "WebDataset tars (a folder, a glob, a brace pattern, .tar/.tar.gz/.tgz) or an s3:// prefix into "
                    "WebDataset shards with .idx, per-shard index and quarantine parts, "
                    "shards.parquet and manifest.json. Rerun the same command to resume.",
        **with_example(*SHARD_EXAMPLES),
    )
    shard.add_argument("input", nargs="?", default=None,
                       help="folder, manifest file, glob of manifests ('lists/*.parquet'), S3 Inventory "
                            "manifest.json, WebDataset tars (a folder, a tar, 'shards-{000000..000099}.tar'), "
                            "or s3://bucket/prefix (or `input:` in --config)")
    shard.add_argument("output", nargs="?", default=None,
                       help="output folder or s3://bucket/prefix (or `output:` in --config; not with --dry-run)")
    add_config(shard)
    shard.add_argument("--group-by", default=None, type=field_choice("file", "dir"), metavar="file|dir|json:FIELD|column:NAME",
                       help="file (default): each image (a WebDataset sample, a manifest row) is a sample; dir: "
                            "each leaf folder is one natural-view group; json:FIELD: WebDataset samples next to "
                            "each other in a tar with the same value of FIELD in their .json are one group; "
                            "column:NAME: manifest rows with the same NAME are one group")
    shard.add_argument("--label-from", default=None, type=field_choice("none", "parent", "cls"), metavar="none|parent|cls|json:FIELD|column:NAME",
                       help="parent: the folder above the sample is its label (ImageFolder style); cls: a "
                            "WebDataset sample's .cls member; json:FIELD: a field of its .json; column:NAME: a "
                            "manifest column")
    shard.add_argument("--uri-column", default=None, metavar="NAME",
                       help="the manifest column that holds the inputs (default uri; img2dataset lists: url)")
    shard.add_argument("--keep-columns", default=None, metavar="A,B",
                       help="manifest columns kept with each photo, under meta in its sample's {key}.json")
    shard.add_argument("--bytes-column", default=None, metavar="NAME",
                       help="a Parquet column of image bytes (default: an `image` column of struct<bytes, path>, "
                            "the Hugging Face layout, is recognised)")
    shard.add_argument("--name", default=None, help="shard name prefix (letters, digits, _ and -; default data)")
    shard.add_argument("--shard-bytes", type=parse_size, default=None,
                       help="target input bytes per shard (default 256MiB)")
    shard.add_argument("--shard-samples", type=positive_int, default=None, help="max samples per shard (default 10000)")
    order = shard.add_mutually_exclusive_group()
    order.add_argument("--shuffle-seed", type=int, default=None,
                       help="groups are spread over shards in this seeded order (default 0), so every "
                            "shard is a fair mix even when paths cluster classes")
    order.add_argument("--sorted", action="store_true", help="keep groups sorted by id instead of shuffled")
    shard.add_argument("--max-side", type=positive_int, default=None,
                       help="resize images whose longer side exceeds this (re-encodes them)")
    shard.add_argument("--quality", type=positive_int, default=None, help="JPEG quality of re-encoded images (1-100, default 90)")
    shard.add_argument("--max-pixels", type=positive_int, default=None,
                       help=f"quarantine images with more pixels (decompression bombs; default {DEFAULT_MAX_PIXELS})")
    shard.add_argument("--dedup-across-groups", choices=("report", "drop", "keep-first", "merge"), default=None,
                       help="a photo (same sha256) held by several groups is always listed in duplicates.parquet; "
                            "report (default): nothing else changes, and two groups holding it can meet in a "
                            "batch as negatives of each other; drop: removed from every group; keep-first: "
                            "kept in the first group (shard order) only; merge: those groups become one group "
                            "(merged.parquet lists the merged-away ones). Removed photos are quarantined with "
                            "their reason. Found after the build (the hashes are of the stored bytes), so "
                            "--dry-run cannot show them")
    where = shard.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, help="local worker processes (default 1)")
    where.add_argument("--ray", action="store_true", default=None, help="build shards as Ray tasks")
    add_address(shard)
    shard.add_argument("--ray-cpus", type=positive_int, default=None, help="CPUs of a local Ray started here")
    add_endpoint_url(shard)
    shard.add_argument("--prefetch", type=positive_int, default=None,
                       help=f"reads in flight per shard task (default {DEFAULT_PREFETCH} for S3 and http inputs, "
                            "sized for their latency; local files are read one by one in the task, raise it "
                            "for a slow network filesystem; does not change the output)")
    shard.add_argument("--dry-run", action="store_true",
                       help="only plan: print inputs, groups, shards, bytes per shard, the largest group "
                            "and groups split across manifest files; build nothing")
    add_json(shard)
    shard.add_argument("--no-progress", action="store_true", help="no progress bar")
    shard.set_defaults(func=run_shard)


def shard_settings(args: argparse.Namespace) -> dict:
    """The shard run's settings: defaults < YAML --config < --set < flags given on the line."""
    from groundfloor.config_files import apply_override, load_yaml_config

    data: dict = {}
    if args.config:
        data = load_yaml_config(args.config, args.overrides)
    else:
        for assignment in args.overrides:
            apply_override(data, assignment)
    for key in CONFIG_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.sorted:
        data["shuffle_seed"] = None
    if isinstance(data.get("shard_bytes"), str):
        try:
            data["shard_bytes"] = parse_size(data["shard_bytes"])
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"shard_bytes: {err}") from None
    for key in ("input",) if getattr(args, "dry_run", False) else ("input", "output"):
        if not data.get(key):
            raise UsageError(f"no {key}: pass it as an argument or as `{key}:` in --config")
    return data


def run_shard(args: argparse.Namespace) -> int:
    from sharding.run import plan_dataset, shard_dataset, split_settings

    config, run = split_settings(shard_settings(args))
    if args.dry_run:
        plan = plan_dataset(run.input, config, endpoint_url=run.endpoint_url, progress=not args.no_progress)
        print(plan.format())
        write_json(args.json_out, asdict(plan) if is_dataclass(plan) else vars(plan))
        return 0
    summary = shard_dataset(
        run.input, run.output, config,
        workers=run.workers if not run.ray else (run.ray_cpus or 1), ray=run.ray,
        ray_address=run.address, endpoint_url=run.endpoint_url, progress=not args.no_progress,
        prefetch=run.prefetch,
    )
    print(summary.format())
    write_json(args.json_out, asdict(summary))
    return 0
