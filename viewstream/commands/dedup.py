"""`viewstream dedup`: near-duplicate pairs among embeddings (`evaluation.dedup`)."""
from __future__ import annotations

import argparse

from groundfloor.errors import UsageError
from viewstream.argtypes import positive_int
from viewstream.cliflags import add_device, add_endpoint_url, add_json, with_example
from viewstream.commands.model_inputs import add_search_params, emit, loaded_index


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dedup", help="near-duplicate groups among embeddings (cosine distance), pairs as Parquet",
                              **with_example("viewstream dedup emb/ --threshold 0.05 --out pairs.parquet --grid pairs.png"))
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
    add_search_params(p)
    add_device(p)
    add_json(p)
    p.set_defaults(func=run_dedup)


def run_dedup(args: argparse.Namespace) -> int:
    from evaluation.dedup import find_near_duplicates

    result = find_near_duplicates(args.embeddings, args.out, threshold=args.threshold, k=args.k,
                                  index=loaded_index(args, args.index_dir) if args.index_dir else None,
                                  cross_group_only=not args.same_group)
    lines = [f"{result.pairs} pairs within cosine distance {args.threshold} among {result.rows} rows "
             f"({result.groups} groups involved) -> {args.out}"]
    if args.grid:
        from evaluation.dedup import contact_sheet

        dataset = args.dataset or result.metadata.get("dataset")
        if not dataset:
            raise UsageError("--grid needs the images: pass --dataset")
        lines.append(f"wrote {contact_sheet(args.out, dataset, args.grid, args.grid_pairs, args.endpoint_url)}")
    return emit(result.as_dict() | {"out": args.out}, args.json_out, lines)
