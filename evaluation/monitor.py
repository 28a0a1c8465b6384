"""Online kNN during training: how good are the features right now, on held-out labels?

It reaches the training loop as an epoch hook (`OnlineKnnHook`, see
`trainers.train_loop.EpochHook`), so trainers never import evaluation. Rank 0 embeds a
labelled train split (the memory bank) and a test split with the eval view recipe, on the
training device, and scores weighted kNN (cosine, temperature 0.07), as DINO and solo-learn do.

The other ranks wait meanwhile in their next collective, so the probe must not outlast the
process-group timeout (NCCL's watchdog would kill the job). Two guards: the probe keeps to
`monitor.budget_s` (it stops embedding when the budget is spent and logs `knn_truncated`),
and the driver sets the timeout to `scaling.collective_timeout_s + monitor.budget_s`
(`TrainConfig.collective_timeout_s`, passed to Ray Train's TorchConfig in trainers/runner.py).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
from torch import nn

from trainers.config import MonitorConfig, TrainConfig, dataset_arg
from evaluation.sources import eval_loader, labelled_features
from evaluation.knn import knn_evaluate
from groundfloor.errors import UsageError

if TYPE_CHECKING:
    from pipeline.loader import ViewLoader

log = logging.getLogger(__name__)
TRAIN_SHARE = 0.6  # of the budget for the memory bank; the test split gets the rest but 5 %


class _UntilDeadline:
    """A loader whose epoch iterator stops at a wall-clock deadline (the probe's budget)."""

    def __init__(self, loader: ViewLoader, deadline: float) -> None:
        self._loader, self.deadline, self.truncated = loader, deadline, False

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator:
        batches = self._loader.iter_epoch(epoch, start_batch)
        try:
            for batch in batches:
                yield batch
                if time.monotonic() >= self.deadline:
                    self.truncated = True
                    return
        finally:
            batches.close()


class OnlineKnn:
    """Callable: backbone -> kNN top-1 on the configured held-out split (within the budget)."""

    def __init__(self, config: MonitorConfig, device: str = "cpu", endpoint_url: Optional[str] = None) -> None:
        self.config = config
        self.device = device
        self.truncated = False
        make = lambda ds: eval_loader(dataset_arg(ds), config.image_size, config.batch_size,  # one root or a list
                                      crop_fraction=config.crop_fraction, num_threads=1,
                                      endpoint_url=endpoint_url, device=device)
        self.train_loader, self.test_loader = make(config.train_dataset), make(config.test_dataset)
        for name, loader in (("train_dataset", self.train_loader), ("test_dataset", self.test_loader)):
            if not loader.label_vocabulary:
                raise UsageError(f"monitor.{name}: the shards have no labels; kNN needs labelled shards")

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> float:
        start, budget = time.monotonic(), self.config.budget_s
        train_loader = _UntilDeadline(self.train_loader, start + TRAIN_SHARE * budget)
        test_loader = _UntilDeadline(self.test_loader, start + 0.95 * budget)
        train, vocabulary = labelled_features(backbone, train_loader, desc="kNN monitor: train",
                                              max_samples=self.config.max_train_samples)
        test, _ = labelled_features(backbone, test_loader, vocabulary, desc="kNN monitor: test",
                                    max_samples=self.config.max_test_samples)
        self.truncated = train_loader.truncated or test_loader.truncated
        if self.truncated:
            log.warning("kNN monitor: budget_s=%g spent; scored %d train / %d test samples", budget, len(train), len(test))
        result = knn_evaluate(train.features, train.labels, test.features, test.labels,
                              ks=(self.config.k,), temperature=self.config.temperature)
        return result[self.config.k].top1


class OnlineKnnHook:
    """The epoch hook that runs :class:`OnlineKnn` every `monitor.every_epochs` (and at the end)."""

    def setup(self, config: TrainConfig, rank: int, world_size: int, device: str
              ) -> Callable[..., Optional[dict[str, float]]]:
        monitor = config.monitor
        assert monitor is not None, "OnlineKnnHook needs a monitor section"
        probe = OnlineKnn(monitor, device=device, endpoint_url=config.data.endpoint_url) if rank == 0 else None

        def at_epoch_end(method, epoch: int, last: bool) -> Optional[dict[str, float]]:
            if epoch % monitor.every_epochs != 0 and not last:
                return None
            # The other ranks wait for rank 0 at their next collective: the budget and the
            # process-group timeout (module docstring) keep that wait bounded and survivable.
            if probe is None:
                return None
            top1 = probe(method.eval_backbone)
            return {"knn_top1": top1, "knn_truncated": float(probe.truncated)}

        return at_epoch_end


def monitor_hooks(config: TrainConfig) -> list[OnlineKnnHook]:
    """The epoch hooks a training config asks for (none without a `monitor` section)."""
    return [OnlineKnnHook()] if config.monitor is not None else []
