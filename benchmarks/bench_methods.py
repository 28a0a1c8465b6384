"""Step time and peak memory of every SSL method: 1 process vs 2 gloo processes (CPU).

A step is what the runner does: training_step, backward, average_gradients, SGD step, EMA update.
Both settings use the same per-process batch (weak scaling, one torch thread per process, so 2
processes fill the 2 cores); `<method>_overhead` = 2-process step time / 1-process step time
(1.0 = communication and SyncBN are free) and `distributed_overhead` is their geometric mean.
Each measurement runs in fresh processes so peak RSS is per setting.

    .venv/bin/python benchmarks/bench_methods.py [--steps 3] [--batch 64] [--px 64]

Last output line: one JSON object with `<method>_step_s` (1 process), `<method>_step_s_2proc`,
`<method>_peak_mb`, `<method>_overhead` and `distributed_overhead`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.rank_exit import leave_rank_process  # noqa: E402
from trainers import distributed  # noqa: E402
from trainers.methods import METHODS, SampleIds, build_method  # noqa: E402

LOCAL_VIEWS = {"swav": 2, "dino": 2, "ibot": 2}
EXTRA = {"swav": {"queue_size": 3840},
         "cpc_v2": {"patch_size": 16, "patch_stride": 8}}  # 64 px views -> a 7 x 7 grid of 16 px patches
# ResNet-18 for every method except those that need patch tokens (iBOT: ViT-S/16, masked globals; SiT:
# its ViT-S/16 reconstructs from patch tokens; at --px 64 that is 4 x 4 tokens)
BACKBONE = {"ibot": lambda px: {"name": "vit_small", "image_size": px},
            "sit": lambda px: {"name": "vit_small", "image_size": px}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(name: str, batch: int, px: int, steps: int) -> dict:
    """Time `steps` runner steps (after one warm-up step) on this process's share."""
    torch.set_num_threads(1)
    base_rss = _rss_mb()
    backbone = BACKBONE[name](px) if name in BACKBONE else {"name": "resnet18"}
    config = {"name": name, "backbone": backbone, "num_local_views": LOCAL_VIEWS.get(name, 0),
              **EXTRA.get(name, {})}
    method = build_method(config, seed=0)
    optimizer = torch.optim.SGD(method.parameter_groups(1e-6), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(distributed.rank())
    views = [torch.randn(batch, 3, px, px, generator=g) for _ in range(2)]
    views += [torch.randn(batch, 3, px // 2, px // 2, generator=g) for _ in range(config["num_local_views"])]
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        # per-sample draws (SiT): this rank's item ids, as the Trainer passes them
        extra = ({"samples": SampleIds(0, 0, np.arange(batch) + distributed.rank() * batch)}
                 if method.needs_sample_ids else {})
        loss, _ = method.training_step(views, step, **extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(method)
        optimizer.step()
        method.on_after_optimizer_step(step, 1000)
        times.append(time.perf_counter() - start)
    return {"step_s": sum(times[1:]) / steps, "peak_mb": _rss_mb() - base_rss}


def _entry(rank: int, world: int, port: int, out: str, args: tuple) -> None:
    if world > 1:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = _measure(*args)
        if world > 1:  # the slowest rank sets the pace
            t = torch.tensor([result["step_s"], result["peak_mb"]], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            result = {"step_s": float(t[0]), "peak_mb": float(t[1])}
        torch.save(result, os.path.join(out, f"{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()
    if world > 1:
        leave_rank_process()  # gloo's threads may still hold Python objects: testbed/rank_exit.py


def run(world: int, *args) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_entry, args=(world, port, out, args), nprocs=world, join=True)
        return torch.load(os.path.join(out, "0.pt"), weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="per-process batch")
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--methods", nargs="*", default=sorted(METHODS))
    args = parser.parse_args()
    report: dict[str, float] = {}
    ratios = []
    for name in tqdm(args.methods, desc="methods"):
        single = run(1, name, args.batch, args.px, args.steps)
        double = run(2, name, args.batch, args.px, args.steps)
        ratio = double["step_s"] / single["step_s"]
        ratios.append(ratio)
        report.update({
            f"{name}_step_s": round(single["step_s"], 4),
            f"{name}_step_s_2proc": round(double["step_s"], 4),
            f"{name}_peak_mb": round(single["peak_mb"], 1),
            f"{name}_overhead": round(ratio, 3),
        })
        tqdm.write(f"{name}: 1 proc {single['step_s']:.3f} s/step, 2 procs {double['step_s']:.3f} s/step, "
                   f"overhead x{ratio:.2f}, peak +{single['peak_mb']:.0f} MB")
    report["distributed_overhead"] = round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
