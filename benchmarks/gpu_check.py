"""Check and time the GPU path on one machine with one CUDA GPU, in minutes; print one JSON line.

    python benchmarks/gpu_check.py                      # on the GPU box (a few minutes on an H100)
    python benchmarks/gpu_check.py --device cpu --quick # the CPU run CI makes (tiny sizes)

What it checks, for every method (simclr, moco_v2, moco_v3, swav, dino, byol, simsiam, cpc_v2):
`training_step` + backward + LARS step of ResNet-50 at 224 px, batch 128, bf16 autocast and
channels_last, with the Trainer's CUDA flags (TF32, cuDNN autotuning for conv nets:
trainers.trainer.cuda_flags), on synthetic tensors (`<method>_samples_per_s`,
`<method>_peak_mem_gb`); the same step through a 1-rank process group (backend
``cpu:gloo,cuda:nccl``, the one Ray Train gets) with the collectives forced on, so DDP, SyncBN,
the gathers, the log all-reduce and the digest all-gather all go through NCCL (`nccl_ok`); DDP vs
the old flat all-reduce step time (`ddp_vs_flat_step_ratio`); 2 ranks through the real
`Trainer.train_step` vs 1 rank at twice the batch (`two_rank_ok`) and the host syncs of a step
(`host_syncs_per_step`, goal 0), both explained in benchmarks/gpu_check_ranks.py (with one GPU
the 2 ranks share it over gloo: NCCL refuses two ranks on one device); and, when `nvidia.dali`
imports, the DALI `mixed` pipeline's samples/s for the simclr and multicrop recipes and its pixel
agreement with the CPU pipeline on the same batches (`dali_gpu_vs_cpu_max_abs_diff`), holding
earlier batches while later ones are produced (a recycled DALI buffer would show as a mismatch).
Without DALI: `"dali": "absent"`. Exit status 1 when the collectives or the 2-rank equivalence fail.

Runs on a bare GPU box (torch, torchvision, timm, pyarrow, pillow, numpy, tqdm, pyyaml) with this
repository's checkout and pydantic, which the configs are built with (the real models and their
validators: what training builds). No Ray, DALI, webdataset, boto3 nor network. pydantic's wheels
(pure Python, except pydantic_core: CPython 3.12, x86-64 on the box), downloaded here into a
folder `.git/info/exclude` ignores:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing_extensions==4.16.0 \
        typing-inspection==0.4.5

and carried (the device tool's `run` with carry [".whl"]):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py

Module level imports only the standard library and torch; this repository's modules are imported
inside the functions, after `main` puts the checkout on sys.path.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def _views(name: str, s: dict[str, Any], batch: int, device: str, channels_last: bool) -> list[torch.Tensor]:
    from gpu_check_configs import MULTICROP

    g = torch.Generator(device=device).manual_seed(0)
    shapes = [s["size"]] * 2 + ([s["local"]] * s["num_local"] if name in MULTICROP else [])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(batch, 3, px, px, device=device, generator=g).contiguous(memory_format=fmt) for px in shapes]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _Step:
    """training_step + backward + (gradient sync) + LARS step + EMA update, as the Trainer does."""

    def __init__(self, name: str, s: dict[str, Any], device: str, batch: int, sync: str = "none") -> None:
        from timm.optim import Lars

        from gpu_check_configs import method_config, train_config
        from trainers import distributed
        from trainers.methods import build_method
        from trainers.trainer import apply_cuda_flags, cuda_flags

        self.device, self.sync = device, sync
        config = train_config(method_config(name, s, batch), s)  # the pydantic models, validators included
        self.method = build_method(config.method_config(), seed=0).to(device)
        self.channels_last = device == "cuda"
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if device == "cuda":  # TF32 and cuDNN autotuning as Trainer.__init__ sets them: timings are training's
            apply_cuda_flags(cuda_flags(config, self.method.backbone))
        groups = [g for g in self.method.parameter_groups(1e-6) if g["params"]]
        self.optimizer = Lars(groups, lr=0.1, momentum=0.9)
        # As the Trainer does: DDP looks for unused parameters only for methods that freeze some
        # (a host sync per step otherwise); this check runs steps < 313, SwAV's default freeze.
        find_unused = distributed.unused_parameter_steps(self.method) > 0
        self.module: Callable = (distributed.data_parallel(self.method, device, find_unused_parameters=find_unused)
                                 if sync == "ddp" else self.method.training_step)
        self.views = _views(name, s, batch, device, self.channels_last)
        self.step = 0
        self.amp = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else None

    def __call__(self) -> dict[str, Any]:
        from trainers import distributed

        self.method.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.amp is not None:
            with self.amp:
                loss, logs = self.module(self.views, self.step)
        else:
            loss, logs = self.module(self.views, self.step)
        loss.backward()
        if self.sync == "flat":
            distributed.average_gradients(self.method)
        self.optimizer.step()
        self.method.on_after_optimizer_step(self.step, 1000)
        self.step += 1
        return logs

    def time(self, warmup: int, steps: int) -> float:
        """Seconds per step after `warmup` steps (host and device synchronised around the timing)."""
        for _ in range(warmup):
            self()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        _sync(self.device)
        return (time.perf_counter() - t0) / steps


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_methods(s: dict[str, Any], device: str, methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in methods:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step = _Step(name, s, device, s["batch"])
        seconds = step.time(s["warmup"], s["steps"])
        out[f"{name}_samples_per_s"] = round(s["batch"] / seconds, 2)
        out[f"{name}_peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3) if device == "cuda" else None
        del step
    return out


def check_process_group(s: dict[str, Any], device: str, methods: list[str]) -> dict[str, Any]:
    """A 1-rank group with the backend Ray Train gets; collectives forced on; DDP vs flat."""
    import torch.distributed as dist

    from trainers import distributed

    backend = distributed.process_group_backend(use_gpu=device == "cuda")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    distributed.force_collectives(True)
    out: dict[str, Any] = {"process_group_backend": backend}
    try:
        for name in methods:  # every method's collectives (SyncBN, gathers, queues) through the group
            step = _Step(name, s, device, s["batch"], sync="ddp")
            logs = step()
            reduced = distributed.reduce_logs(logs)
            digests = distributed.gather_ints([12345], device)
            if not (torch.isfinite(torch.tensor(reduced["loss"])) and digests == [[12345]]):
                raise RuntimeError(f"{name}: loss {reduced['loss']} or digests {digests} wrong through the group")
            del step
        out["nccl_ok" if device == "cuda" else "collectives_ok"] = True
        ddp_s = _Step("simclr", {**s, "backbone": s["ddp_backbone"], "size": s["ddp_size"]}, device, s["batch"],
                      sync="ddp").time(s["warmup"], s["steps"])
        flat_s = _Step("simclr", {**s, "backbone": s["ddp_backbone"], "size": s["ddp_size"]}, device, s["batch"],
                       sync="flat").time(s["warmup"], s["steps"])
        out.update(ddp_step_s=round(ddp_s, 4), flat_step_s=round(flat_s, 4),
                   ddp_vs_flat_step_ratio=round(ddp_s / flat_s, 3))
    except Exception as err:  # report, don't hide: the JSON says what failed
        out["nccl_ok" if device == "cuda" else "collectives_ok"] = False
        out["process_group_error"] = f"{type(err).__name__}: {err}"[:300]
    finally:
        distributed.force_collectives(False)
        dist.destroy_process_group()
    return out


def check_dali(device: str, quick: bool) -> dict[str, Any]:
    """The DALI pipeline on `device` ("cuda": mixed decoding) vs the CPU pipeline, same batches."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return {"dali": "absent"}
    try:
        import numpy as np
        from PIL import Image

        from pipeline import ViewLoader, ViewSpec
        from sharding.run import shard_dataset
    except ImportError as err:
        return {"dali": f"present, but the pipeline cannot import: {err}"}
    n, px = (64, 32) if quick else (1024, 256)
    batch = 16 if quick else 128
    out: dict[str, Any] = {"dali": "present"}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos" / "c"
        photos.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8)).save(photos / f"{i:05d}.jpg", quality=90)
        shards = str(Path(tmp) / "shards")
        shard_dataset(str(Path(tmp) / "photos"), shards, label_from="parent", shard_samples=256, progress=False)
        worst = 0.0
        for recipe, spec in (("simclr", ViewSpec.from_recipe("simclr", size=px // 2 if quick else 224)),
                             ("multicrop", ViewSpec.from_recipe("multicrop", global_size=px // 2 if quick else 224,
                                                                local_size=px // 4 if quick else 96, num_local=2))):
            loaders = {d: ViewLoader(shards, spec, batch, device=d, num_threads=2, drop_last=True, seed=0)
                       for d in dict.fromkeys([device, "cpu"])}
            t0 = time.perf_counter()
            held = list(loaders[device].iter_epoch(0))  # earlier batches held while later ones are made
            _sync(device)
            out[f"dali_{recipe}_{'mixed' if device == 'cuda' else 'cpu'}_samples_per_s"] = round(
                sum(len(b) for b in held) / (time.perf_counter() - t0), 1)
            reference = list(loaders["cpu"].iter_epoch(0))
            for got, ref in zip(held, reference):
                for a, b in zip(got.views, ref.views):
                    worst = max(worst, float((a.float().cpu() - b).abs().max()))
        out["dali_gpu_vs_cpu_max_abs_diff" if device == "cuda" else "dali_cpu_vs_cpu_max_abs_diff"] = round(worst, 5)
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pydantic

    from gpu_check_configs import METHODS, sizes
    from gpu_check_ranks import check_two_ranks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CI run)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA GPU (use --device cpu --quick to test the script)",
              file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    started = time.perf_counter()
    s = sizes(args.quick)
    result: dict[str, Any] = {"device": args.device, "quick": args.quick, "pydantic": pydantic.VERSION,
                              "torch": torch.__version__,
                              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                              "batch": s["batch"], "image_size": s["size"]}
    result.update(check_methods(s, args.device, args.methods))
    result.update(check_process_group(s, args.device, args.methods))
    result.update(check_two_ranks(s["ranks"], args.device, args.methods))  # after the 1-rank group is gone
    result.update(check_dali(args.device, args.quick))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    ok = result.get("nccl_ok", result.get("collectives_ok")) and result["two_rank_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
