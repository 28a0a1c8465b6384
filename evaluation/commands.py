"""`viewstream eval {knn,linear,retrieval}`, `embed`, `search {build,query}`, `export`.

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
from viewstream.errors import UsageError


def _add_model_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder, run folder (newest checkpoint) or s3:// URI")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="eval crop size (default: the checkpoint's monitor/recipe size)")
    p.add_argument("--crop-fraction", type=float, default=None, help="center-crop fraction (default 0.875)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// shards")
    p.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to decode and embed (auto: cuda when available)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `eval`, `embed`, `search` and `export` on the front door."""
    ev = subparsers.add_parser("eval", help="evaluate a checkpoint: kNN, linear probe, retrieval recall")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="EVAL", required=True)

    for name, help_text, func in (("knn", "weighted kNN (cosine, T=0.07) top-1/top-5", _eval_knn),
                                  ("linear", "linear probe on frozen features, top-1/top-5", _eval_linear)):
        p = ev_sub.add_parser(name, help=help_text)
        _add_model_inputs(p)
        p.add_argument("--train", help="labelled train shards (dataset folder or s3://)")
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

    p = ev_sub.add_parser("retrieval", help="recall@k of another photo of the same group")
    _add_model_inputs(p)
    p.add_argument("--dataset", help="shards with natural-view groups")
    p.add_argument("--embeddings", help="instead of checkpoint + shards: embeddings Parquet (rows sharing a group)")
    p.add_argument("--k", type=positive_int, nargs="+", default=[1, 5, 10])
    p.add_argument("--index-kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto")
    p.set_defaults(func=_eval_retrieval)

    p = subparsers.add_parser("embed", help="checkpoint + shards -> embeddings Parquet")
    _add_model_inputs(p)
    p.add_argument("--dataset", required=True, help="shards to embed")
    p.add_argument("--out", required=True, help="embeddings Parquet file to write")
    p.set_defaults(func=_embed)

    search = subparsers.add_parser("search", help="FAISS index of embeddings: build it, query it")
    s_sub = search.add_subparsers(dest="search_command", metavar="SEARCH", required=True)
    p = s_sub.add_parser("build", help="build and save an index from embeddings Parquet")
    p.add_argument("embeddings", help="embeddings Parquet (from `viewstream embed`)")
    p.add_argument("index", help="folder to save the index in")
    p.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto",
                   help="auto: exact up to --exact-max vectors, HNSW above")
    p.add_argument("--exact-max", type=positive_int, default=100_000)
    p.set_defaults(func=_search_build)
    p = s_sub.add_parser("query", help="top-k neighbours of keys or image files")
    p.add_argument("index", help="index folder (from `viewstream search build`)")
    p.add_argument("--key", nargs="+", default=[], help="query with stored rows' keys")
    p.add_argument("--image", nargs="+", default=[], help="query with image files (needs the checkpoint)")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint the embeddings came from")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--grid", default=None, help="write a retrieval grid PNG here (needs the dataset)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to embed --image queries")
    p.add_argument("--dataset", default=None, help="default: the dataset the embeddings came from")
    p.add_argument("--json", dest="json_out", default=None)
    p.set_defaults(func=_search_query)

    p = subparsers.add_parser(
        "export", help="backbone -> plain torchvision/timm state_dict (.safetensors) + how to load it")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output .safetensors (a .json with the load code is written beside)")
    p.set_defaults(func=_export)


# ---- helpers --------------------------------------------------------------------------------------
def _emit(result: dict[str, Any], json_out: Optional[str], lines: list[str]) -> int:
    for line in lines:
        print(line)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def _model(args: argparse.Namespace):
    """(backbone, info, image_size, crop_fraction) from --checkpoint and the size flags."""
    from evaluation.sources import DEFAULT_CROP_FRACTION, load_checkpoint_backbone, resolve_device

    if not args.checkpoint:
        raise UsageError("--checkpoint is required (or pass embeddings files instead)")
    args.device = resolve_device(getattr(args, "device", "cpu"))
    backbone, info = load_checkpoint_backbone(args.checkpoint)
    backbone = backbone.to(args.device)
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
                                 device=args.device)
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
                             endpoint_url=args.endpoint_url, device=args.device)
        vectors, groups, _ = natural_view_features(backbone, loader)
        producer = info.producer()
    result = group_recall_at_k(vectors, groups, args.k, config=IndexConfig(kind=args.index_kind))
    out = {"retrieval": result.as_dict(), "source": producer}
    line = "  ".join(f"recall@{k} {100 * v:6.2f}%" for k, v in result.recall.items())
    return _emit(out, args.json_out, [f"retrieval: {result.num_queries} queries in {result.num_gallery} images "
                                      f"({result.index_kind} index)", f"  {line}"])


def _embed(args: argparse.Namespace) -> int:
    from evaluation.embeddings import write_embeddings
    from evaluation.features import iter_features
    from evaluation.sources import eval_loader

    backbone, info, size, crop = _model(args)
    loader = eval_loader(args.dataset, size, args.batch_size, crop_fraction=crop, endpoint_url=args.endpoint_url,
                         device=args.device)
    meta = info.producer() | {"dataset": args.dataset, "image_size": size, "crop_fraction": crop,
                              "label_vocabulary": loader.label_vocabulary}
    rows = write_embeddings(args.out, iter_features(backbone, loader.iter_epoch(0)), metadata=meta,
                            total=loader.batches_per_epoch)
    return _emit({"rows": rows, "out": args.out}, getattr(args, "json_out", None),
                 [f"wrote {rows} embeddings to {args.out}"])


def _search_build(args: argparse.Namespace) -> int:
    from evaluation.embeddings import read_embeddings
    from evaluation.search import IndexConfig, SearchIndex

    emb = read_embeddings(args.embeddings)
    index = SearchIndex.build(emb.vectors, emb.keys, emb.groups, IndexConfig(kind=args.kind, exact_max=args.exact_max))
    index.save(args.index)
    source = Path(args.index) / "source.json"
    source.write_text(json.dumps(emb.metadata | {"embeddings": args.embeddings}, indent=2, sort_keys=True) + "\n")
    print(f"indexed {len(index)} vectors of dim {index.dim} ({index.kind}) in {args.index}")
    return 0


def _search_query(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from evaluation.search import SearchIndex
    from evaluation.sources import check_same_producer

    if not args.key and not args.image:
        raise UsageError("pass --key KEY... or --image FILE...")
    index = SearchIndex.load(args.index)
    source_file = Path(args.index) / "source.json"
    source = json.loads(source_file.read_text()) if source_file.is_file() else {}
    queries, names, pictures = [], [], []
    if args.key:
        queries.append(index.vectors_of(args.key))
        names += args.key
        pictures += [None] * len(args.key)
    if args.image:
        from evaluation.features import extract_features
        from evaluation.sources import load_checkpoint_backbone, load_query_image, resolve_device

        checkpoint = args.checkpoint or source.get("checkpoint")
        if not checkpoint:
            raise UsageError("querying with images needs --checkpoint (the index does not say which one made it)")
        size = source.get("image_size")
        if not size:
            raise UsageError(f"index {args.index!r} does not record its image size; rebuild it from `viewstream embed` output")
        images = [load_query_image(p, int(size), float(source.get("crop_fraction", 0.875))) for p in args.image]
        backbone, info = load_checkpoint_backbone(checkpoint)
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
        queries.append(picture if picture is not None else read_sample_image(dataset, q["query"]))
        q_group = group_of.get(q["query"])
        rows.append([(read_sample_image(dataset, h["key"]), h["score"], None if q_group is None else h["group"] == q_group)
                     for h in q["results"]])
    path = plot_retrieval_grid(queries, rows, args.grid, query_labels=[Path(q["query"]).name for q in result["queries"]])
    print(f"wrote {path}")


def _export(args: argparse.Namespace) -> int:
    from evaluation.export import export_backbone
    from evaluation.sources import load_checkpoint_backbone

    backbone, info = load_checkpoint_backbone(args.checkpoint)
    meta = info.producer()
    if info.image_size:
        meta["input"] = {"image_size": info.image_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    exported = export_backbone(backbone, args.out, metadata=meta)
    print(f"wrote {exported.weights} ({exported.metadata['library']} {exported.metadata['architecture']}) "
          f"and {exported.sidecar}\nload it without viewstream:\n")
    print(exported.metadata["load_code"])
    return 0
