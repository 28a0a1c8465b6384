"""`viewstream eval {knn,linear,retrieval}`: a checkpoint (with shards) or embeddings files
through `evaluation.knn`, `evaluation.linear` and `evaluation.retrieval`."""
from __future__ import annotations

import argparse

from groundfloor.errors import UsageError
from viewstream.argtypes import positive_int
from viewstream.cliflags import resolve_device, with_example
from viewstream.commands.model_inputs import add_model_inputs, emit, model_from_args

EXAMPLES = {
    "knn": "viewstream eval knn --checkpoint runs/simclr --train ds/train --test ds/test --json knn.json",
    "linear": "viewstream eval linear --train-embeddings train.parquet --test-embeddings test.parquet",
    "retrieval": "viewstream eval retrieval --checkpoint runs/simclr --dataset ds/views --k 1 5",
}


def add_command(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a checkpoint: kNN, linear probe, retrieval recall",
                               **with_example(EXAMPLES["knn"], EXAMPLES["linear"], EXAMPLES["retrieval"]))
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    for name, help_text, func in (("knn", "weighted kNN (cosine, T=0.07) top-1/top-5", run_knn),
                                  ("linear", "linear probe on frozen features, top-1/top-5", run_linear)):
        p = ev_sub.add_parser(name, help=help_text, **with_example(EXAMPLES[name]))
        add_model_inputs(p)
        p.add_argument("--train", help="labelled train shards (dataset folder or s3://; a,b for several roots)")
        p.add_argument("--test", help="labelled test shards")
        p.add_argument("--train-embeddings", help="instead of checkpoint + shards: embeddings Parquet of train")
        p.add_argument("--test-embeddings", help="embeddings Parquet of test")
        if name == "knn":
            p.add_argument("--k", type=positive_int, nargs="+", default=[20, 200])
            p.add_argument("--temperature", type=float, default=0.07)
        else:
            p.add_argument("--c", type=float, default=None, help="inverse L2 strength (default: chosen on held-out train)")
            p.add_argument("--seed", type=int, default=0, help="seed of the held-out split that chooses C")
        p.set_defaults(func=func)

    p = ev_sub.add_parser("retrieval", help="recall@k of another photo of the same group",
                          **with_example(EXAMPLES["retrieval"]))
    add_model_inputs(p)
    p.add_argument("--dataset", help="shards with natural-view groups")
    p.add_argument("--embeddings", help="instead of checkpoint + shards: embeddings Parquet (rows sharing a group)")
    p.add_argument("--k", type=positive_int, nargs="+", default=[1, 5, 10])
    p.add_argument("--index-kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto")
    p.set_defaults(func=run_retrieval)


def labelled_splits(args: argparse.Namespace):
    """(train, test, producer) from --train-/--test-embeddings or --checkpoint with --train/--test."""
    from evaluation.splits import embedding_splits, shard_splits

    if args.train_embeddings or args.test_embeddings:
        if not (args.train_embeddings and args.test_embeddings):
            raise UsageError("pass both --train-embeddings and --test-embeddings")
        return embedding_splits(args.train_embeddings, args.test_embeddings)
    if not (args.train and args.test):
        raise UsageError("pass --checkpoint with --train and --test shards, or --train-embeddings and --test-embeddings")
    backbone, info, size, crop = model_from_args(args)
    train, test = shard_splits(backbone, args.train, args.test, size, crop, args.batch_size,
                               endpoint_url=args.endpoint_url, device=resolve_device(args.device))
    return train, test, info.producer()


def run_knn(args: argparse.Namespace) -> int:
    from evaluation.knn import knn_evaluate

    train, test, producer = labelled_splits(args)
    results = knn_evaluate(train.features, train.labels, test.features, test.labels,
                           ks=args.k, temperature=args.temperature)
    out = {"knn": {str(k): r.as_dict() for k, r in results.items()}, "source": producer}
    lines = [f"kNN (cosine, T={args.temperature}) {len(train)} train / {len(test)} test"]
    lines += [f"  k={k:<4d} top-1 {100 * r.top1:6.2f}%  top-5 {100 * r.top5:6.2f}%" for k, r in results.items()]
    return emit(out, args.json_out, lines)


def run_linear(args: argparse.Namespace) -> int:
    from evaluation.linear import LinearProbeConfig, linear_probe_evaluate

    train, test, producer = labelled_splits(args)
    if args.c is not None and args.c <= 0:
        raise UsageError(f"--c {args.c}: expected a positive number")
    result = linear_probe_evaluate(train.features, train.labels, test.features, test.labels,
                                   LinearProbeConfig(c=args.c, seed=args.seed))
    out = {"linear": result.as_dict(), "source": producer}
    return emit(out, args.json_out, [
        f"linear probe (C={result.c:g}) {result.num_train} train / {result.num_test} test",
        f"  top-1 {100 * result.top1:6.2f}%  top-5 {100 * result.top5:6.2f}%  (train top-1 {100 * result.train_top1:.2f}%)"])


def run_retrieval(args: argparse.Namespace) -> int:
    from evaluation.retrieval import group_recall_at_k
    from evaluation.search import IndexConfig

    if args.embeddings:
        from evaluation.embeddings import read_embeddings

        emb = read_embeddings(args.embeddings)
        vectors, groups, producer = emb.vectors, emb.groups, emb.metadata
    else:
        if not args.dataset:
            raise UsageError("pass --checkpoint with --dataset, or --embeddings")
        from evaluation.sources import eval_loader, natural_view_features

        backbone, info, size, crop = model_from_args(args)
        loader = eval_loader(args.dataset, size, args.batch_size, crop_fraction=crop, views=2,
                             endpoint_url=args.endpoint_url, device=resolve_device(args.device))
        vectors, groups, _ = natural_view_features(backbone, loader)
        producer = info.producer()
    result = group_recall_at_k(vectors, groups, args.k, config=IndexConfig(kind=args.index_kind))
    out = {"retrieval": result.as_dict(), "source": producer}
    line = "  ".join(f"recall@{k} {100 * v:6.2f}%" for k, v in result.recall.items())
    return emit(out, args.json_out, [f"retrieval: {result.num_queries} queries in {result.num_gallery} images "
                                     f"({result.index_kind} index)", f"  {line}"])
