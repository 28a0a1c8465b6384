"""`viewstream views`: preview a recipe on a dataset (`pipeline.preview`)."""
from __future__ import annotations

import argparse
import json

from viewstream.cliflags import add_endpoint_url, add_json, with_example, write_json


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "views", help="preview a view recipe on a dataset (PNG grid)",
        **with_example("viewstream views ds/ --recipe multicrop --size 96 --out views.png",
                       "viewstream views s3://bucket/ds --endpoint-url http://127.0.0.1:9000 --json views.json"))
    parser.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    parser.add_argument("--recipe", default="simclr", help="simclr, byol, multicrop or eval")
    parser.add_argument("--size", type=int, default=64, help="global view size in pixels")
    parser.add_argument("--local-size", type=int, default=32, help="local crop size (multicrop)")
    parser.add_argument("--num-local", type=int, default=4, help="local crops (multicrop)")
    parser.add_argument("--views-per-group", type=int, default=None,
                        help="global views per sample, different photos of its group while it has them "
                             "(data.views_per_group; default: the recipe's 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    add_endpoint_url(parser)
    add_json(parser)
    parser.add_argument("--out", default="views.png", help="where to write the grid")
    parser.set_defaults(func=run_views)


def run_views(args: argparse.Namespace) -> int:
    from pipeline import ViewSpec
    from pipeline.preview import preview_views, recipe_sizes, with_views_per_group

    spec = ViewSpec.from_recipe(args.recipe, **recipe_sizes(args.recipe, args.size, args.local_size, args.num_local))
    if args.views_per_group is not None:
        spec = with_views_per_group(spec, args.views_per_group)
    result = preview_views(args.dataset, spec, args.batch_size, args.out, epoch=args.epoch, seed=args.seed,
                           endpoint_url=args.endpoint_url)
    print(json.dumps(result))
    write_json(args.json_out, result)
    return 0
