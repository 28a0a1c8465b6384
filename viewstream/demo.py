"""`viewstream demo`: the whole spine on Fashion-MNIST, on one CPU machine, in one command.

Shard Fashion-MNIST (train and test, labelled), train a method with 2 Ray workers, then score
weighted kNN (k=20, cosine, T=0.07) of the trained encoder against the same encoder at random
init and against raw pixels, and write plots and ``report.json`` next to the run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from viewstream.cliflags import add_address, add_json, add_verbose, with_example, write_json
from viewstream.errors import UsageError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DemoSize:
    """How much data and training one demo run uses."""

    train_images: Optional[int]  # None: all 60k
    test_images: Optional[int]   # None: all 10k
    epochs: int
    batch_size: int
    checkpoint_every_steps: int


FULL = DemoSize(train_images=None, test_images=None, epochs=4, batch_size=256, checkpoint_every_steps=200)
QUICK = DemoSize(train_images=1536, test_images=512, epochs=3, batch_size=128, checkpoint_every_steps=12)

# Per-method settings for 28 px grayscale images on a CPU: a small ConvNet and the method's
# own optimizer; augmentations tuned down for 28 px (no blur, no hue/saturation on grayscale).
_BACKBONE = {"name": "convnet", "width": 1.0, "small_images": True}
_AUGMENT = {"scale": [0.25, 1.0], "blur_p": 0.0, "saturation": 0.0, "hue": 0.0, "grayscale_p": 0.0}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "simclr": {"method": {"temperature": 0.2, "projection_hidden_dim": 512, "projection_dim": 128},
               "optimizer": {"name": "lars", "base_lr": 1.2, "lr_scaling": "sqrt", "weight_decay": 1e-6}},
    "moco_v2": {"method": {"queue_size": 4096, "projection_hidden_dim": 512, "projection_dim": 128},
                "optimizer": {"name": "sgd", "base_lr": 0.06, "lr_scaling": "linear", "weight_decay": 5e-4}},
    "byol": {"method": {"projection_hidden_dim": 512, "projection_dim": 128, "prediction_hidden_dim": 512},
             "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "sqrt", "weight_decay": 1e-6}},
    "simsiam": {"method": {"projection_dim": 512, "prediction_hidden_dim": 128},
                "optimizer": {"name": "sgd", "base_lr": 0.05, "lr_scaling": "linear", "weight_decay": 1e-4}},
}


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


def prepare_shards(out: Path, size: DemoSize, source: Path) -> dict[str, str]:
    """Export PNG folders and shard them (skipped when already done: the demo can be rerun)."""
    from sharding.fashion_mnist import export_fashion_mnist
    from sharding.migrate import migrate_dataset
    from sharding.run import shard_dataset

    shards = {}
    for split, limit in (("train", size.train_images), ("test", size.test_images)):
        dataset = out / "shards" / split
        if not (dataset / "manifest.json").is_file() or not (dataset / "shards.parquet").is_file():
            export_fashion_mnist(out / "png", split, limit_per_split=limit, source_dir=source)
            shard_dataset(str(out / "png" / split), str(dataset), label_from="parent",
                          shard_samples=2048, workers=2, progress=True)
            migrate_dataset(str(dataset), progress=False)  # a no-op once the sharder writes v2
        shards[split] = str(dataset)
    return shards


def demo_config(method: str, shards: dict[str, str], out: Path, size: DemoSize) -> dict[str, Any]:
    if method not in METHOD_SETTINGS:
        raise UsageError(f"--method {method!r}: the demo knows {sorted(METHOD_SETTINGS)}")
    settings = METHOD_SETTINGS[method]
    return {
        "seed": 0,
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
                    "max_train_samples": 10240, "max_test_samples": 2048},
    }


def run_demo(method: str, out: Path, quick: bool, *, address: Optional[str] = None,
             verbose: bool = False, json_out: Optional[str] = None) -> dict[str, Any]:
    """Run the demo end to end and return the report (also written to out/report.json).

    The terminal shows the stages and the live training line; Ray's own log lines go to the
    run folder's ray.log unless `verbose`."""
    from trainers.config import TrainConfig
    from viewstream.demo_eval import evaluate_encoders, write_demo_plots
    from viewstream.train_command import run_monitored_training

    if method not in METHOD_SETTINGS:
        raise UsageError(f"--method {method!r}: the demo knows {sorted(METHOD_SETTINGS)}")
    started = time.monotonic()
    size = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] Fashion-MNIST -> shards in {out / 'shards'}")
    shards = prepare_shards(out, size, find_fashion_mnist(out))
    config = TrainConfig.model_validate(demo_config(method, shards, out, size))
    print(f"[demo] training {method} with {config.scaling.num_workers} Ray workers on the CPU")
    result = run_monitored_training(config, address=address, verbose=verbose, progress=sys.stdout)
    print(result.summary())
    print("[demo] kNN (k=20) of trained vs random-init encoder vs raw pixels")
    scores = evaluate_encoders(config, result.checkpoint, shards)
    plots = write_demo_plots(config, result, shards, out)
    report = {
        "method": method,
        **{f"knn_top1_{name}": value for name, value in scores.items()},
        "minutes": round((time.monotonic() - started) / 60, 2),
        "quick": quick,
        "steps": result.metrics.get("step"),
        "samples_per_s": result.metrics.get("samples_per_s"),
        "data_wait_fraction": result.metrics.get("data_wait_fraction"),
        "checkpoint": result.checkpoint,
        "metrics": str(result.out_dir / "metrics.jsonl"),
        "plots": [str(p) for p in plots],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("method", "knn_top1_trained", "knn_top1_random_init",
                                              "knn_top1_raw_pixels", "minutes")}))
    write_json(json_out, report)
    return report


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="shard Fashion-MNIST, train on 2 Ray workers, compare kNN accuracy",
        **with_example("viewstream demo --quick", "viewstream demo --method byol --out demo_byol --json report.json"))
    demo.add_argument("--method", default="simclr", help=f"one of {sorted(METHOD_SETTINGS)} (default simclr)")
    demo.add_argument("--quick", action="store_true", help="reduced size (a couple of minutes)")
    demo.add_argument("--out", default="demo_out", help="folder for shards, run, plots and report.json")
    add_address(demo)
    add_json(demo)
    add_verbose(demo)
    demo.set_defaults(func=lambda args: run_demo(args.method, Path(args.out), args.quick, address=args.address,
                                                 verbose=args.verbose, json_out=args.json_out) and 0)
