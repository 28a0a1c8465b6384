"""What Ray Train costs: the same method, model, data and steps, in one run.

(a) a plain single-process loop (our `Trainer` step, no Ray), (b) `viewstream train` on Ray Train
with 1 worker, (c) with 2 workers. Reports step time after start-up, the overhead of (b) over
(a), Ray's start-up time, and the fraction of step time spent waiting for data.

    .venv/bin/python benchmarks/bench_train.py [--steps 60] [--images 2048]

The last line is one JSON object: ray_overhead (fraction), data_wait_fraction, startup_s, step_s
(plus the figures behind them).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sharding.ray_connect import connect_ray  # noqa: E402
from sharding.fashion_mnist import export_fashion_mnist  # noqa: E402
from sharding.migrate import migrate_dataset  # noqa: E402
from sharding.run import shard_dataset  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.metrics import read_metrics  # noqa: E402
from trainers.runner import run_training  # noqa: E402
from trainers.train_loop import StepTimer, Trainer  # noqa: E402


def make_config(dataset: str, storage: str, name: str, workers: int, steps: int, batch: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": 0,
        "data": {"dataset": dataset, "recipe": "simclr", "recipe_options": {"size": 28, "blur_p": 0.0}},
        "method": {"name": "simclr", "projection_hidden_dim": 256, "projection_dim": 64,
                   "backbone": {"name": "convnet", "width": 0.5, "small_images": True}},
        "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "sqrt", "warmup_steps": 5},
        "batch_size": batch, "epochs": 1000, "max_steps": steps,
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "run": {"name": name, "storage": storage, "checkpoint_every_steps": steps, "log_every_steps": 1},
    })


def plain_loop(config: TrainConfig, warmup: int) -> dict[str, float]:
    """(a): the same steps in this process, no Ray, no process group."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = Trainer(config, rank=0, world_size=1, device="cpu")
    startup = time.perf_counter() - started
    timer, finished_at = StepTimer(), []
    epoch = 0
    while trainer.step < trainer.total_steps:
        for batch in timer.timed_batches(trainer.loader.iter_epoch(epoch)):
            trainer.train_step(batch)
            finished_at.append(time.perf_counter())
            timer.steps += 1
            if trainer.step >= trainer.total_steps:
                break
        epoch += 1
    summary = timer.summary(1, config.per_worker_batch())
    steady = (finished_at[-1] - finished_at[warmup - 1]) / (len(finished_at) - warmup)
    return {"startup_s": startup, "step_s": steady, "data_wait_fraction": summary["data_wait_fraction"]}


def ray_run(config: TrainConfig, warmup: int) -> dict[str, float]:
    """(b)/(c): `viewstream train` on Ray Train; step time from the metrics after `warmup` steps."""
    started = time.perf_counter()
    result = run_training(config)
    wall = time.perf_counter() - started
    records = [r for r in read_metrics(result.out_dir) if "elapsed_s" in r]
    after = [r for r in records if r["step"] > warmup]
    steady = (after[-1]["elapsed_s"] - records[warmup - 1]["elapsed_s"]) / (after[-1]["step"] - warmup)
    train_s = records[-1]["elapsed_s"]
    return {"wall_s": wall, "startup_s": wall - train_s, "step_s": steady,
            "data_wait_fraction": records[-1]["data_wait_fraction"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        export_fashion_mnist(Path(tmp) / "png", "train", limit_per_split=args.images)
        dataset = str(Path(tmp) / "shards")
        shard_dataset(str(Path(tmp) / "png" / "train"), dataset, label_from="parent", shard_samples=512, progress=False)
        migrate_dataset(dataset, progress=False)  # a no-op once the sharder writes version 2
        storage = str(Path(tmp) / "runs")

        plain_cfg = make_config(dataset, storage, "plain", 1, args.steps, args.batch)
        t0 = time.perf_counter()
        plain = plain_loop(plain_cfg, args.warmup)
        plain["wall_s"] = time.perf_counter() - t0
        print(f"(a) plain loop:      {plain['step_s'] * 1000:.1f} ms/step, data wait {plain['data_wait_fraction']:.1%}")

        connect_ray(None, num_cpus=2, log_to_driver=False)
        try:
            one = ray_run(make_config(dataset, storage, "ray1", 1, args.steps, args.batch), args.warmup)
            print(f"(b) Ray, 1 worker:   {one['step_s'] * 1000:.1f} ms/step, start-up {one['startup_s']:.1f} s, "
                  f"data wait {one['data_wait_fraction']:.1%}")
            two = ray_run(make_config(dataset, storage, "ray2", 2, args.steps, args.batch * 2), args.warmup)
            print(f"(c) Ray, 2 workers:  {two['step_s'] * 1000:.1f} ms/step (2x the global batch), "
                  f"start-up {two['startup_s']:.1f} s, data wait {two['data_wait_fraction']:.1%}")
        finally:
            ray.shutdown()

    figures = {
        "ray_overhead": one["step_s"] / plain["step_s"] - 1.0,
        "data_wait_fraction": one["data_wait_fraction"],
        "startup_s": one["startup_s"],
        "step_s": one["step_s"],
        "plain_step_s": plain["step_s"],
        "two_workers_step_s": two["step_s"],
        "two_workers_data_wait_fraction": two["data_wait_fraction"],
        "two_workers_startup_s": two["startup_s"],
        "steps": args.steps,
        "batch_per_worker": args.batch,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
