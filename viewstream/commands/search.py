"""`viewstream search {build,query,eval}`: FAISS indexes of embeddings (`evaluation.search`,
`evaluation.index_build`, `evaluation.query`, `evaluation.index_eval`)."""
from __future__ import annotations

import argparse


from groundfloor.errors import UsageError
from viewstream.argtypes import positive_int
from viewstream.cliflags import add_device, add_endpoint_url, add_json, resolve_device, with_example
from viewstream.commands.model_inputs import add_search_params, emit, faiss_gpu, loaded_index, search_parameters

EXAMPLES = {
    "build": "viewstream search build train.parquet index/ --index-kind hnsw",
    "build_pq": "viewstream search build emb/ index/ --index 'IVF4096,PQ32' --shards 8 --hold-out 1000",
    "query": "viewstream search query index/ --image shoe.jpg --k 5 --grid grid.png",
    "eval": "viewstream search eval index/ --tune-nprobe --target 0.9",
}


def add_command(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run_build)
    p = s_sub.add_parser("query", help="top-k neighbours of keys or image files", **with_example(EXAMPLES["query"]))
    p.add_argument("index", help="index folder (from `viewstream search build`)")
    p.add_argument("--key", nargs="+", default=[], help="query with stored rows' keys")
    p.add_argument("--image", nargs="+", default=[], help="query with image files (needs the checkpoint)")
    p.add_argument("--checkpoint", default=None, help="default: the checkpoint the embeddings came from")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--grid", default=None, help="write a retrieval grid PNG here (needs the dataset)")
    p.add_argument("--dataset", default=None, help="default: the dataset the embeddings came from")
    add_search_params(p)
    add_device(p)
    add_endpoint_url(p)
    add_json(p)
    p.set_defaults(func=run_query)
    p = s_sub.add_parser("eval", help="recall@k of a compressed index vs exact search, bytes per vector",
                         **with_example(EXAMPLES["eval"]))
    p.add_argument("index", help="index folder built with --index FACTORY (and --hold-out N for its queries)")
    p.add_argument("--queries", default=None, help="query embeddings instead of the held-out rows")
    p.add_argument("--max-queries", type=positive_int, default=1000)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--tune-nprobe", action="store_true", help="find the smallest nprobe reaching --target recall@k")
    p.add_argument("--target", type=float, default=0.9)
    add_search_params(p)
    add_device(p)
    add_json(p)
    p.set_defaults(func=run_eval)


def run_build(args: argparse.Namespace) -> int:
    from evaluation.embeddings import read_embeddings_metadata
    from evaluation.query import write_index_source

    source = read_embeddings_metadata(args.embeddings) | {"embeddings": args.embeddings}
    if args.factory:
        from evaluation.index_build import BuildConfig, build_index

        if args.hold_out < 0:
            raise UsageError(f"--hold-out {args.hold_out}: expected a number >= 0")
        report = build_index(args.embeddings, args.index, BuildConfig(
            factory=args.factory, train_size=args.train_size, add_batch=args.add_batch, shards=args.shards,
            hold_out=args.hold_out, seed=args.seed, gpu=faiss_gpu(args)))
        write_index_source(args.index, source)
        return emit(report.as_dict() | {"index": args.index}, args.json_out, [
            f"indexed {report.count} vectors of dim {report.dim} ({args.factory}, {report.shards} shard(s)) in {args.index}",
            f"  trained on {report.train_rows} rows in {report.train_seconds:.1f} s{' (GPU)' if report.gpu_used else ''}, "
            f"added in {report.add_seconds:.1f} s; {report.bytes_per_vector:.1f} index bytes per vector"])
    from evaluation.embeddings import read_embeddings
    from evaluation.search import IndexConfig, SearchIndex

    emb = read_embeddings(args.embeddings)
    index = SearchIndex.build(emb.vectors, emb.keys, emb.groups, IndexConfig(kind=args.index_kind, exact_max=args.exact_max))
    index.save(args.index)
    write_index_source(args.index, source)
    return emit({"index": args.index, "vectors": len(index), "dim": index.dim, "kind": index.kind}, args.json_out,
                [f"indexed {len(index)} vectors of dim {index.dim} ({index.kind}) in {args.index}"])


def run_query(args: argparse.Namespace) -> int:
    import numpy as np

    from evaluation.query import draw_query_grid, image_query_vectors, neighbours, read_index_source

    if not args.key and not args.image:
        raise UsageError("pass --key KEY... or --image FILE...")
    index = loaded_index(args, args.index)
    source = read_index_source(args.index)
    queries, names, pictures = [], [], []
    if args.key:
        queries.append(index.vectors_of(args.key))
        names += args.key
        pictures += [None] * len(args.key)
    if args.image:
        vectors, decoded = image_query_vectors(args.image, source, args.checkpoint, index.dim,
                                               endpoint_url=args.endpoint_url, device=resolve_device(args.device))
        queries.append(vectors)
        names += args.image
        pictures += decoded
    own = list(args.key) + [None] * len(args.image)  # a stored row never finds itself
    answers = neighbours(index, np.concatenate(queries), names, own, args.k)
    for answer in answers:
        print(f"{answer['query']}:")
        for rank, h in enumerate(answer["results"], 1):
            print(f"  {rank:2d}. {h['key']:<32s} {h['score']:.4f}  group {h['group']}")
    result = {"k": args.k, "queries": answers}
    if args.grid:
        path = draw_query_grid(args.dataset or source.get("dataset"), index, answers, pictures, args.grid,
                               args.endpoint_url)
        print(f"wrote {path}")
    return emit(result, args.json_out, [])


def run_eval(args: argparse.Namespace) -> int:
    from evaluation.index_eval import evaluate_index_dir

    report = evaluate_index_dir(args.index, queries=args.queries, max_queries=args.max_queries, k=args.k,
                                tune=args.tune_nprobe, target=args.target, params=search_parameters(args),
                                gpu=faiss_gpu(args))
    chosen, tried = report.chosen, report.tried
    out = {"index": args.index, "factory": report.info["factory"], "count": report.count, "dim": report.dim,
           "bytes_per_vector": report.bytes_per_vector, "index_bytes": report.index_bytes,
           "result": chosen.as_dict() if chosen else None, "tried": [t.as_dict() for t in tried], "target": args.target}
    lines = [f"{report.info['factory']}: {report.count} vectors, {report.bytes_per_vector:.1f} bytes per vector; "
             f"{report.num_queries} held-out queries vs exact"]
    lines += [f"  {t.params}  recall@{t.k} {t.recall:.4f}  overlap@{t.k} {t.overlap:.4f}  {t.query_ms:.3f} ms/query"
              for t in tried]
    if args.tune_nprobe:
        lines.append(f"  chosen: {chosen.params}" if chosen else f"  no nprobe reaches recall@{args.k} >= {args.target}")
    return emit(out, args.json_out, lines)
