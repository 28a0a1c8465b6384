"""One natural-view training of the demo (its part 2) with a setting changed, scored as the demo scores it.

    .venv/bin/python benchmarks/demo_view_experiments.py [--quick] [--seed 0] [--views-per-group 3]
        [--multi-positive] [--steps 150] [--batch-size 64] [--width 0.5] [--scale 0.5,1.0] [--no-natural-views]
        [--temperature 0.1] [--lr 0.003] [--weight-decay 1e-4] [--warmup-steps 10] [--final-lr 0]
        [--projection-dim 128] [--projection-hidden-dim 512] [--jitter-p 0.8] [--brightness 0.4]
        [--contrast 0.4] [--saturation 0.4] [--hue 0.1] [--blur-p 0.5] [--flip-p 0.5]

Builds (or reuses, in --out) the demo's synthetic natural-view corpus at the chosen size, trains the
demo's `VIEW_SETTINGS` recipe with the changes given, and prints group recall@1/@5/@10 of the
trained encoder on the 500 held-out objects (the demo's own `evaluate_retrieval`, embedding with
the projection head unless --embedding backbone; the backbone's recall is printed as well). Each option
changes one field of the config; left out, the demo's value stays (jitter strengths apply only
with --jitter-p > 0: brightness-only jitter is `--jitter-p 0.8 --contrast 0 --saturation 0 --hue 0`).
The recall figures are deterministic for a setting and seed, whatever the machine's load; the minutes are not.
Each row of benchmarks/demo_experiments.md names the command line that produced it.

The last line is one JSON object: the settings, recall@{1,5,10} (percent), steps, minutes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from viewstream.demo import FULL, QUICK, VIEW_SETTINGS, _train, prepare_view_shards, view_config  # noqa: E402
from viewstream.commands.model_inputs import EMBEDDINGS  # noqa: E402
from viewstream.demo_eval import RETRIEVAL_EMBEDDING  # noqa: E402

# data.recipe_options fields settable from the command line (pipeline.spec.Augmentation), one option each.
AUGMENT_FIELDS = ("jitter_p", "brightness", "contrast", "saturation", "hue", "blur_p", "flip_p")


def settings_with(args: argparse.Namespace) -> dict:
    """The demo's natural-view settings with the command line's changes."""
    settings = copy.deepcopy(VIEW_SETTINGS)
    if args.width is not None:
        settings["method"]["backbone"]["width"] = args.width
    if args.scale is not None:
        settings["augment"]["scale"] = [float(x) for x in args.scale.split(",")]
    if args.temperature is not None:
        settings["method"]["temperature"] = args.temperature
    if args.multi_positive:
        settings["method"]["multi_positive"] = True
    for field in ("projection_dim", "projection_hidden_dim"):
        if getattr(args, field) is not None:
            settings["method"][field] = getattr(args, field)
    for option, field in (("lr", "base_lr"), ("weight_decay", "weight_decay"), ("warmup_steps", "warmup_steps"),
                          ("final_lr", "final_lr")):
        if getattr(args, option) is not None:
            settings["optimizer"][field] = getattr(args, option)
    for field in AUGMENT_FIELDS:
        if getattr(args, field) is not None:
            settings["augment"][field] = getattr(args, field)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick demo's corpus and budget (1,500 objects)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views-per-group", type=int, default=2, help="data.views_per_group")
    parser.add_argument("--multi-positive", action="store_true", help="method.multi_positive")
    parser.add_argument("--no-natural-views", action="store_true", help="augmentation only (every photo a sample)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the demo's)")
    parser.add_argument("--width", type=float, default=None, help="ConvNet width (default: the demo's)")
    parser.add_argument("--scale", default=None, help="crop scale lo,hi (default: the demo's)")
    parser.add_argument("--temperature", type=float, default=None, help="method.temperature")
    parser.add_argument("--projection-dim", type=int, default=None, help="method.projection_dim")
    parser.add_argument("--projection-hidden-dim", type=int, default=None, help="method.projection_hidden_dim")
    parser.add_argument("--lr", type=float, default=None, help="optimizer.base_lr (AdamW, no batch scaling)")
    parser.add_argument("--weight-decay", type=float, default=None, help="optimizer.weight_decay")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="optimizer.warmup_steps (default: the demo's steps // 15, at least 3)")
    parser.add_argument("--final-lr", type=float, default=None, help="optimizer.final_lr (end of the cosine)")
    for field in AUGMENT_FIELDS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=float, default=None,
                            help=f"data.recipe_options.{field} (pipeline.spec.Augmentation)")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=RETRIEVAL_EMBEDDING,
                        help="what recall@k embeds with (default: the demo's); backbone recall is printed too")
    parser.add_argument("--out", default="demo_experiments", help="folder for the corpus and runs (reused)")
    args = parser.parse_args()

    from groundfloor.ray_connect import connect_ray
    from pipeline.spec import Augmentation
    from trainers.config import TrainConfig
    from viewstream.demo_eval import evaluate_retrieval

    size = QUICK if args.quick else FULL
    if args.steps is not None:
        size = replace(size, view_steps=args.steps)
    if args.batch_size is not None:
        size = replace(size, view_batch_size=args.batch_size)
    out = Path(args.out) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    shards = prepare_view_shards(out, size, VIEW_SETTINGS["image_size"])
    config = view_config(shards, out, size, not args.no_natural_views, settings=settings_with(args), seed=args.seed)
    config["data"]["views_per_group"] = args.views_per_group
    tag = f"k{args.views_per_group}-mp{int(args.multi_positive)}-s{size.view_steps}-b{size.view_batch_size}-seed{args.seed}"
    config["run"]["name"] += f"-{tag}-{int(time.time())}"
    config = TrainConfig.model_validate(config)
    started = time.monotonic()
    started_ray = connect_ray(None, log_file=out / "ray.log")
    try:
        result = _train(config, None, False)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    minutes = (time.monotonic() - started) / 60
    recalls, _ = evaluate_retrieval(config, {"trained": result.checkpoint}, shards["test"], embedding=args.embedding)
    trained = recalls["trained"]
    backbone = recalls.get("trained_backbone", trained)
    print(json.dumps({
        "quick": args.quick, "seed": args.seed, "views_per_group": args.views_per_group,
        "multi_positive": args.multi_positive, "natural_views": not args.no_natural_views,
        "steps": size.view_steps, "batch_size": size.view_batch_size, "width": config.method["backbone"]["width"],
        "scale": list(config.data.recipe_options["scale"]), "temperature": config.method["temperature"],
        "projection_dim": config.method["projection_dim"],
        "projection_hidden_dim": config.method["projection_hidden_dim"],
        "lr": config.optimizer.base_lr, "weight_decay": config.optimizer.weight_decay,
        "warmup_steps": config.optimizer.warmup_steps, "final_lr": config.optimizer.final_lr,
        **{field: config.data.recipe_options.get(field, Augmentation.model_fields[field].default)
           for field in AUGMENT_FIELDS},
        "embedding": args.embedding,
        **{f"recall@{k}": round(100 * v, 1) for k, v in trained.items()},
        **{f"recall@{k}_backbone": round(100 * v, 1) for k, v in backbone.items()},
        "train_minutes": round(minutes, 2),
    }))


if __name__ == "__main__":
    main()
