"""`viewstream demo`: the whole spine on one CPU machine, in one command, in two parts.

Part 1, Fashion-MNIST: shard it (train and test, labelled), train a method with 2 Ray workers,
then score the trained encoder, the same encoder at random init and raw pixels with weighted kNN
(k=20, cosine, T=0.07) and a linear probe.

Part 2, natural views (what single-image SSL does not have): a generated multi-view corpus
(`sharding.synthetic`: objects photographed several times with background, pose, scale and
lighting changing), trained twice at the same budget, once with natural-view groups as positives
(``data.natural_views: true``) and once with every photo its own sample (augmentation only,
``false``), scored by group retrieval recall@k on held-out groups (does one photo of an object
find another photo of it?) next to random init and raw pixels.

One local Ray serves every training of the run. Plots and ``report.json`` go next to the run.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from viewstream.cliflags import write_json
from groundfloor.errors import UsageError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DemoSize:
    """How much data and training one demo run uses (both parts)."""

    train_images: Optional[int]  # None: all 60k
    test_images: Optional[int]   # None: all 10k
    epochs: int
    batch_size: int
    checkpoint_every_steps: int
    view_groups: int             # natural-view part: training groups (2-5 photos each)
    view_test_groups: int        # held-out groups (2 photos each are scored)
    view_steps: int              # optimizer steps of each of the two trainings (same budget)
    view_batch_size: int


FULL = DemoSize(train_images=None, test_images=None, epochs=3, batch_size=256, checkpoint_every_steps=200,
                view_groups=4000, view_test_groups=500, view_steps=300, view_batch_size=128)
QUICK = DemoSize(train_images=1536, test_images=1024, epochs=8, batch_size=128, checkpoint_every_steps=12,
                 view_groups=1500, view_test_groups=500, view_steps=150, view_batch_size=64)

# Per-method settings for 28 px grayscale images on a CPU: a small ConvNet and the method's
# own optimizer; augmentations tuned down for 28 px (no blur, no hue/saturation on grayscale).
_BACKBONE = {"name": "convnet", "width": 1.0, "small_images": True}
_AUGMENT = {"scale": [0.25, 1.0], "blur_p": 0.0, "saturation": 0.0, "hue": 0.0, "grayscale_p": 0.0}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "simclr": {"method": {"temperature": 0.1, "projection_hidden_dim": 512, "projection_dim": 128},
               "optimizer": {"name": "lars", "base_lr": 1.2, "lr_scaling": "sqrt", "weight_decay": 1e-6}},
    "moco_v2": {"method": {"queue_size": 4096, "projection_hidden_dim": 512, "projection_dim": 128},
                "optimizer": {"name": "sgd", "base_lr": 0.06, "lr_scaling": "linear", "weight_decay": 5e-4}},
    "byol": {"method": {"projection_hidden_dim": 512, "projection_dim": 128, "prediction_hidden_dim": 512},
             "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "sqrt", "weight_decay": 1e-6}},
    "simsiam": {"method": {"projection_dim": 512, "prediction_hidden_dim": 128},
                "optimizer": {"name": "sgd", "base_lr": 0.05, "lr_scaling": "linear", "weight_decay": 1e-4}},
    "barlow_twins": {"method": {"projection_hidden_dim": 512, "projection_dim": 512, "lambd": 0.0051},
                     "optimizer": {"name": "lars", "base_lr": 0.2, "lr_scaling": "linear", "weight_decay": 1e-6}},
    "vicreg": {"method": {"projection_hidden_dim": 512, "projection_dim": 512},
               "optimizer": {"name": "lars", "base_lr": 0.2, "lr_scaling": "linear", "weight_decay": 1e-6}},
}
# Methods that exist but do not fit a 28 px ConvNet demo on a CPU, and why (named in the error).
# The ViT methods were measured in the demo's own path (2 workers, quick size): iBOT kNN 0.406 vs
# 0.420 at random init, SiT 0.445 vs 0.420; CPC v2 gained +2.4 points over random init at twice
# SimCLR's step time.
_TOO_BIG = "too big for a 28 px ConvNet on a CPU"
NOT_IN_DEMO = {"moby": f"Swin-based, {_TOO_BIG}", "dino": f"multi-crop ViT, {_TOO_BIG}",
               "moco_v3": f"ViT-based, {_TOO_BIG}", "swav": f"multi-crop, {_TOO_BIG}",
               "ibot": "a masked-patch ViT method that does not learn in the CPU demo's budget",
               "sit": "a ViT reconstruction method that does not learn in the CPU demo's budget",
               "cpc_v2": "a patch-grid method: twice SimCLR's step time for a smaller gain here"}

# The natural-view part: RGB photos of synthetic two-tone objects, told apart by body and accent
# colour, shape and print while background, pose, scale and lighting change between photos.
# Colour jitter and grayscale would erase the colour the natural views carry, and a crop can cut
# away the colours and print that identify the object while the natural views already vary the
# viewpoint, so both are off: each view is the whole photo (scale 1-1: full-size backbone
# recall@1 10.5 / 8.7 / 12.4% on seeds 0 / 1 / 2 against 7.9 / 6.8 / 7.6% with crops of half to
# all of it, at the same cost). Retrieval embeds with the projection head (demo_eval). A
# half-width ConvNet (4x fewer FLOPs) buys steps. AdamW at 3e-3 and temperature 0.1 learn in the
# 150 quick steps where LARS at the Fashion-MNIST settings barely moves. The numbers tried are in
# benchmarks/demo_experiments.md.
VIEW_SETTINGS: dict[str, Any] = {
    "image_size": 32,
    "method": {"name": "simclr", "backbone": {"name": "convnet", "width": 0.5, "small_images": True},
               "temperature": 0.1, "projection_hidden_dim": 512, "projection_dim": 128},
    "optimizer": {"name": "adamw", "base_lr": 0.003, "lr_scaling": "none", "weight_decay": 1e-4},
    "augment": {"scale": [1.0, 1.0], "blur_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0},
}


def check_method(method: str) -> None:
    if method in METHOD_SETTINGS:
        return
    why = f" ({method} is {NOT_IN_DEMO[method]})" if method in NOT_IN_DEMO else ""
    raise UsageError(f"--method {method!r}: the demo knows {sorted(METHOD_SETTINGS)}{why}")


def find_fashion_mnist(out: Path) -> Path:
    """The folder with Fashion-MNIST's idx.gz files: Debian's package, or torchvision's download."""
    if (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        return DEBIAN_FASHION_MNIST
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(out / "download"), train=True, download=True)
        FashionMNIST(str(out / "download"), train=False, download=True)
        return out / "download" / "FashionMNIST" / "raw"
    except Exception:  # offline, or the mirror refused
        raise UsageError(
            "Fashion-MNIST not found: install Debian's package (apt-get install dataset-fashion-mnist) "
            f"so that {DEBIAN_FASHION_MNIST} exists, or run where torchvision can download it"
        ) from None


def _sharded(dataset: Path) -> bool:
    return (dataset / "manifest.json").is_file() and (dataset / "shards.parquet").is_file()


def prepare_shards(out: Path, size: DemoSize, source: Path) -> dict[str, str]:
    """Export PNG folders and shard them (skipped when already done: the demo can be rerun)."""
    from sharding.fashion_mnist import export_fashion_mnist
    from sharding.migrate import migrate_dataset
    from sharding.run import shard_dataset

    shards = {}
    for split, limit in (("train", size.train_images), ("test", size.test_images)):
        dataset = out / "shards" / split
        if not _sharded(dataset):
            export_fashion_mnist(out / "png", split, limit_per_split=limit, source_dir=source, workers=2)
            shard_dataset(str(out / "png" / split), str(dataset), label_from="parent",
                          shard_samples=2048, workers=2, progress=True)
            migrate_dataset(str(dataset), progress=False)  # a no-op once the sharder writes v2
        shards[split] = str(dataset)
    return shards


def prepare_view_shards(out: Path, size: DemoSize, image_size: int = 32) -> dict[str, str]:
    """Generate the natural-view corpus (deterministic: seeds 0 and 1) and shard it, one
    sample per object (``--group-by dir``); training groups have 2-5 photos, test groups 2."""
    from sharding.run import shard_dataset
    from sharding.synthetic import generate_view_corpus

    shards = {}
    for split, groups, seed, views in (("train", size.view_groups, 0, (2, 5)),
                                       ("test", size.view_test_groups, 1, (2, 2))):
        dataset = out / "view_shards" / split
        if not _sharded(dataset):
            generate_view_corpus(out / "view_png" / split, groups, seed=seed, size=image_size,
                                 min_views=views[0], max_views=views[1], formats=("png",))
            shard_dataset(str(out / "view_png" / split), str(dataset), group_by="dir", label_from="parent",
                          shard_samples=512, workers=2, progress=True)
        shards[split] = str(dataset)
    return shards


def demo_config(method: str, shards: dict[str, str], out: Path, size: DemoSize, seed: int = 0) -> dict[str, Any]:
    """The Fashion-MNIST training config of `method` (part 1)."""
    check_method(method)
    settings = METHOD_SETTINGS[method]
    return {
        "seed": seed,
        "data": {"dataset": shards["train"], "recipe": "simclr",
                 "recipe_options": {"size": 28, **_AUGMENT}, "num_threads": 1},
        "method": {"name": method, "backbone": _BACKBONE, **settings["method"]},
        "optimizer": {"warmup_steps": 20 if size is FULL else 3, **settings["optimizer"]},
        "batch_size": size.batch_size,
        "epochs": size.epochs,
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": f"demo-{method}", "storage": str(out / "runs"),
                "checkpoint_every_steps": size.checkpoint_every_steps, "keep_checkpoints": 1,
                "log_every_steps": 5 if size is FULL else 1, "max_failures": 1},
        "monitor": {"train_dataset": shards["train"], "test_dataset": shards["test"], "every_epochs": 1,
                    "image_size": 28, "crop_fraction": 1.0, "batch_size": 512,
                    "max_train_samples": 5120, "max_test_samples": 1024},
    }


def view_config(shards: dict[str, str], out: Path, size: DemoSize, natural_views: bool,
                settings: dict[str, Any] = VIEW_SETTINGS, seed: int = 0) -> dict[str, Any]:
    """A training config of part 2: the same recipe and step budget with or without natural views.

    Both stop at `size.view_steps` (``max_steps``; the LR schedule spans exactly those steps);
    without natural views an epoch has more samples (photos, not groups), so fewer epochs."""
    per_epoch = max(1, size.view_groups // size.view_batch_size)
    name = "natural" if natural_views else "augment"
    return {
        "seed": seed,
        "data": {"dataset": shards["train"], "recipe": "simclr", "natural_views": natural_views,
                 "recipe_options": {"size": settings["image_size"], **settings["augment"]}, "num_threads": 1},
        "method": dict(settings["method"]),
        "optimizer": {"warmup_steps": max(3, size.view_steps // 15), **settings["optimizer"]},
        "batch_size": size.view_batch_size,
        "epochs": math.ceil(size.view_steps / per_epoch),
        "max_steps": size.view_steps,
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": f"demo-views-{name}", "storage": str(out / "runs"),
                "checkpoint_every_steps": size.view_steps, "keep_checkpoints": 1,
                "log_every_steps": 5, "max_failures": 1},
    }


def _train(config, address: Optional[str], verbose: bool):
    from viewstream.training import run_monitored_training

    result = run_monitored_training(config, address=address, verbose=verbose, progress=sys.stdout)
    print(result.summary())
    return result


def run_demo(method: str, out: Path, quick: bool, *, address: Optional[str] = None,
             verbose: bool = False, json_out: Optional[str] = None, seed: int = 0) -> dict[str, Any]:
    """Run the demo end to end and return the report (also written to out/report.json).

    The terminal shows the stages and the live training lines; Ray's own log lines go to
    out/ray.log unless `verbose`. One Ray (local or `address`) serves all three trainings."""
    check_method(method)  # before the heavy imports below: a wrong --method fails in well under a second
    from groundfloor.ray_connect import connect_ray
    from trainers.config import TrainConfig
    from viewstream.demo_eval import (evaluate_encoders, evaluate_retrieval, print_report_table,
                                      write_demo_plots, write_retrieval_plots)

    started = time.monotonic()
    size = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] Fashion-MNIST -> shards in {out / 'shards'}")
    shards = prepare_shards(out, size, find_fashion_mnist(out))
    print(f"[demo] natural-view corpus ({size.view_groups} objects, 2-5 photos each) -> {out / 'view_shards'}")
    view_shards = prepare_view_shards(out, size, VIEW_SETTINGS["image_size"])
    config = TrainConfig.model_validate(demo_config(method, shards, out, size, seed))
    natural = TrainConfig.model_validate(view_config(view_shards, out, size, True, seed=seed))
    augment = TrainConfig.model_validate(view_config(view_shards, out, size, False, seed=seed))
    # Ray Train's controller sees a run's end up to one poll late (2 s by default), three times
    # here; a local cluster's processes inherit this.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started_ray = connect_ray(address, log_file=None if verbose else out / "ray.log")
    try:
        print(f"[demo] 1/3 training {method} on Fashion-MNIST with {config.scaling.num_workers} Ray workers")
        result = _train(config, address, verbose)
        print(f"[demo] 2/3 training {natural.method['name']} on natural views ({size.view_steps} steps)")
        natural_result = _train(natural, address, verbose)
        print(f"[demo] 3/3 the same, every photo its own sample (augmentation only, {size.view_steps} steps)")
        augment_result = _train(augment, address, verbose)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print("[demo] Fashion-MNIST: kNN (k=20) and linear probe of trained vs random-init encoder vs raw pixels")
    scores = evaluate_encoders(config, result.checkpoint, shards)
    print("[demo] natural views: group retrieval recall@k on held-out objects")
    retrieval, grid = evaluate_retrieval(natural, {"natural_views": natural_result.checkpoint,
                                                   "augment_only": augment_result.checkpoint}, view_shards["test"])
    plots = write_demo_plots(config, result, shards, out, references=scores["knn_top1"])
    plots += write_retrieval_plots(grid, scores, retrieval, out)
    report = {
        "method": method,
        "view_method": natural.method["name"],
        **{f"knn_top1_{name}": value for name, value in scores["knn_top1"].items()},
        **{f"linear_top1_{name}": value for name, value in scores["linear_top1"].items()},
        **{f"recall@{k}_{name}": value for name, recalls in retrieval.items() for k, value in recalls.items()},
        "minutes": round((time.monotonic() - started) / 60, 2),
        "quick": quick,
        "seed": seed,
        "steps": result.metrics.get("step"),
        "view_steps": size.view_steps,
        "samples_per_s": result.metrics.get("samples_per_s"),
        "data_wait_fraction": result.metrics.get("data_wait_fraction"),
        "checkpoint": result.checkpoint,
        "view_checkpoints": {"natural_views": natural_result.checkpoint, "augment_only": augment_result.checkpoint},
        "metrics": str(result.out_dir / "metrics.jsonl"),
        "plots": [str(p) for p in plots],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_report_table(report)
    print(json.dumps({k: report[k] for k in (
        "method", "knn_top1_trained", "knn_top1_random_init", "knn_top1_raw_pixels", "linear_top1_trained",
        "linear_top1_random_init", "linear_top1_raw_pixels", "recall@1_natural_views", "recall@1_augment_only",
        "recall@1_random_init", "recall@1_raw_pixels", "minutes")}))
    write_json(json_out, report)
    return report
