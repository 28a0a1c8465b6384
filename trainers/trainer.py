"""One worker's Trainer: the method, its optimizer and schedule, the step, the checkpoint parts.

Invariants: the Trainer composes and owns nothing else. The checkpoint is one dict of stateful
parts (`trainers.checkpoint.CheckpointManager`) whose data position makes a restarted or resumed
run continue with exactly the batches an uninterrupted run would see; work around the step
(the fault drills) is an injected :class:`StepHook`; capabilities come from the backbone's
declared fields (`family`), never from class names. The Ray Train loop around it is
`trainers.train_loop`. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch

from pipeline import DataPosition, ViewBatch, ViewLoader
from trainers.backbones.base import CONV_FAMILIES, Backbone, wants_channels_last
from trainers.checkpoint import CheckpointManager, GradScalerState, Progress, TorchRNG
from trainers.config import TrainConfig, dataset_arg
from trainers.distributed.data_parallel import data_parallel, unused_parameter_steps
from trainers.methods import Method, SampleIds, build_method, group_hashes
from trainers.optim import build_optimizer, optimizer_schedule
from groundfloor.errors import UsageError

log = logging.getLogger(__name__)


class StepHook(Protocol):
    """Work done on every rank before each optimizer step (e.g. `trainers.fault_drill`).

    Built on the driver and shipped to every worker (so it must pickle), then passed to the
    Trainer, which calls ``before_step(trainer)`` at the start of each `train_step`.
    """

    def before_step(self, trainer: "Trainer") -> None: ...


class NonFiniteLoss(RuntimeError):
    """A NaN/inf loss under ``nonfinite_loss: stop``: the run stops before checkpointing it."""


def cuda_flags(config: TrainConfig, backbone: Backbone) -> dict[str, object]:
    """The process-wide CUDA math settings a run asks for (applied only on CUDA)."""
    benchmark = config.cudnn_benchmark == "on" or (config.cudnn_benchmark == "auto" and backbone.family in CONV_FAMILIES)
    return {"matmul_precision": "high" if config.tf32 else "highest", "cudnn_allow_tf32": config.tf32,
            "cudnn_benchmark": benchmark}


def apply_cuda_flags(flags: dict[str, object]) -> None:
    """Set them: `torch.set_float32_matmul_precision` ("high": fp32 matmuls may use TF32,
    torch/__init__.py), `torch.backends.cudnn.allow_tf32` and `.benchmark` (CudnnModule in
    torch/backends/cudnn/__init__.py). Process-wide flags: one training per worker process."""
    torch.set_float32_matmul_precision(str(flags["matmul_precision"]))
    torch.backends.cudnn.allow_tf32 = bool(flags["cudnn_allow_tf32"])
    torch.backends.cudnn.benchmark = bool(flags["cudnn_benchmark"])


def compile_student(backbone: Backbone) -> None:
    """torch.compile every entry point the student's step calls, in place.

    `nn.Module.compile` wraps `__call__` only (torch/nn/modules/module.py: it sets
    `_compiled_call_impl`, used by `_call_impl`), so the token path of the ViT methods
    (`forward_tokens`: iBOT's masked student, SiT's corrupted student) is compiled separately, as
    an instance attribute that shadows the method. State-dict keys are unchanged (no
    "_orig_mod." prefix), so checkpoints and evaluation see the plain module. EMA teachers are
    copies made before this and stay eager (they run under no_grad, once per step).
    Graph breaks that remain: SyncBatchNorm's all-gather on 2+ ranks (a c10d collective inside
    the conv nets' forward; torch's own SyncBatchNorm breaks there too, pytorch/pytorch#161302),
    and the losses' cross-rank gathers, which run outside the compiled backbone.
    """
    backbone.compile()
    tokens = getattr(type(backbone), "forward_tokens", None)
    if tokens is not None:
        backbone.forward_tokens = torch.compile(backbone.forward_tokens)


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
                 steps_per_epoch: Optional[int] = None, step_hooks: Sequence[StepHook] = ()) -> None:
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.step_hooks = list(step_hooks)
        self.method: Method = build_method(config.method_config(), seed=config.seed).to(device)
        self.channels_last = config.channels_last == "on" or (
            config.channels_last == "auto" and wants_channels_last(self.method.backbone))
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if device == "cuda":
            apply_cuda_flags(cuda_flags(config, self.method.backbone))
        if config.compile:
            compile_student(self.method.backbone)
        self.loader: Optional[ViewLoader] = None
        if steps_per_epoch is None:
            self.loader = ViewLoader(
                dataset_arg(config.data.dataset), config.view_spec(), config.per_worker_batch(world_size), rank=rank,
                world_size=world_size, seed=config.seed, device=device,
                num_threads=config.data.num_threads, prefetch=config.data.prefetch, drop_last=True,
                endpoint_url=config.data.endpoint_url, epoch_size=config.data.epoch_size,
                streams=config.data.streams, verify=config.data.verify,
                natural_views=config.data.natural_views, read_ahead=True,
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
        # Everything a resumed run needs, one entry of state.pt each (keys are the on-disk format).
        # The LR/WD schedule is a function of the step, so it has no state of its own.
        self.amp_dtype = resolve_precision(config.precision, device)
        self.scaler = torch.amp.GradScaler(device, enabled=self.amp_dtype == torch.float16)
        self.checkpoint = CheckpointManager(states={
            "method": self.method,  # weights, EMA teachers, queues, centres
            "optimizer": self.optimizer,  # moments and each group's lr_scale
            "grad_scaler": GradScalerState(self.scaler),  # fp16's loss scale ({} otherwise)
            "torch_rng": TorchRNG(rank),  # every rank's CPU and CUDA generators
            "progress": _TrainerProgress(self),  # step, data position, worker count
        }, optional=frozenset({"grad_scaler"}))
        # DDP over the method's step: bucketed all-reduces overlap backward (trainers.distributed)
        self.unused_parameters_until = unused_parameter_steps(self.method)
        self._find_unused = self.step < self.unused_parameters_until
        self.step_module = data_parallel(self.method, device, find_unused_parameters=self._find_unused)
        # Non-finite bookkeeping on the device: read only at log/checkpoint steps (no host sync).
        self.nonfinite_steps = torch.zeros((), dtype=torch.float32, device=device)
        self.skipped_steps = 0

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.amp_dtype)

    # ---- state ---------------------------------------------------------------------------
    def restore(self, checkpoint_dir: str) -> None:
        """Load every stateful part from a checkpoint."""
        self.checkpoint.restore(checkpoint_dir)

    def save(self, directory: str, metrics_file: Path | None = None) -> None:
        """Write a checkpoint; the metrics so far ride along, so they reach the run's storage."""
        if metrics_file is not None and metrics_file.is_file():
            shutil.copyfile(metrics_file, Path(directory) / metrics_file.name)
        self.checkpoint.save(directory, config=self.config.model_dump(mode="json"))

    # ---- one step ------------------------------------------------------------------------
    def _prepare(self, view: torch.Tensor) -> torch.Tensor:
        view = view.to(self.device, non_blocking=True)
        return view.contiguous(memory_format=torch.channels_last) if self.channels_last else view

    def _sample_ids(self, batch: ViewBatch, k: int) -> list[SampleIds]:
        """Per micro-batch, the samples it holds and their groups, for methods that draw per
        sample (iBOT's masks) or contrast same-group samples (`multi_positive`)."""
        if not self.method.needs_sample_ids:
            return []
        rows = batch.rows.cpu().numpy()  # ViewBatch.rows is a host tensor: no device sync
        groups = group_hashes(batch.group_ids)

        def split(values):
            return [values] if k <= 1 else [c.numpy() for c in torch.from_numpy(values).chunk(k)]

        return [SampleIds(self.config.seed, batch.epoch, r, g) for r, g in zip(split(rows), split(groups))]

    def train_step(self, batch: ViewBatch) -> dict[str, Any]:
        """One optimizer step on this rank's batch; returns logs as 0-d device tensors/floats.

        No host sync unless ``nonfinite_loss: skip`` or fp16 (the GradScaler's inf check):
        losses stay tensors until `reduce_logs` at a log step. With
        ``gradient_accumulation_steps = k`` the batch is split into k micro-batches whose
        losses are weighted by their share of the batch; DDP syncs only on the last one
        (``no_sync``), so one all-reduce of the accumulated gradient per step.
        """
        for hook in self.step_hooks:
            hook.before_step(self)
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


class _TrainerProgress:
    """The Trainer's step and data position as a stateful part (state.pt's ``progress``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, int]:
        t = self.trainer
        return Progress(t.step, t.position.epoch, t.position.batch, t.world_size).as_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Global batches make (step, epoch, batch) mean the same on any number of workers, so
        a checkpoint written by another count resumes exactly (pipeline.epochs)."""
        t = self.trainer
        t.step, t.position = int(state["step"]), DataPosition(int(state["epoch"]), int(state["batch"]))
        t.resumed_from = t.step
        written_by = state.get("world_size")
        if written_by is not None and int(written_by) != t.world_size and t.rank == 0:
            log.warning("resuming step %d (epoch %d, global batch %d) written by %d workers on %d workers",
                        t.step, t.position.epoch, t.position.batch, int(written_by), t.world_size)
