"""What Ray Train costs: the same method, model, data and steps, in one run.

(a) a plain single-process loop (the loop's own `step_and_log`, no Ray), (b) `viewstream train` on
Ray Train with 1 worker, (c) with 2 workers. Reports step time after start-up, the overhead of
(b) over (a) (each the fastest of `--repeats` alternating runs), Ray's start-up time, and the
fraction of step time spent waiting for data. Also:

- data_wait_fraction: the time (b)'s training thread waited for the next batch over the same
  window as step_s (after `--warmup` steps; an epoch start falls inside it: 32 steps an epoch),
  so it says whether the loader keeps the model busy. `*_from_start` counts from the first
  batch: it adds the one-off wait for the first batch (1.3-2.1 s, of which ~1.1 s is the
  process's first build of the view graph, mostly DALI's AutoGraph turning its `if`s into
  conditionals, `pipeline.dali_graph`; later builds take ~0.04 s): start-up, which the steady
  window leaves out;

- host_syncs_per_step: SimCLR on a ResNet-18 with SyncBatchNorm through the real step
  (`Trainer.train_step`) on 2 gloo processes, the calls that force a device->host sync on a GPU
  (`testbed.host_syncs`: value reads, data-dependent shapes, boolean-mask indexing,
  torch.cuda.synchronize) per step after warm-up (benchmarks/gpu_check_ranks.py; goal 0);
  `plain_host_syncs_per_step`: the same count over (a)'s non-log steps;
- ddp_vs_flat_step_ratio: step time of the DDP gradient sync (trainers.distributed.data_parallel)
  over the old flat all-reduce (average_gradients), 2 gloo processes, SimCLR on ResNet-18 at
  64 px, same seeds and batches (goal <= 1).

    .venv/bin/python benchmarks/bench_train.py [--steps 60] [--images 2048]

The last line is one JSON object: ray_overhead (fraction), host_syncs_per_step,
ddp_vs_flat_step_ratio, data_wait_fraction, startup_s, step_s (plus the figures behind them),
and the load average at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from groundfloor.ray_connect import connect_ray  # noqa: E402
from sharding.fashion_mnist import export_fashion_mnist  # noqa: E402
from sharding.migrate import migrate_dataset  # noqa: E402
from sharding.run import shard_dataset  # noqa: E402
from trainers.config import TrainConfig  # noqa: E402
from trainers.metrics import read_metrics  # noqa: E402
from trainers.runner import run_training  # noqa: E402
from trainers.train_loop import StepTimer, is_log_step, step_and_log  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402
from testbed.host_syncs import counting_host_syncs  # noqa: E402
from testbed.rank_exit import leave_rank_process  # noqa: E402


def make_config(dataset: str, storage: str, name: str, workers: int, steps: int, batch: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "seed": 0,
        "data": {"dataset": dataset, "recipe": "simclr", "recipe_options": {"size": 28, "blur_p": 0.0}},
        "method": {"name": "simclr", "projection_hidden_dim": 256, "projection_dim": 64,
                   "backbone": {"name": "convnet", "width": 0.5, "small_images": True}},
        "optimizer": {"name": "lars", "base_lr": 1.0, "lr_scaling": "sqrt", "warmup_steps": 5},
        "batch_size": batch, "epochs": 1000, "max_steps": steps,
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "run": {"name": name, "storage": storage, "checkpoint_every_steps": steps, "log_every_steps": 10},
    })


def plain_loop(config: TrainConfig, warmup: int) -> dict[str, float]:
    """(a): the same steps in this process, no Ray, no process group; counts host syncs."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = Trainer(config, rank=0, world_size=1, device="cpu")
    startup = time.perf_counter() - started
    timer, finished_at, waited = StepTimer(), [], []
    syncs, quiet_steps = 0, 0
    epoch = 0
    while trainer.step < trainer.total_steps:
        for batch in timer.timed_batches(trainer.loader.iter_epoch(epoch)):
            counter = [0]
            with counting_host_syncs(counter):
                step_and_log(trainer, batch, timer)
            if trainer.step > warmup and not is_log_step(config, trainer.step, trainer.total_steps):
                syncs, quiet_steps = syncs + counter[0], quiet_steps + 1
            finished_at.append(time.perf_counter())
            waited.append(timer.data_wait_s)
            if trainer.step >= trainer.total_steps:
                break
        epoch += 1
    trainer.loader.close()
    summary = timer.summary(1, config.per_worker_batch())
    window = finished_at[-1] - finished_at[warmup - 1]
    return {"startup_s": startup, "step_s": window / (len(finished_at) - warmup),
            "data_wait_fraction": (waited[-1] - waited[warmup - 1]) / window,
            "data_wait_fraction_from_start": summary["data_wait_fraction"],
            "host_syncs_per_step": syncs / max(quiet_steps, 1), "counted_steps": quiet_steps}


def _ddp_vs_flat_worker(rank: int, world: int, port: int, steps: int, warmup: int, batch: int, out: str) -> None:
    import torch.distributed as dist
    from timm.optim import Lars

    from trainers import distributed
    from trainers.methods import build_method

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    config = {"name": "simclr", "backbone": {"name": "resnet18", "small_images": True},
              "projection_hidden_dim": 512, "projection_dim": 128}
    g = torch.Generator().manual_seed(rank)
    views = [torch.randn(batch, 3, 64, 64, generator=g) for _ in range(2)]
    times = {}
    for mode in ("flat", "ddp", "flat", "ddp"):  # interleaved: load drifts hit both alike
        method = build_method(config, seed=0)
        optimizer = Lars([g for g in method.parameter_groups(1e-6) if g["params"]], lr=0.1)
        step_fn = (distributed.data_parallel(method, "cpu", find_unused_parameters=False) if mode == "ddp"
                   else method.training_step)  # SimCLR uses every parameter: what the Trainer picks
        for i in range(warmup + steps):
            if i == warmup:
                dist.barrier()
                t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, _ = step_fn(views, i)
            loss.backward()
            if mode == "flat":
                distributed.average_gradients(method)
            optimizer.step()
        dist.barrier()
        times.setdefault(mode, []).append((time.perf_counter() - t0) / steps)
    if rank == 0:
        Path(out).write_text(json.dumps({m: min(v) for m, v in times.items()}))
    dist.destroy_process_group()
    leave_rank_process()  # gloo's threads may still hold Python objects: testbed/rank_exit.py


def ddp_vs_flat(steps: int = 4, warmup: int = 1, batch: int = 16) -> dict[str, float]:
    """Step time of DDP vs the flat all-reduce on 2 gloo processes (ResNet-18, 64 px)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        mp.spawn(_ddp_vs_flat_worker, args=(2, port, steps, warmup, batch, out), nprocs=2, join=True)
        times = json.loads(Path(out).read_text())
    return {"ddp_step_s": times["ddp"], "flat_step_s": times["flat"],
            "ddp_vs_flat_step_ratio": times["ddp"] / times["flat"]}


def two_rank_host_syncs() -> dict[str, object]:
    """Host syncs per step of SimCLR on a ResNet-18 with SyncBN, 2 gloo ranks, the real step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check_configs import sizes
    from gpu_check_ranks import check_two_ranks

    s = sizes(quick=True)
    s["ranks"] = {**s["ranks"], "backbone": {"name": "resnet18", "width": 0.25, "small_images": True}, "size": 32}
    result = check_two_ranks(s["ranks"], "cpu", ["simclr"])
    return {"host_syncs_per_step": result.get("host_syncs_per_step"), "syncbn_layers": result.get("two_rank_syncbn_layers"),
            "two_rank_ok": result.get("two_rank_ok")}


def ray_run(config: TrainConfig, warmup: int) -> dict[str, float]:
    """(b)/(c): `viewstream train` on Ray Train; step time from the metrics after `warmup` steps."""
    started = time.perf_counter()
    result = run_training(config)
    wall = time.perf_counter() - started
    records = [r for r in read_metrics(result.out_dir) if "elapsed_s" in r]  # one per log step
    base = next(r for r in records if r["step"] >= warmup)
    last = records[-1]
    window = last["elapsed_s"] - base["elapsed_s"]
    waited = last["data_wait_fraction"] * last["elapsed_s"] - base["data_wait_fraction"] * base["elapsed_s"]
    return {"wall_s": wall, "startup_s": wall - last["elapsed_s"], "step_s": window / (last["step"] - base["step"]),
            "data_wait_fraction": waited / window, "data_wait_fraction_from_start": last["data_wait_fraction"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ddp-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="(a)/(b) pairs; each side keeps its fastest")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    ranks = two_rank_host_syncs()
    print(f"2 ranks, ResNet-18 + SyncBN, real step: {ranks['host_syncs_per_step']} host syncs per step "
          f"({ranks['syncbn_layers']} SyncBN layers; 2 ranks == 1 rank x 2B: {ranks['two_rank_ok']})")
    sync = ddp_vs_flat(steps=args.ddp_steps)
    print(f"DDP vs flat all-reduce (2 gloo, ResNet-18 64 px): {sync['ddp_step_s'] * 1000:.0f} vs "
          f"{sync['flat_step_s'] * 1000:.0f} ms/step")
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        export_fashion_mnist(Path(tmp) / "png", "train", limit_per_split=args.images)
        dataset = str(Path(tmp) / "shards")
        shard_dataset(str(Path(tmp) / "png" / "train"), dataset, label_from="parent", shard_samples=512, progress=False)
        migrate_dataset(dataset, progress=False)  # a no-op once the sharder writes version 2
        storage = str(Path(tmp) / "runs")

        # (a) and (b) alternate `--repeats` times and each side keeps its fastest window: on a
        # shared 2-core box the same loop's step time moves by 10-20 % from minute to minute,
        # more than the overhead measured; Ray is started for (b) and shut down before (a).
        plains, ones, two = [], [], None
        for r in range(args.repeats):
            t0 = time.perf_counter()
            plain = plain_loop(make_config(dataset, storage, f"plain{r}", 1, args.steps, args.batch), args.warmup)
            plain["wall_s"] = time.perf_counter() - t0
            plains.append(plain)
            print(f"(a) plain loop:      {plain['step_s'] * 1000:.1f} ms/step, data wait {plain['data_wait_fraction']:.1%}, "
                  f"{plain['host_syncs_per_step']:g} host syncs per (non-log) step")
            connect_ray(None, num_cpus=2, log_to_driver=False)
            try:
                one = ray_run(make_config(dataset, storage, f"ray1-{r}", 1, args.steps, args.batch), args.warmup)
                ones.append(one)
                print(f"(b) Ray, 1 worker:   {one['step_s'] * 1000:.1f} ms/step, start-up {one['startup_s']:.1f} s, "
                      f"data wait {one['data_wait_fraction']:.1%}")
                if r == args.repeats - 1:
                    two = ray_run(make_config(dataset, storage, "ray2", 2, args.steps, args.batch * 2), args.warmup)
                    print(f"(c) Ray, 2 workers:  {two['step_s'] * 1000:.1f} ms/step (2x the global batch), "
                          f"start-up {two['startup_s']:.1f} s, data wait {two['data_wait_fraction']:.1%}")
            finally:
                ray.shutdown()
        plain = min(plains, key=lambda run: run["step_s"])
        one = min(ones, key=lambda run: run["step_s"])

    figures = {
        "ray_overhead": one["step_s"] / plain["step_s"] - 1.0,
        "plain_step_s_runs": [run["step_s"] for run in plains],
        "ray_step_s_runs": [run["step_s"] for run in ones],
        "host_syncs_per_step": ranks["host_syncs_per_step"],
        "host_syncs_syncbn_layers": ranks["syncbn_layers"],
        "plain_host_syncs_per_step": plain["host_syncs_per_step"],
        "ddp_vs_flat_step_ratio": sync["ddp_vs_flat_step_ratio"],
        "ddp_step_s": sync["ddp_step_s"],
        "flat_step_s": sync["flat_step_s"],
        "data_wait_fraction": one["data_wait_fraction"],
        "data_wait_fraction_from_start": one["data_wait_fraction_from_start"],
        "plain_data_wait_fraction": plain["data_wait_fraction"],
        "plain_data_wait_fraction_from_start": plain["data_wait_fraction_from_start"],
        "startup_s": one["startup_s"],
        "step_s": one["step_s"],
        "plain_step_s": plain["step_s"],
        "two_workers_step_s": two["step_s"],
        "two_workers_data_wait_fraction": two["data_wait_fraction"],
        "two_workers_data_wait_fraction_from_start": two["data_wait_fraction_from_start"],
        "two_workers_startup_s": two["startup_s"],
        "steps": args.steps,
        "batch_per_worker": args.batch,
        "load_average_start": load_at_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
