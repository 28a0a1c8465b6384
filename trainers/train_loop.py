"""The loop every Ray Train worker runs: this rank's pipeline, the method, the optimizer.

It composes the pieces and owns nothing else: views come from `pipeline.ViewLoader`, the
method from the registry, gradients are averaged by `trainers.distributed`, LR comes from a
precomputed schedule, checkpoints carry the data position so a restarted or resumed run
continues with exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import hashlib
import logging
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
from trainers.config import FaultDrill, TrainConfig, dataset_arg
from trainers.distributed.collectives import gather_digests, reduce_logs
from trainers.distributed.data_parallel import data_parallel, unused_parameter_steps
from trainers.methods import Method, SampleIds, build_method
from trainers.metrics import MetricsLogger
from trainers.optim import build_optimizer, optimizer_schedule
from groundfloor.errors import UsageError

log = logging.getLogger(__name__)


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


class NonFiniteLoss(RuntimeError):
    """A NaN/inf loss under ``nonfinite_loss: stop``: the run stops before checkpointing it."""


def _conv_backbone(method: Method) -> bool:
    """channels_last helps convolutions (cuDNN NHWC kernels); ViTs gain nothing."""
    return any(isinstance(m, torch.nn.Conv2d) for m in method.backbone.modules()) and not any(
        "vit" in type(m).__name__.lower() or "VisionTransformer" in type(m).__name__ for m in method.backbone.modules())


def resolve_precision(precision: str, device: str) -> Optional[torch.dtype]:
    """The autocast dtype (None: fp32) for `precision` on `device`; UsageError where unusable."""
    if precision == "auto":
        if device != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("precision=bf16: this GPU has no bfloat16 (V100/T4); use precision=fp16 or auto")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def _full_precision(value: torch.Tensor) -> torch.Tensor:
    """A detached log value, in at least float32 (autocast may hand back bf16/fp16 losses)."""
    value = value.detach()
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


class Trainer:
    """One worker's training state and its step, checkpoint and logging logic.

    `steps_per_epoch` given: no loader is built (tests, benchmarks and checks feed batches).
    """

    def __init__(self, config: TrainConfig, rank: int, world_size: int, device: str,
                 steps_per_epoch: Optional[int] = None) -> None:
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.method: Method = build_method(config.method_config(), seed=config.seed).to(device)
        self.channels_last = config.channels_last == "on" or (
            config.channels_last == "auto" and device == "cuda" and _conv_backbone(self.method))
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if config.compile:
            # nn.Module.compile compiles in place: state_dict keys stay those of the module (no
            # "_orig_mod." prefix), so checkpoints and evaluation are unchanged.
            self.method.backbone.compile()
        self.loader: Optional[ViewLoader] = None
        if steps_per_epoch is None:
            self.loader = ViewLoader(
                dataset_arg(config.data.dataset), config.view_spec(), config.per_worker_batch(), rank=rank,
                world_size=world_size, seed=config.seed, device=device,
                num_threads=config.data.num_threads, prefetch=config.data.prefetch, drop_last=True,
                endpoint_url=config.data.endpoint_url, epoch_size=config.data.epoch_size,
                streams=config.data.streams, verify=config.data.verify,
                natural_views=config.data.natural_views,
            )
            steps_per_epoch = self.loader.batches_per_epoch
            if steps_per_epoch == 0:
                raise UsageError(
                    f"data.dataset has {self.loader.num_samples} samples, fewer than one global batch "
                    f"(batch_size={config.batch_size}); lower batch_size"
                )
        self.steps_per_epoch = steps_per_epoch
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.optimizer = build_optimizer(
            config.optimizer, self.method.parameter_groups(config.optimizer.weight_decay), config.batch_size
        )
        self.lr = optimizer_schedule(config.optimizer, config.batch_size, self.total_steps)  # per group: LR, WD
        self.step = 0
        self.resumed_from = 0  # the step this attempt restored (the fault drills' markers say it)
        self.position = DataPosition(0, 0)
        # DDP over the method's step: bucketed all-reduces overlap backward (trainers.distributed)
        self.unused_parameters_until = unused_parameter_steps(self.method)
        self._find_unused = self.step < self.unused_parameters_until
        self.step_module = data_parallel(self.method, device, find_unused_parameters=self._find_unused)
        self.amp_dtype = resolve_precision(config.precision, device)
        self.scaler = torch.amp.GradScaler(device, enabled=self.amp_dtype == torch.float16)
        # Non-finite bookkeeping on the device: read only at log/checkpoint steps (no host sync).
        self.nonfinite_steps = torch.zeros((), dtype=torch.float32, device=device)
        self.skipped_steps = 0

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.amp_dtype)

    # ---- state ---------------------------------------------------------------------------
    def restore(self, checkpoint_dir: str) -> None:
        state = load_state(checkpoint_dir)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        progress = progress_of(state)
        self.step, self.position = progress.step, DataPosition(progress.epoch, progress.batch)
        self.resumed_from = progress.step

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
    def _prepare(self, view: torch.Tensor) -> torch.Tensor:
        view = view.to(self.device, non_blocking=True)
        return view.contiguous(memory_format=torch.channels_last) if self.channels_last else view

    def _sample_ids(self, batch: ViewBatch, k: int) -> list[SampleIds]:
        """Per micro-batch, the samples it holds, for methods that draw per sample (iBOT's masks)."""
        if not self.method.needs_sample_ids:
            return []
        rows = batch.rows.cpu().numpy()  # ViewBatch.rows is a host tensor: no device sync
        parts = [rows] if k <= 1 else [c.numpy() for c in torch.from_numpy(rows).chunk(k)]
        return [SampleIds(self.config.seed, batch.epoch, part) for part in parts]

    def train_step(self, batch: ViewBatch) -> dict[str, Any]:
        """One optimizer step on this rank's batch; returns logs as 0-d device tensors/floats.

        No host sync unless ``nonfinite_loss: skip`` or fp16 (the GradScaler's inf check):
        losses stay tensors until `reduce_logs` at a log step. With
        ``gradient_accumulation_steps = k`` the batch is split into k micro-batches whose
        losses are weighted by their share of the batch; DDP syncs only on the last one
        (``no_sync``), so one all-reduce of the accumulated gradient per step.
        """
        self.lr.apply(self.optimizer, self.step)  # per group: LR and weight decay (numpy values: no device sync)
        if self._find_unused and self.step >= self.unused_parameters_until:
            # Every parameter gets a gradient from now on: drop DDP's unused-parameter search
            # (a host sync per step on CUDA). Same step on every rank; the new DDP broadcasts
            # rank 0's (identical) weights once.
            self._find_unused = False
            self.step_module = data_parallel(self.method, self.device, find_unused_parameters=False)
        self.method.train()
        views = [self._prepare(v) for v in batch.views]
        k = self.config.gradient_accumulation_steps
        chunks = list(zip(*(v.chunk(k) for v in views))) if k > 1 else [tuple(views)]
        samples = self._sample_ids(batch, k)
        total = views[0].shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum: Any = 0.0
        logs_sum: dict[str, Any] = {}
        for i, micro in enumerate(chunks):
            weight = micro[0].shape[0] / total
            last = i == len(chunks) - 1
            sync = nullcontext() if last or not hasattr(self.step_module, "no_sync") else self.step_module.no_sync()
            with sync:
                with self.autocast():
                    extra = {"samples": samples[i]} if samples else {}
                    loss, logs = self.step_module(list(micro), self.step, **extra)
                self.scaler.scale(loss * weight if k > 1 else loss).backward()
            loss_sum = loss_sum + _full_precision(loss) * weight
            for key, value in logs.items():
                value = _full_precision(value) if isinstance(value, torch.Tensor) else float(value)
                logs_sum[key] = logs_sum.get(key, 0.0) + value * weight
        self.nonfinite_steps += (~torch.isfinite(loss_sum)).to(self.nonfinite_steps.dtype)
        self.scaler.unscale_(self.optimizer)  # no-op without fp16; clipping sees true gradients
        norm = None
        if self.config.grad_clip:
            self.method.clip_gradients(self.config.grad_clip)  # global norm; DINO: per parameter
        skip = False
        if self.config.nonfinite_loss == "skip":
            # After DDP's all-reduce every rank has the same gradients, so this decision (one
            # host sync) is the same on every rank; a NaN loss on any rank makes them NaN.
            if norm is None:
                grads = [p.grad for p in self.method.parameters() if p.grad is not None]
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else loss_sum
            skip = not bool(torch.isfinite(norm) & torch.isfinite(loss_sum))
        if skip:
            self.skipped_steps += 1
            log.warning("step %d: non-finite loss or gradient on some rank; update skipped "
                        "(nonfinite_loss=skip)", self.step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.on_after_optimizer_step(self.step, self.total_steps)
        self.step += 1
        self.position = batch.position
        out = {"loss": loss_sum, **{k: v for k, v in logs_sum.items() if k != "loss"}}
        if self.config.nonfinite_loss == "skip":
            out["skipped_steps"] = float(self.skipped_steps)
        return out

    def check_finite(self, reduced_logs: dict[str, float]) -> None:
        """At a log/checkpoint step: stop (all ranks alike: the count is all-reduced) after a
        non-finite loss, before a checkpoint of non-finite weights is written."""
        if self.config.nonfinite_loss == "stop" and reduced_logs.get("nonfinite_steps", 0.0) > 0:
            raise NonFiniteLoss(
                f"non-finite loss (NaN/inf) on some rank at or before step {self.step} (after the last log "
                f"step); stopping without writing a checkpoint: resume from the last one with a lower "
                f"learning rate, grad_clip, or nonfinite_loss=skip")

    def maybe_fail(self) -> None:
        """The configured recovery drills: each fails once, at its step, on its rank."""
        for fault in self.config.run.fault_drills():
            if fault.step == self.step and fault.rank == self.rank and not Path(fault.marker).exists():
                self._fire(fault)

    def _fire(self, fault: FaultDrill) -> None:
        marker = Path(fault.marker)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"fault drill fired at step {self.step} on rank {self.rank} "
                          f"in an attempt resumed from step {self.resumed_from}\n")
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
        assert trainer.loader is not None
        batches = timer.timed_batches(trainer.loader.iter_epoch(epoch, trainer.position.batch))
        for batch in batches:
            trainer.maybe_fail()
            record = step_and_log(trainer, batch, timer)
            step = trainer.step
            if record is not None:
                last = {"loss": record["loss"]}
                logger.log(record)
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


def is_log_step(config: TrainConfig, step: int, total_steps: int) -> bool:
    """Steps whose logs are read on the host: log steps, checkpoint steps (so no checkpoint of
    non-finite weights is written) and the last step. Every rank agrees (a function of step)."""
    return (step % config.run.log_every_steps == 0 or step % config.run.checkpoint_every_steps == 0
            or step == total_steps)


def step_and_log(trainer: Trainer, batch: ViewBatch, timer: Optional[StepTimer] = None
                 ) -> Optional[dict[str, Any]]:
    """One training step plus, at log steps only, the step's collectives for logging.

    This is the loop's per-step code (every collective it issues goes through here): the step
    (DDP buckets, SyncBN, gathers: on the training device), then at a log step ONE gather of
    the batch fingerprints and ONE all-reduce of the logs, both on the training device. Between
    log steps nothing is read back to the host. Returns the record to log, or None.
    """
    logs = trainer.train_step(batch)
    if timer is not None:
        timer.steps += 1
    step = trainer.step
    if not is_log_step(trainer.config, step, trainer.total_steps):
        return None
    digests = gather_digests(batch_digest(batch), trainer.device)
    logs = reduce_logs({**logs, "nonfinite_steps": trainer.nonfinite_steps})
    trainer.check_finite(logs)
    logs.pop("nonfinite_steps")
    record = {"step": step, "epoch": batch.epoch, "batch": batch.batch, "lr": float(trainer.lr[step - 1]),
              "batch_digest": "-".join(f"{d:014x}" for d in digests), **logs}
    if timer is not None:
        record.update(timer.summary(trainer.world_size, trainer.config.per_worker_batch()))
    return record
