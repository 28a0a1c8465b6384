"""The loop every Ray Train worker runs: this rank's pipeline, the method, the optimizer.

It composes the pieces and owns nothing else: views come from `pipeline.ViewLoader`, the
method from the registry, gradients are averaged by `trainers.distributed`, LR comes from a
precomputed schedule, checkpoints carry the data position so a restarted or resumed run
continues with exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np
import torch

from pipeline import DataPosition, ViewBatch, ViewLoader
from trainers.checkpoint import Progress, find_latest_checkpoint, load_state, progress_of, save_checkpoint
from trainers.config import TrainConfig, dataset_arg
from trainers.distributed import average_gradients, is_distributed, reduce_logs
from trainers.methods import Method, build_method
from trainers.metrics import MetricsLogger
from trainers.optim import build_optimizer, optimizer_schedule
from viewstream.errors import UsageError


@dataclass
class StepTimer:
    """Wall time split into waiting for data and everything else (compute, communication)."""

    started: float = field(default_factory=time.perf_counter)
    data_wait_s: float = 0.0
    steps: int = 0
    samples: int = 0

    def timed_batches(self, batches: Iterator[ViewBatch]) -> Iterator[ViewBatch]:
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.data_wait_s += time.perf_counter() - t0
            yield batch

    def summary(self, world_size: int, batch_per_rank: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {
            "elapsed_s": elapsed,
            "step_s": elapsed / max(self.steps, 1),
            "samples_per_s": self.steps * batch_per_rank * world_size / elapsed,
            "data_wait_fraction": self.data_wait_s / elapsed,
        }


def batch_digest(batch: ViewBatch) -> int:
    """A short, order-sensitive fingerprint of the samples in a batch (for audit logs)."""
    h = hashlib.blake2b("\n".join(batch.keys).encode(), digest_size=7)
    return int.from_bytes(h.digest(), "little")


class EpochHook(Protocol):
    """Work done at the end of chosen epochs (e.g. the online kNN probe of `evaluation`).

    The hook is built on the driver, shipped to every worker (so it must pickle), and
    `setup` is called once per worker. It lets stages above trainers watch training without
    trainers importing them. The returned callable `(method, epoch, last)` runs on every rank at each epoch end and
    returns the metrics to log (rank 0's are logged) or None when it has nothing this epoch.
    """

    def setup(self, config: TrainConfig, rank: int, world_size: int, device: str
              ) -> Callable[[Method, int, bool], Optional[dict[str, float]]]: ...


class Trainer:
    """One worker's training state and its step, checkpoint and logging logic."""

    def __init__(self, config: TrainConfig, rank: int, world_size: int, device: str) -> None:
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.method: Method = build_method(config.method_config(), seed=config.seed).to(device)
        self.loader = ViewLoader(
            dataset_arg(config.data.dataset), config.view_spec(), config.per_worker_batch(), rank=rank,
            world_size=world_size, seed=config.seed, device=device,
            num_threads=config.data.num_threads, prefetch=config.data.prefetch, drop_last=True,
            endpoint_url=config.data.endpoint_url, epoch_size=config.data.epoch_size,
            streams=config.data.streams, verify=config.data.verify,
        )
        self.steps_per_epoch = self.loader.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise UsageError(
                f"data.dataset has {self.loader.num_samples} samples, fewer than one global batch "
                f"(batch_size={config.batch_size}); lower batch_size"
            )
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.optimizer = build_optimizer(
            config.optimizer, self.method.parameter_groups(config.optimizer.weight_decay), config.batch_size
        )
        self.lr = optimizer_schedule(config.optimizer, config.batch_size, self.total_steps)  # per group: LR, WD
        self.step = 0
        self.position = DataPosition(0, 0)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
        )

    # ---- state ---------------------------------------------------------------------------
    def restore(self, checkpoint_dir: str) -> None:
        state = load_state(checkpoint_dir)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        progress = progress_of(state)
        self.step, self.position = progress.step, DataPosition(progress.epoch, progress.batch)

    def save(self, directory: str, metrics_file: Path | None = None) -> None:
        """Write a checkpoint; the metrics so far ride along, so they reach the run's storage."""
        if metrics_file is not None and metrics_file.is_file():
            shutil.copyfile(metrics_file, Path(directory) / metrics_file.name)
        save_checkpoint(
            directory,
            method_state=self.method.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            progress=Progress(self.step, self.position.epoch, self.position.batch),
            config=self.config.model_dump(mode="json"),
        )

    # ---- one step ------------------------------------------------------------------------
    def train_step(self, batch: ViewBatch) -> dict[str, float]:
        self.lr.apply(self.optimizer, self.step)
        self.method.train()
        with self.autocast:
            loss, logs = self.method.training_step(batch.views, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.method)
        if self.config.grad_clip:
            self.method.clip_gradients(self.config.grad_clip)  # global norm; DINO: per parameter
        self.optimizer.step()
        self.method.on_after_optimizer_step(self.step, self.total_steps)
        self.step += 1
        self.position = batch.position
        return {"loss": float(loss.detach()), **logs}

    def maybe_fail(self) -> None:
        """The configured recovery drill: fail once, at the configured step, on one rank."""
        fault = self.config.run.fault
        if not fault or fault.step != self.step or fault.rank != self.rank:
            return
        marker = Path(fault.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"fault drill fired at step {self.step} on rank {self.rank}\n")
        if fault.kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"fault drill: rank {self.rank} fails at step {self.step}")


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point (one call per worker)."""
    import ray.train

    config = TrainConfig.model_validate(payload["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    trainer = Trainer(config, rank, world_size, device)

    latest = find_latest_checkpoint(config.run.storage, config.run.name, config.data.endpoint_url)
    if latest is not None:
        trainer.restore(str(latest))
    elif (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(directory)
    out_dir = config.run.output_dir()
    logger = MetricsLogger(out_dir, resume_step=trainer.step, enabled=rank == 0,
                           progress_board=payload.get("progress_board"), total_steps=trainer.total_steps)
    timer = StepTimer()
    resumed_from = trainer.step
    last: dict[str, float] = {}

    def report(final: bool = False) -> None:
        metrics = {"step": trainer.step, "epoch": trainer.position.epoch, **last,
                   **timer.summary(world_size, config.per_worker_batch()),
                   "total_steps": trainer.total_steps, "resumed_from_step": resumed_from, "final": final}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                trainer.save(tmp, logger.path)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_{trainer.step:09d}")
        else:
            ray.train.report(metrics, checkpoint=None)

    hooks = [hook.setup(config, rank, world_size, device) for hook in payload.get("epoch_hooks", ())]
    while trainer.step < trainer.total_steps:
        epoch = trainer.position.epoch
        batches = timer.timed_batches(trainer.loader.iter_epoch(epoch, trainer.position.batch))
        for batch in batches:
            trainer.maybe_fail()
            logs = trainer.train_step(batch)
            timer.steps += 1
            digest = _gather_digests(batch_digest(batch), world_size)
            step = trainer.step
            if step % config.run.log_every_steps == 0 or step == trainer.total_steps:
                logs = reduce_logs(logs)
                last = {"loss": logs["loss"]}
                logger.log({"step": step, "epoch": batch.epoch, "batch": batch.batch,
                            "lr": float(trainer.lr[step - 1]), "batch_digest": digest, **logs,
                            **timer.summary(world_size, config.per_worker_batch())})
            if step % config.run.checkpoint_every_steps == 0 or step == trainer.total_steps:
                report(final=step == trainer.total_steps)
            if step >= trainer.total_steps:
                break
        if trainer.position.batch == 0 and trainer.position.epoch > epoch:
            for hook in hooks:
                logged = hook(trainer.method, trainer.position.epoch, trainer.step >= trainer.total_steps)
                if logged and rank == 0:
                    logger.log({"step": trainer.step, "epoch": trainer.position.epoch, **logged})
    logger.close()


def _gather_digests(digest: int, world_size: int) -> str:
    """Every rank's batch fingerprint, in rank order (all ranks call this every step)."""
    if not is_distributed():
        return f"{digest:014x}"
    import torch.distributed as dist

    mine = torch.tensor([digest], dtype=torch.int64)
    everyone = [torch.zeros_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine)
    return "-".join(f"{int(t.item()):014x}" for t in everyone)
