"""The loop every Ray Train worker runs: this rank's Trainer over its pipeline's batches.

Invariants: every rank runs the same steps and issues the same collectives (they all go through
:func:`step_and_log`); between log steps nothing is read back to the host; checkpoints are
written by rank 0 at checkpoint steps and the last step, so a restarted or resumed run continues
from the newest one with exactly the batches an uninterrupted run would see. The Trainer itself
is `trainers.trainer`. See ARCHITECTURE.md section 3.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np
import torch

from pipeline import ViewBatch
from trainers.checkpoint import find_latest_checkpoint
from trainers.config import TrainConfig
from trainers.distributed.collectives import gather_ints, reduce_logs
from trainers.methods import Method
from trainers.metrics import MetricsLogger
from trainers.trainer import Trainer


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


DIGEST_BITS = 56  # digests print as 14 hex digits and a sum of W of them fits an int64


def sample_set_digest(rows: np.ndarray) -> int:
    """This rank's part of its global batch's fingerprint: the sum, mod 2**56, of a 64-bit mix
    (splitmix64's finaliser) of each distinct item id in its batch.

    A sum of per-sample hashes does not depend on how the global batch is split, so the sum of
    the ranks' parts is the same on any number of workers (`pipeline.epochs` keeps each global
    batch's samples fixed). A hole's fill repeats a sample of the same rank batch, so distinct
    ids make the digest that of the global batch's readable samples, however it is split.
    """
    z = np.unique(np.asarray(rows, dtype=np.int64)).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return int(z.sum(dtype=np.uint64) % np.uint64(1 << DIGEST_BITS))


class EpochHook(Protocol):
    """Work done at the end of chosen epochs (e.g. the online kNN probe of `evaluation`).

    The hook is built on the driver, shipped to every worker (so it must pickle), and
    `setup` is called once per worker. It lets stages above trainers watch training without
    trainers importing them. The returned callable `(method, epoch, last)` runs on every rank at each epoch end and
    returns the metrics to log (rank 0's are logged) or None when it has nothing this epoch.
    """

    def setup(self, config: TrainConfig, rank: int, world_size: int, device: str
              ) -> Callable[[Method, int, bool], Optional[dict[str, float]]]: ...


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point (one call per worker)."""
    import ray.train

    config = TrainConfig.model_validate(payload["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    trainer = Trainer(config, rank, world_size, device, step_hooks=payload.get("step_hooks", ()))

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
                   **timer.summary(world_size, config.per_worker_batch(world_size)),
                   "total_steps": trainer.total_steps, "resumed_from_step": resumed_from, "final": final,
                   "world_size": world_size}
        trainer.checkpoint.gather()  # every rank: per-rank state (RNG) reaches rank 0's checkpoint
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
    trainer.loader.close()  # the read-ahead of an epoch this run does not reach
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
    the ranks' counters (batch digest part, steps this attempt, samples skipped and holes filled
    by the loader so far) and ONE all-reduce of the logs, both on the training device. Between
    log steps nothing is read back to the host. Returns the record to log, or None.
    """
    logs = trainer.train_step(batch)
    if timer is not None:
        timer.steps += 1
    step = trainer.step
    if not is_log_step(trainer.config, step, trainer.total_steps):
        return None
    stats = trainer.loader.stats if trainer.loader is not None else None
    counters = gather_ints([sample_set_digest(batch.rows.cpu().numpy()), step - trainer.resumed_from,
                            stats.skipped_samples if stats else 0, stats.filled if stats else 0], trainer.device)
    digest, rank_steps, skipped, filled = (list(c) for c in zip(*counters))
    logs = reduce_logs({**logs, "nonfinite_steps": trainer.nonfinite_steps})
    trainer.check_finite(logs)
    logs.pop("nonfinite_steps")
    # batch_digest: the global batch's sample set, the same on any number of workers;
    # rank_steps: each rank's steps in this attempt (equal: every rank runs every step)
    record = {"step": step, "epoch": batch.epoch, "batch": batch.batch, "lr": float(trainer.lr[step - 1]),
              "batch_digest": f"{sum(digest) % (1 << DIGEST_BITS):014x}", "world_size": trainer.world_size,
              "rank_steps": rank_steps, "skipped_samples": sum(skipped), "filled_samples": sum(filled), **logs}
    if timer is not None:
        record.update(timer.summary(trainer.world_size, trainer.config.per_worker_batch(trainer.world_size)))
    return record
