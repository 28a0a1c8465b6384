"""`viewstream eval {knn,linear,retrieval}`, `embed [--ray]`, `search {build,query,eval}`, `dedup`, `export`.

Each command reads a checkpoint (through `trainers.checkpoint.load_backbone`) and shards
(through the pipeline's ViewLoader with the eval recipe), or embeddings Parquet files made by
`embed`, then calls the pure pieces of `evaluation`. Results print as a short table and,
with ``--json PATH``, as one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from viewstream.argtypes import positive_int
from viewstream.cliflags import (add_address, add_device, add_endpoint_url, add_json, resolve_device,
                                 with_example, write_json)
from viewstream.errors import UsageError


def _add_model_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder, run folder (newest checkpoint) or s3:// URI")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="eval crop size (default: the checkpoint's monitor/recipe size)")
    p.add_argument("--crop-fraction", type=float, default=None, help="center-crop fraction (default 0.875)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    add_device(p)
    add_endpoint_url(p)
    add_json(p)


EXAMPLES = {
    "knn": "viewstream eval knn --checkpoint runs/simclr --train ds/train --test ds/test --json knn.json",
    "linear": "viewstream eval linear --train-embeddings train.parquet --test-embeddings test.parquet",
    "retrieval": "viewstream eval retrieval --checkpoint runs/simclr --dataset ds/views --k 1 5",
    "embed": "viewstream embed --checkpoint runs/simclr --dataset ds/train --out train.parquet",
    "embed_ray": "viewstream embed --ray --address auto --checkpoint s3://b/run --dataset s3://b/a s3://b/b --out s3://b/emb",
    "build": "viewstream search build train.parquet index/ --index-kind hnsw",
    "build_pq": "viewstream search build emb/ index/ --index 'IVF4096,PQ32' --shards 8 --hold-out 1000",
    "query": "viewstream search query index/ --image shoe.jpg --k 5 --grid grid.png",
    "eval": "viewstream search eval index/ --tune-nprobe --target 0.9",
    "dedup": "viewstream dedup emb/ --threshold 0.05 --out pairs.parquet --grid pairs.png",
    "export": "viewstream export --checkpoint runs/simclr --out backbone.safetensors",
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `eval`, `embed`, `search`, `dedup` and `export` on the front door."""
    ev = subparsers.add_parser("eval", help="evaluate a checkpoint: kNN, linear probe, retrieval recall",
                               **with_example(EXAMPLES["knn"], EXAMPLES["linear"], EXAMPLES["retrieval"]))
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    for name, help_text, func in (("knn", "weighted kNN (cosine, T=0.07) top-1/top-5", _eval_knn),
                                  ("linear", "linear probe on frozen features, top-1/top-5", _eval_linear)):
        p = ev_sub.add_parser(name, help=help_text, **with_example(EXAMPLES[name]))
        _add_model_inputs(p)
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
    _add_model_inputs(p)
    p.add_argument("--dataset", help="shards with natural-view groups")
    p.add_argument("--embeddings", help="instead of checkpoint + shards: embeddings Parquet (rows sharing a group)")
    p.add_argument("--k", type=positive_int, nargs="+", default=[1, 5, 10])
    p.add_argument("--index-kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto")
    p.set_defaults(func=_eval_retrieval)

    p = subparsers.add_parser("embed", help="checkpoint + shards -> embeddings Parquet (one process, or --ray)",
                              **with_example(EXAMPLES["embed"], EXAMPLES["embed_ray"]))
    _add_model_inputs(p)
    p.add_argument("--dataset", required=True, nargs="+", help="dataset root(s) to embed (folders or s3://)")
    p.add_argument("--out", required=True,
                   help="embeddings Parquet file to write; with --ray a folder or s3:// prefix (one file per shard)")
    p.add_argument("--ray", action="store_true",
                   help="embed shard by shard on a Ray cluster (resumable: a rerun skips finished shards)")
    add_address(p)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="--ray: model copies (default: the cluster's GPUs, or CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1, help="--ray: CPUs (DALI + torch threads) per worker")
    p.set_defaults(func=_embed)

    search = subparsers.add_parser("search", help="FAISS index of embeddings: build it, query it, measure it",
                                   **with_example(EXAMPLES["build"], EXAMPLES["build_pq"], EXAMPLES["query"],
                                                  EXAMPLES["eval"]))
    s_sub = search.add_subparsers(dest="search_command", metavar="SEARCH", required=True)
    p = s_sub.add_parser("build", help="build and save an index from embeddings Parquet (a file or a dataset folder)",
                         **with_example(EXAMPLES["build"], EXAMPLES["build_pq"]))
    p.add_argument("embeddings", help="embeddings Parquet file or folder (from `viewstream embed [--ray]`)")
    p.add_argument("index", help="folder to save the index in")
    p.add_argument("--index-kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto",
                   help="in-memory build (no --index): auto = exact up to --exact-max vectors, HNSW above")
    p.add_argument("--exact-max", type=positive_int, default=100_000)
    p.add_argument("--index", dest="factory", default=None,
                   help="FAISS factory string, built streaming: 'IVF4096,PQ32', 'OPQ32,IVF4096,PQ32', "
                        "'IVF4096_HNSW32,PQ32', 'Flat', ...")
    p.add_argument("--train-size", type=positive_int, default=None, help="training sample rows (default max(39 x lists, 65536))")
    p.add_argument("--add-batch", type=positive_int, default=65536, help="rows added per batch (the memory bound)")
    p.add_argument("--shards", type=positive_int, default=1, help="split into this many index shards (merged at query time)")
    p.add_argument("--hold-out", type=int, default=0, help="rows kept out of the index as `search eval` queries")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)  # cuda: train (k-means) with faiss-gpu when it sees a GPU (CPU otherwise, said so)
    add_json(p)
    p.set_defaults(func=_search_build)
    p = s_sub.add_parser("query", help="top-k neighbours of keys or image files",
                         **with_example(EXAMPLES["query"]))
    p.add_argument("index", help="index folder (from `viewstream search build`)")
    p.add_argument("--key", nargs="+", default=[], help="query with stored rows' keys")
    p.add_argument("--image", nargs="+", default=[], help="query with image files (needs the checkpoint)")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint the embeddings came from")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--grid", default=None, help="write a retrieval grid PNG here (needs the dataset)")
    p.add_argument("--dataset", default=None, help="default: the dataset the embeddings came from")
    _add_search_params(p)
    add_device(p)
    add_endpoint_url(p)
    add_json(p)
    p.set_defaults(func=_search_query)
    p = s_sub.add_parser("eval", help="recall@k of a compressed index vs exact search, bytes per vector",
                         **with_example(EXAMPLES["eval"]))
    p.add_argument("index", help="index folder built with --index FACTORY (and --hold-out N for its queries)")
    p.add_argument("--queries", default=None, help="query embeddings instead of the held-out rows")
    p.add_argument("--max-queries", type=positive_int, default=1000)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--tune-nprobe", action="store_true", help="find the smallest nprobe reaching --target recall@k")
    p.add_argument("--target", type=float, default=0.9)
    _add_search_params(p)
    add_device(p)
    add_json(p)
    p.set_defaults(func=_search_eval)

    p = subparsers.add_parser("dedup", help="near-duplicate groups among embeddings (cosine distance), pairs as Parquet",
                              **with_example(EXAMPLES["dedup"]))
    p.add_argument("embeddings", help="embeddings Parquet file or folder")
    p.add_argument("--threshold", type=float, default=0.05, help="cosine distance (1 - cosine) at or under which two rows pair")
    p.add_argument("--out", required=True, help="pairs Parquet to write")
    p.add_argument("--index-dir", default=None, help="a `search build` index folder of these embeddings (default: built here)")
    p.add_argument("--k", type=positive_int, default=20, help="neighbours looked at per row")
    p.add_argument("--same-group", action="store_true", help="also list pairs inside one group")
    p.add_argument("--grid", default=None, help="contact sheet PNG of the closest pairs (needs the dataset)")
    p.add_argument("--grid-pairs", type=positive_int, default=16)
    p.add_argument("--dataset", default=None, help="for --grid: default the dataset the embeddings came from")
    add_endpoint_url(p)
    _add_search_params(p)
    add_device(p)
    add_json(p)
    p.set_defaults(func=_dedup)

    p = subparsers.add_parser(
        "export", help="backbone -> plain torchvision/timm state_dict (.safetensors) + how to load it",
        **with_example(EXAMPLES["export"]))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output .safetensors (a .json with the load code is written beside)")
    add_endpoint_url(p)
    add_json(p)
    p.set_defaults(func=_export)


# ---- helpers --------------------------------------------------------------------------------------
def _add_search_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists searched per query")
    p.add_argument("--ef-search", type=positive_int, default=None, help="HNSW search breadth")
    p.add_argument("--param", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="other FAISS search parameters, e.g. quantizer_efSearch=64")


def _faiss_gpu(args: argparse.Namespace) -> bool:
    """--device cuda (or auto where torch sees a GPU): FAISS on the GPU where faiss-gpu can (the
    index code falls back to the CPU and says so, so no error without one)."""
    import torch

    return args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())


def _loaded_index(args: argparse.Namespace, directory: str):
    from evaluation.sharded_index import load_index, search_params

    return load_index(directory, params=search_params(args.nprobe, args.ef_search, args.param), gpu=_faiss_gpu(args))


def _emit(result: dict[str, Any], json_out: Optional[str], lines: list[str]) -> int:
    for line in lines:
        print(line)
    write_json(json_out, result)
    return 0


def _model(args: argparse.Namespace):
    """(backbone, info, image_size, crop_fraction) from --checkpoint and the size flags."""
    from evaluation.sources import DEFAULT_CROP_FRACTION, load_checkpoint_backbone

    if not args.checkpoint:
        raise UsageError("--checkpoint is required (or pass embeddings files instead)")
    backbone, info = load_checkpoint_backbone(args.checkpoint, args.endpoint_url)
    backbone = backbone.to(resolve_device(args.device))
    size = args.image_size or info.image_size
    if not size:
        raise UsageError(f"checkpoint {args.checkpoint!r} does not say its image size; pass --image-size")
    crop = args.crop_fraction or info.crop_fraction or DEFAULT_CROP_FRACTION
    return backbone, info, int(size), float(crop)


def _labelled_splits(args: argparse.Namespace):
    """(train FeatureSet-like, test, producer) from embeddings files or checkpoint + shards."""
    import torch

    from evaluation.features import FeatureSet

    if args.train_embeddings or args.test_embeddings:
        from evaluation.embeddings import read_embeddings
        from evaluation.sources import check_same_producer

        if not (args.train_embeddings and args.test_embeddings):
            raise UsageError("pass both --train-embeddings and --test-embeddings")
        sets = []
        for path in (args.train_embeddings, args.test_embeddings):
            emb = read_embeddings(path)
            if emb.labels is None or (emb.labels >= 0).sum() == 0:
                raise UsageError(f"embeddings {path!r} have no labels; kNN and linear probes need labelled data")
            keep = emb.labels >= 0
            sets.append((FeatureSet(torch.from_numpy(emb.vectors[keep]), torch.from_numpy(emb.labels[keep])), emb.metadata))
        check_same_producer(sets[0][1], sets[1][1], f"train embeddings {args.train_embeddings!r}",
                            f"test embeddings {args.test_embeddings!r}")
        _align_labels(sets[0][0], sets[0][1].get("label_vocabulary"), sets[1][0], sets[1][1].get("label_vocabulary"))
        return sets[0][0], sets[1][0], sets[0][1]
    if not (args.train and args.test):
        raise UsageError("pass --checkpoint with --train and --test shards, or --train-embeddings and --test-embeddings")
    from evaluation.sources import eval_loader, labelled_features

    backbone, info, size, crop = _model(args)
    make = lambda ds: eval_loader(ds, size, args.batch_size, crop_fraction=crop, endpoint_url=args.endpoint_url,
                                  device=resolve_device(args.device))
    train_loader, test_loader = make(args.train), make(args.test)
    if not test_loader.label_vocabulary:  # fail before spending time on the train split
        raise UsageError(f"dataset {args.test!r} has no labels; kNN and linear probes need labelled shards "
                         "(shard with --label-from parent)")
    train, vocab = labelled_features(backbone, train_loader, desc="train features")
    test, _ = labelled_features(backbone, test_loader, vocab, desc="test features")
    return train, test, info.producer()


def _align_labels(train, train_vocab: Optional[list[str]], test, test_vocab: Optional[list[str]]) -> None:
    """Renumber test labels into the train split's vocabulary (each split numbers its own sorted labels)."""
    import torch

    if not train_vocab or not test_vocab or train_vocab == test_vocab:
        return
    vocab = list(train_vocab) + [name for name in test_vocab if name not in train_vocab]
    test.labels = torch.tensor([vocab.index(name) for name in test_vocab])[test.labels]


# ---- commands -------------------------------------------------------------------------------------
def _eval_knn(args: argparse.Namespace) -> int:
    from evaluation.knn import knn_evaluate

    train, test, producer = _labelled_splits(args)
    results = knn_evaluate(train.features, train.labels, test.features, test.labels,
                           ks=args.k, temperature=args.temperature)
    out = {"knn": {str(k): r.as_dict() for k, r in results.items()}, "source": producer}
    lines = [f"kNN (cosine, T={args.temperature}) {len(train)} train / {len(test)} test"]
    lines += [f"  k={k:<4d} top-1 {100 * r.top1:6.2f}%  top-5 {100 * r.top5:6.2f}%" for k, r in results.items()]
    return _emit(out, args.json_out, lines)


def _eval_linear(args: argparse.Namespace) -> int:
    from evaluation.linear import LinearProbeConfig, linear_probe_evaluate

    train, test, producer = _labelled_splits(args)
    if args.c is not None and args.c <= 0:
        raise UsageError(f"--c {args.c}: expected a positive number")
    result = linear_probe_evaluate(train.features, train.labels, test.features, test.labels,
                                   LinearProbeConfig(c=args.c, seed=args.seed))
    out = {"linear": result.as_dict(), "source": producer}
    return _emit(out, args.json_out, [
        f"linear probe (C={result.c:g}) {result.num_train} train / {result.num_test} test",
        f"  top-1 {100 * result.top1:6.2f}%  top-5 {100 * result.top5:6.2f}%  (train top-1 {100 * result.train_top1:.2f}%)"])


def _eval_retrieval(args: argparse.Namespace) -> int:
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

        backbone, info, size, crop = _model(args)
        loader = eval_loader(args.dataset, size, args.batch_size, crop_fraction=crop, views=2,
                             endpoint_url=args.endpoint_url, device=resolve_device(args.device))
        vectors, groups, _ = natural_view_features(backbone, loader)
        producer = info.producer()
    result = group_recall_at_k(vectors, groups, args.k, config=IndexConfig(kind=args.index_kind))
    out = {"retrieval": result.as_dict(), "source": producer}
    line = "  ".join(f"recall@{k} {100 * v:6.2f}%" for k, v in result.recall.items())
    return _emit(out, args.json_out, [f"retrieval: {result.num_queries} queries in {result.num_gallery} images "
                                      f"({result.index_kind} index)", f"  {line}"])


def _embed(args: argparse.Namespace) -> int:
    from evaluation.batch_embed import EmbedJob, embed_identity, embed_on_ray, union_vocabulary

    roots = list(dict.fromkeys(args.dataset))
    backbone, info, size, crop = _model(args)
    from sharding.storage import Storage

    vocab = union_vocabulary(roots, Storage(args.endpoint_url))
    identity = embed_identity(info, backbone, size, crop, vocab, roots)
    if args.ray:
        job = EmbedJob(args.checkpoint, size, crop, args.batch_size, args.out, identity, tuple(vocab), args.endpoint_url)
        report = embed_on_ray(job, roots, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                              device=args.device, address=args.address)  # auto: the cluster's GPUs decide
        return _emit(report.as_dict() | {"out": args.out}, args.json_out,
                     [f"embedded {report.embedded_shards} shards ({report.rows} images) on {report.workers} "
                      f"{report.device} workers, skipped {report.skipped_shards} finished shards; {args.out}"])
    if args.workers or args.address:
        raise UsageError("--workers and --address go with --ray")
    from evaluation.embeddings import write_embeddings

    batches, total = _single_process_batches(backbone, roots, size, crop, args, vocab, resolve_device(args.device))
    meta = identity | {"dataset": roots[0]}
    rows = write_embeddings(args.out, batches, metadata=meta, total=total, part_columns=True)
    return _emit({"rows": rows, "out": args.out}, args.json_out,
                 [f"wrote {rows} embeddings to {args.out}"])


def _single_process_batches(backbone, roots, size, crop, args, vocab, device):
    """FeatureBatches of every root in turn (labels renumbered into the roots' union vocabulary)."""
    import torch

    from evaluation.features import iter_features
    from evaluation.sources import eval_loader

    loaders = [eval_loader(root, size, args.batch_size, crop_fraction=crop, endpoint_url=args.endpoint_url,
                           device=device) for root in roots]

    def batches():
        for loader in loaders:
            remap = torch.tensor([vocab.index(n) for n in loader.label_vocabulary] + [-1], dtype=torch.long)
            for fb in iter_features(backbone, loader.iter_epoch(0), device=device):
                if fb.labels is not None and vocab:
                    fb.labels = remap[fb.labels]
                elif vocab:
                    fb.labels = torch.full((len(fb.features),), -1, dtype=torch.long)
                yield fb, loader.dataset

    return batches(), sum(l.batches_per_epoch for l in loaders)


def _search_build(args: argparse.Namespace) -> int:
    from evaluation.embeddings import read_embeddings_metadata

    source = read_embeddings_metadata(args.embeddings) | {"embeddings": args.embeddings}
    if args.factory:
        from evaluation.index_build import BuildConfig, build_index

        if args.hold_out < 0:
            raise UsageError(f"--hold-out {args.hold_out}: expected a number >= 0")
        report = build_index(args.embeddings, args.index, BuildConfig(
            factory=args.factory, train_size=args.train_size, add_batch=args.add_batch, shards=args.shards,
            hold_out=args.hold_out, seed=args.seed, gpu=_faiss_gpu(args)))
        _write_source(args.index, source)
        return _emit(report.as_dict() | {"index": args.index}, args.json_out, [
            f"indexed {report.count} vectors of dim {report.dim} ({args.factory}, {report.shards} shard(s)) in {args.index}",
            f"  trained on {report.train_rows} rows in {report.train_seconds:.1f} s{' (GPU)' if report.gpu_used else ''}, "
            f"added in {report.add_seconds:.1f} s; {report.bytes_per_vector:.1f} index bytes per vector"])
    from evaluation.embeddings import read_embeddings
    from evaluation.search import IndexConfig, SearchIndex

    emb = read_embeddings(args.embeddings)
    index = SearchIndex.build(emb.vectors, emb.keys, emb.groups, IndexConfig(kind=args.index_kind, exact_max=args.exact_max))
    index.save(args.index)
    _write_source(args.index, source)
    return _emit({"index": args.index, "vectors": len(index), "dim": index.dim, "kind": index.kind}, args.json_out,
                 [f"indexed {len(index)} vectors of dim {index.dim} ({index.kind}) in {args.index}"])


def _write_source(index_dir: str, source: dict) -> None:
    (Path(index_dir) / "source.json").write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")


def _search_eval(args: argparse.Namespace) -> int:
    import json as _json

    from evaluation.index_eval import evaluate, exact_top_k, load_queries, tune_nprobe
    from evaluation.sharded_index import ShardedIndex, search_params

    info_path = Path(args.index) / "index.json"
    info = _json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "shards" not in info:
        raise UsageError(f"{args.index!r} is not a compressed index; build one with `search build --index FACTORY --hold-out N`")
    index = ShardedIndex.load(args.index, gpu=_faiss_gpu(args), with_rows=False)
    queries = load_queries(args.index, args.queries, args.max_queries)
    held = [] if args.queries else _held_rows(args.index)
    _, exact_ids = exact_top_k(info["source"]["embeddings"], queries, args.k, held)
    params = search_params(args.nprobe, args.ef_search, args.param)
    if args.tune_nprobe:
        chosen, tried = tune_nprobe(index, queries, exact_ids, args.k, args.target, params)
    else:
        chosen = evaluate(index, queries, exact_ids, args.k, params)
        tried = [chosen]
    out = {"index": args.index, "factory": info["factory"], "count": len(index), "dim": index.dim,
           "bytes_per_vector": index.bytes_per_vector, "index_bytes": index.index_bytes,
           "result": chosen.as_dict() if chosen else None, "tried": [t.as_dict() for t in tried], "target": args.target}
    lines = [f"{info['factory']}: {len(index)} vectors, {index.bytes_per_vector:.1f} bytes per vector; "
             f"{len(queries)} held-out queries vs exact"]
    lines += [f"  {t.params}  recall@{t.k} {t.recall:.4f}  overlap@{t.k} {t.overlap:.4f}  {t.query_ms:.3f} ms/query"
              for t in tried]
    if args.tune_nprobe:
        lines.append(f"  chosen: {chosen.params}" if chosen else f"  no nprobe reaches recall@{args.k} >= {args.target}")
    return _emit(out, args.json_out, lines)


def _held_rows(index_dir: str) -> list[int]:
    import pyarrow.parquet as pq

    path = Path(index_dir) / "queries.parquet"
    return pq.read_table(path, columns=["row"]).column("row").to_pylist() if path.is_file() else []


def _dedup(args: argparse.Namespace) -> int:
    from evaluation.dedup import find_near_duplicates

    result = find_near_duplicates(args.embeddings, args.out, threshold=args.threshold, k=args.k,
                                  index=_loaded_index(args, args.index_dir) if args.index_dir else None,
                                  cross_group_only=not args.same_group)
    lines = [f"{result.pairs} pairs within cosine distance {args.threshold} among {result.rows} rows "
             f"({result.groups} groups involved) -> {args.out}"]
    if args.grid:
        from evaluation.dedup import contact_sheet

        dataset = args.dataset or result.metadata.get("dataset")
        if not dataset:
            raise UsageError("--grid needs the images: pass --dataset")
        lines.append(f"wrote {contact_sheet(args.out, dataset, args.grid, args.grid_pairs, args.endpoint_url)}")
    return _emit(result.as_dict() | {"out": args.out}, args.json_out, lines)


def _search_query(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from evaluation.sources import check_same_producer

    if not args.key and not args.image:
        raise UsageError("pass --key KEY... or --image FILE...")
    index = _loaded_index(args, args.index)
    source_file = Path(args.index) / "source.json"
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    queries, names, pictures = [], [], []
    if args.key:
        queries.append(index.vectors_of(args.key))
        names += args.key
        pictures += [None] * len(args.key)
    if args.image:
        from evaluation.features import extract_features
        from evaluation.sources import load_checkpoint_backbone, load_query_image

        checkpoint = args.checkpoint or source.get("checkpoint")
        if not checkpoint:
            raise UsageError("querying with images needs --checkpoint (the index does not say which one made it)")
        size = source.get("image_size")
        if not size:
            raise UsageError(f"index {args.index!r} does not record its image size; rebuild it from `viewstream embed` output")
        images = [load_query_image(p, int(size), float(source.get("crop_fraction", 0.875))) for p in args.image]
        backbone, info = load_checkpoint_backbone(checkpoint, args.endpoint_url)
        backbone = backbone.to(resolve_device(args.device))
        check_same_producer(source, info.producer(), f"index {args.index!r}", f"checkpoint {checkpoint!r}")
        feats = extract_features(backbone, [torch.cat([x for x, _ in images])]).features.numpy()
        if feats.shape[1] != index.dim:
            raise UsageError(f"checkpoint {checkpoint!r} makes {feats.shape[1]}-d features but the index holds {index.dim}-d")
        queries.append(feats)
        names += args.image
        pictures += [p for _, p in images]
    # One extra neighbour so a stored row queried by its key can leave itself out.
    found = index.search(np.concatenate(queries), args.k + 1)
    result = {"k": args.k, "queries": []}
    for q, (name, scores, rows) in enumerate(zip(names, found.scores, found.indices)):
        own = name if q < len(args.key) else None
        hits = [{"key": index.keys[i], "group": index.groups[i], "score": float(s)}
                for s, i in zip(scores, rows) if i >= 0 and index.keys[i] != own][: args.k]
        result["queries"].append({"query": name, "results": hits})
        print(f"{name}:")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:2d}. {h['key']:<32s} {h['score']:.4f}  group {h['group']}")
    if args.grid:
        _search_grid(args, source, index, result, pictures)
    return _emit(result, args.json_out, [])


def _search_grid(args, source, index, result, pictures) -> None:
    from evaluation.plots import plot_retrieval_grid
    from evaluation.sources import read_sample_image

    dataset = args.dataset or source.get("dataset")
    if not dataset:
        raise UsageError("--grid needs the images: pass --dataset")
    group_of = dict(zip(index.keys, index.groups))
    queries, rows = [], []
    for q, picture in zip(result["queries"], pictures):
        queries.append(picture if picture is not None else read_sample_image(dataset, q["query"], endpoint_url=args.endpoint_url))
        q_group = group_of.get(q["query"])
        rows.append([(read_sample_image(dataset, h["key"], endpoint_url=args.endpoint_url), h["score"], None if q_group is None else h["group"] == q_group)
                     for h in q["results"]])
    path = plot_retrieval_grid(queries, rows, args.grid, query_labels=[Path(q["query"]).name for q in result["queries"]])
    print(f"wrote {path}")


def _export(args: argparse.Namespace) -> int:
    from evaluation.export import export_backbone
    from evaluation.sources import load_checkpoint_backbone
    from pipeline.spec import IMAGENET_MEAN, IMAGENET_STD

    backbone, info = load_checkpoint_backbone(args.checkpoint, args.endpoint_url)
    meta = info.producer()
    if info.image_size:
        meta["input"] = {"image_size": info.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    exported = export_backbone(backbone, args.out, metadata=meta)
    print(f"wrote {exported.weights} ({exported.metadata['library']} {exported.metadata['architecture']}) "
          f"and {exported.sidecar}\nload it without viewstream:\n")
    print(exported.metadata["load_code"])
    write_json(args.json_out, {"weights": str(exported.weights), "sidecar": str(exported.sidecar),
                               "metadata": exported.metadata})
    return 0
