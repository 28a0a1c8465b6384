"""`viewstream embed [--ray]`: checkpoint + shards -> embeddings Parquet, in one process
(`evaluation.local_embed`) or shard by shard on a Ray cluster (`evaluation.batch_embed`)."""
from __future__ import annotations

import argparse

from groundfloor.errors import UsageError
from viewstream.argtypes import positive_int
from viewstream.cliflags import add_address, resolve_device, with_example
from viewstream.commands.model_inputs import add_model_inputs, emit, model_from_args

EXAMPLES = (
    "viewstream embed --checkpoint runs/simclr --dataset ds/train --out train.parquet",
    "viewstream embed --ray --address auto --checkpoint s3://b/run --dataset s3://b/a s3://b/b --out s3://b/emb",
)


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="checkpoint + shards -> embeddings Parquet (one process, or --ray)",
                              **with_example(*EXAMPLES))
    add_model_inputs(p)
    p.add_argument("--dataset", required=True, nargs="+", help="dataset root(s) to embed (folders or s3://)")
    p.add_argument("--out", required=True,
                   help="embeddings Parquet file to write; with --ray a folder or s3:// prefix (one file per shard)")
    p.add_argument("--ray", action="store_true",
                   help="embed shard by shard on a Ray cluster (resumable: a rerun skips finished shards)")
    add_address(p)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="--ray: model copies (default: the cluster's GPUs, or CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1, help="--ray: CPUs (DALI + torch threads) per worker")
    p.set_defaults(func=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    from evaluation.batch_embed import EmbedJob, embed_identity, embed_on_ray, union_vocabulary
    from groundfloor.storage import Storage

    roots = list(dict.fromkeys(args.dataset))
    backbone, info, size, crop = model_from_args(args)
    vocab = union_vocabulary(roots, Storage(args.endpoint_url))
    identity = embed_identity(info, backbone, size, crop, vocab, roots)
    if args.ray:
        job = EmbedJob(args.checkpoint, size, crop, args.batch_size, args.out, identity, tuple(vocab), args.endpoint_url)
        report = embed_on_ray(job, roots, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                              device=args.device, address=args.address)  # auto: the cluster's GPUs decide
        return emit(report.as_dict() | {"out": args.out}, args.json_out,
                    [f"embedded {report.embedded_shards} shards ({report.rows} images) on {report.workers} "
                     f"{report.device} workers, skipped {report.skipped_shards} finished shards; {args.out}"])
    if args.workers or args.address:
        raise UsageError("--workers and --address go with --ray")
    from evaluation.local_embed import embed_locally

    rows = embed_locally(backbone, roots, args.out, identity, size, crop, args.batch_size, vocab,
                         endpoint_url=args.endpoint_url, device=resolve_device(args.device))
    return emit({"rows": rows, "out": args.out}, args.json_out, [f"wrote {rows} embeddings to {args.out}"])
