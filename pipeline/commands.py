"""`viewstream views`: preview a recipe on a dataset (a PNG grid of views plus read counts).

Argument parsing only; the work is `ViewLoader`. Useful to eyeball a recipe before training
and to check that a dataset streams (local or s3://) without bad data.
"""
from __future__ import annotations

import argparse
import json

from viewstream.cliflags import add_endpoint_url, add_json, with_example, write_json
from viewstream.errors import UsageError


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "views", help="preview a view recipe on a dataset (PNG grid)",
        **with_example("viewstream views ds/ --recipe multicrop --size 96 --out views.png",
                       "viewstream views s3://bucket/ds --endpoint-url http://127.0.0.1:9000 --json views.json"))
    parser.add_argument("dataset", help="dataset folder or s3://bucket/prefix")
    parser.add_argument("--recipe", default="simclr", help="simclr, byol, multicrop or eval")
    parser.add_argument("--size", type=int, default=64, help="global view size in pixels")
    parser.add_argument("--local-size", type=int, default=32, help="local crop size (multicrop)")
    parser.add_argument("--num-local", type=int, default=4, help="local crops (multicrop)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    add_endpoint_url(parser)
    add_json(parser)
    parser.add_argument("--out", default="views.png", help="where to write the grid")
    parser.set_defaults(func=run_views)


def recipe_arguments(args: argparse.Namespace) -> dict:
    """Size keywords of the chosen recipe (multicrop has global and local sizes)."""
    if args.recipe == "multicrop":
        return dict(global_size=args.size, local_size=args.local_size, num_local=args.num_local)
    return dict(size=args.size)


def run_views(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F
    from torchvision.utils import save_image

    from pipeline import ViewLoader, ViewSpec

    spec = ViewSpec.from_recipe(args.recipe, **recipe_arguments(args))
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    loader = ViewLoader(args.dataset, spec, args.batch_size, seed=args.seed,
                        endpoint_url=args.endpoint_url)
    batch = next(loader.iter_epoch(args.epoch), None)
    if batch is None or len(batch) == 0:
        raise UsageError(f"{args.dataset!r} yields no samples")
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    size = max(v.size for v in spec.views)
    columns = [F.interpolate(view * std + mean, size=(size, size), mode="nearest")
               for view in batch.views]
    grid = torch.stack(columns, dim=1).flatten(0, 1).clamp(0, 1)  # one row per sample
    save_image(grid, args.out, nrow=len(spec.views), padding=2)
    result = {"out": args.out, "samples": len(batch), "views": len(spec.views),
              "keys": batch.keys, "view_sources": batch.view_sources.tolist(),
              "read": loader.stats.as_dict()}
    print(json.dumps(result))
    write_json(args.json_out, result)
    return 0
