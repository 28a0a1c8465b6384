"""Two ranks through the real training step equal one rank at twice the batch; host syncs per step.

What holds, for every method checked:
- `two_rank_ok`: 2 ranks x batch B through `trainers.trainer.Trainer.train_step` (DDP,
  SyncBatchNorm, the losses' gathers, clipping, LARS, EMA updates) give the loss, the gradients
  BEFORE clipping and the whole state after the step (weights, teachers, queues, centres, BN
  statistics) of 1 rank x batch 2B, for `STEPS` steps, in float64. Before clipping, because the
  configs clip at 5.0: a gradient summed over ranks instead of averaged would be clipped back to
  the same norm and pass. `TOLERANCE` says how close and why.
- `host_syncs_per_step`: the times the host waits for the device in one step at the training
  precision (bf16 autocast on CUDA), after `WARMUP` steps (DDP's bucket rebuild in its 2nd
  forward, the re-wrap once SwAV's/DINO's frozen parameters thaw, cuDNN autotuning); the most
  over methods and ranks. Goal 0. CUDA: `testbed.host_syncs.counting_cuda_syncs` (torch's sync
  debug mode); CPU: `counting_host_syncs` (the calls that would sync on a GPU).

Backend. NCCL cannot run two ranks on one GPU: its init fails with "Duplicate GPU detected :
rank %d and rank %d both on CUDA device" / ncclInvalidUsage (NVIDIA/nccl src/init.cc,
initTransportsRank), so with ONE visible GPU both ranks use gloo with CUDA tensors. torch's
gloo takes CUDA tensors for every collective this step issues: all_gather (ProcessGroupGloo.cpp
ProcessGroupGloo::allgather -> AsyncAllgatherCUDAWork), all_reduce (GlooAllreduceRegistry,
gloo/ProcessGroupGlooCuda.cpp: AsyncAllreduceCUDAHostWork / AsyncAllreduceCUDADeviceWork) and
broadcast (AsyncBroadcastCUDAWork; DDP's constructor), all present in torch 2.14's
libtorch_cpu.so / libtorch_cuda.so; `Backend.backend_capability` lists "cuda" for gloo
(torch/distributed/distributed_c10d.py). It has no CUDA reduce_scatter or send/recv, which this
step never calls. gloo stages each CUDA collective through pinned host memory and its worker
thread waits for the copy (ProcessGroupGlooDetail.hpp pinnedLike; the work's run()): a wait
of the transport, not of the step, which the debug mode does not see in that thread and NCCL
does not have. With 2+ GPUs each rank gets its own GPU and the backend Ray Train gets
(`cpu:gloo,cuda:nccl`, trainers.distributed.process_group_backend).

Limitations: 2 ranks (the arithmetic of N > 2 is the same sum); float64 for the equivalence
(cuDNN then runs NCHW kernels, ATen/native/ConvUtils.h cudnn_conv_suggest_memory_format: "not
float64"), so the bf16 channels_last kernels are exercised by the host-sync steps only.
"""
from __future__ import annotations

import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpu_check_configs import method_config, train_config
from pipeline import DataPosition, ViewBatch
from testbed.host_syncs import counting_syncs
from testbed.numerics import default_dtype
from testbed.rank_exit import leave_rank_process
from trainers import distributed
from trainers.distributed import SyncBatchNorm
from trainers.trainer import Trainer

STEPS = 3  # step 0 with SwAV's prototypes / DINO's last layer frozen, step 1 thawed (DDP re-wrapped), step 2
WARMUP, COUNTED = 3, 3
# Relative error allowed per tensor: max|a - b| / max(max|b|, FLOOR). float64 rounds at 1.1e-16;
# a step is a few hundred reductions summed in another order on 2 ranks (halves of the batch,
# SyncBN's merged statistics), amplified by normalisations of small batches, temperatures down to
# 0.04 and LARS's trust ratio: measured <= 1e-13 on CPU for every method (1e-10 for the zero
# gradients below, against FLOOR). The bugs this is for (a rank's gradient term dropped, a sum
# where a mean belongs, a wrong slice of a gather) are errors of order 1. FLOOR: gradients that
# are 0 in exact arithmetic (a bias before a BatchNorm) hold rounding noise of ~1e-17 and are
# compared in absolute terms.
TOLERANCE = 1e-6
FLOOR = 1e-6
FREEZE = {"swav": {"freeze_prototypes_steps": 1}, "dino": {"freeze_last_layer_steps": 1}}


def _global_views(method: dict[str, Any], s: dict[str, Any], step: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """The global batch of `step`: 2 global crops, then the local ones (the same on every rank)."""
    g = torch.Generator().manual_seed(1000 + step)
    sizes = [s["size"]] * 2 + [s["local"]] * method.get("num_local_views", 0)
    return [torch.randn(s["batch"], 3, px, px, generator=g, dtype=dtype) for px in sizes]


def _batch(views: list[torch.Tensor], step: int, device: str) -> ViewBatch:
    """This rank's contiguous rows of a global batch, on the device, as the loader hands them over."""
    n = views[0].shape[0] // distributed.world_size()
    first = distributed.rank() * n
    rows = torch.arange(first, first + n) + step * views[0].shape[0]  # item ids: global, rank-independent
    keys = [f"s{step}i{first + i}" for i in range(n)]
    local = [v[first : first + n].to(device) for v in views]
    return ViewBatch(views=local, keys=keys, group_ids=keys, labels=None, label_vocabulary=[],
                     view_sources=torch.zeros(n, len(local), dtype=torch.long), rows=rows, epoch=0, batch=step,
                     position=DataPosition(0, step + 1))


def _trainer(method: dict[str, Any], s: dict[str, Any], device: str, precision: str) -> Trainer:
    config = train_config(method, s, distributed.world_size(), precision=precision)
    return Trainer(config, distributed.rank(), distributed.world_size(), device, steps_per_epoch=10)


def step_records(method: dict[str, Any], s: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """Per step, in float64: the loss (mean over ranks), the gradients before clipping, the state."""
    with default_dtype(torch.float64):
        trainer = _trainer(method, s, device, precision="fp32")
        named = [(n, p) for n, p in trainer.method.named_parameters() if p.requires_grad]
        pre_clip: dict[str, torch.Tensor] = {}
        clip = trainer.method.clip_gradients

        def snapshot_then_clip(max_norm: float) -> None:  # the Trainer calls this between backward and step
            pre_clip.clear()
            pre_clip.update({n: p.grad.detach().cpu() for n, p in named if p.grad is not None})
            clip(max_norm)

        trainer.method.clip_gradients = snapshot_then_clip
        records = []
        for step in range(STEPS):
            logs = trainer.train_step(_batch(_global_views(method, s, step, torch.float64), step, device))
            loss = distributed.all_reduce_sum(logs["loss"].detach()) / distributed.world_size()
            records.append({"loss": loss.cpu(), "grads": dict(pre_clip),
                            "state": {k: v.detach().cpu().clone() for k, v in trainer.method.state_dict().items()}})
        return records


def worst_error(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> tuple[float, str]:
    """The largest relative error over steps, loss, gradients and state, and where it is."""
    worst, where = 0.0, ""
    for step, (g, w) in enumerate(zip(got, want)):
        pairs = [("loss", g["loss"], w["loss"])]
        for part in ("grads", "state"):
            if g[part].keys() != w[part].keys():
                return 1.0, f"step {step} {part}: keys differ: {sorted(g[part].keys() ^ w[part].keys())[:3]}"
            pairs += [(f"{part} {k}", g[part][k], v) for k, v in w[part].items()]
        for what, a, b in pairs:
            if not b.is_floating_point():
                error = 0.0 if torch.equal(a, b) else 1.0
            else:
                error = float((a - b).abs().max() / max(float(b.abs().max()), FLOOR)) if b.numel() else 0.0
            if error > worst or error != error:  # NaN: a failure too
                worst, where = (1.0 if error != error else error), f"step {step} {what}"
    return worst, where


def syncs_per_step(method: dict[str, Any], s: dict[str, Any], device: str) -> dict[str, float]:
    """Host syncs per step at the training precision after WARMUP steps, and the SyncBN layers
    the step ran through (> 0 for the conv nets: the count is not vacuous)."""
    trainer = _trainer(method, s, device, precision="auto")
    batches = [_batch(_global_views(method, s, step, torch.float32), step, device) for step in range(WARMUP + COUNTED)]
    for batch in batches[:WARMUP]:
        trainer.train_step(batch)
    counter = [0]
    with counting_syncs(device, counter):
        for batch in batches[WARMUP:]:
            trainer.train_step(batch)
    per_step = counter[0] / COUNTED
    return {"syncs": int(per_step) if per_step == int(per_step) else round(per_step, 3),
            "syncbn_layers": sum(isinstance(m, SyncBatchNorm) for m in trainer.method.modules())}


def _backend(device: str) -> tuple[str, bool]:
    """(backend, whether each rank has a GPU of its own): see the module docstring."""
    if device == "cuda" and torch.cuda.device_count() >= 2:  # torch/cuda/__init__.py device_count: visible GPUs
        return distributed.process_group_backend(use_gpu=True), True
    return "gloo", False


def _rank_main(rank: int, port: int, device: str, tmp: str, methods: dict[str, dict], s: dict[str, Any]) -> None:
    backend, own_gpu = _backend(device)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if device == "cuda":
        # torch/cuda/__init__.py set_device: the "cuda" device of this process, which the Trainer's
        # .to("cuda") and DDP's device_ids (torch.cuda.current_device(), trainers/distributed/
        # data_parallel.py) use; one GPU: both ranks on cuda:0 (gloo, module docstring)
        torch.cuda.set_device(rank if own_gpu else 0)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(minutes=5))
    try:
        out: dict[str, Any] = {}
        for name, method in methods.items():
            reference = torch.load(Path(tmp) / f"{name}.pt", weights_only=True)
            error, where = worst_error(step_records(method, s, device), reference)
            out[name] = {"error": error, "where": where, **syncs_per_step(method, s, device)}
            if device == "cuda":
                torch.cuda.empty_cache()  # two processes share one GPU: torch/cuda/memory.py empty_cache
                # hands this process's unused cached blocks back "so that those can be used in other GPU application"
        torch.save(out, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    leave_rank_process()  # gloo's threads may still hold Python objects: testbed/rank_exit.py


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_two_ranks(s: dict[str, Any], device: str, names: list[str]) -> dict[str, Any]:
    """Every method in `names` on 2 spawned ranks vs this process alone at twice the batch.

    Needs no process group in this process (the reference runs without one).
    """
    methods = {name: {**method_config(name, s, s["batch"]), **FREEZE.get(name, {})} for name in names}
    backend, _ = _backend(device)
    out: dict[str, Any] = {"two_rank_backend": backend}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, method in methods.items():  # 1 rank x 2B: the reference each rank compares with
                torch.save(step_records(method, s, device), Path(tmp) / f"{name}.pt")
            if device == "cuda":
                torch.cuda.empty_cache()  # the ranks share this GPU (torch/cuda/memory.py empty_cache, as above)
            mp.spawn(_rank_main, args=(_free_port(), device, tmp, methods, s), nprocs=2, join=True)
            ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    except Exception as err:  # report, don't hide: the JSON says what failed
        return {**out, "two_rank_ok": False, "two_rank_error": f"{type(err).__name__}: {err}"[-300:]}
    errors = {(r, name): ranks[r][name] for r in range(2) for name in methods}
    (r, name), worst = max(errors.items(), key=lambda item: item[1]["error"])
    syncs = {m: max(ranks[0][m]["syncs"], ranks[1][m]["syncs"]) for m in methods}
    out.update(two_rank_ok=worst["error"] <= TOLERANCE, two_rank_max_rel_error=float(f"{worst['error']:.3g}"),
               two_rank_worst=f"{name} rank {r} {worst['where']}", two_rank_tolerance=TOLERANCE,
               two_rank_syncbn_layers=max(ranks[0][m]["syncbn_layers"] for m in methods),
               host_syncs_per_step=max(syncs.values()), host_syncs_by_method=syncs,
               host_sync_counter="torch.cuda.set_sync_debug_mode" if device == "cuda" else "testbed.host_syncs")
    return out
