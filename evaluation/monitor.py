"""Online kNN during training: how good are the features right now, on held-out labels?

It reaches the training loop as an epoch hook (`OnlineKnnHook`, see
`trainers.train_loop.EpochHook`), so trainers never import evaluation. Rank 0 embeds a labelled train split (the memory bank) and a test split with the eval view
recipe and scores weighted kNN (cosine, temperature 0.07), as DINO and solo-learn do.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from trainers.config import MonitorConfig, TrainConfig, dataset_arg
from evaluation.sources import eval_loader, labelled_features
from evaluation.knn import knn_evaluate
from viewstream.errors import UsageError


class OnlineKnn:
    """Callable: backbone -> kNN top-1 on the configured held-out split."""

    def __init__(self, config: MonitorConfig, device: str = "cpu", endpoint_url: Optional[str] = None) -> None:
        self.config = config
        make = lambda ds: eval_loader(dataset_arg(ds), config.image_size, config.batch_size,  # one root or a list
                                      crop_fraction=config.crop_fraction, num_threads=1,
                                      endpoint_url=endpoint_url, device=device)
        self.train_loader, self.test_loader = make(config.train_dataset), make(config.test_dataset)
        for name, loader in (("train_dataset", self.train_loader), ("test_dataset", self.test_loader)):
            if not loader.label_vocabulary:
                raise UsageError(f"monitor.{name}: the shards have no labels; kNN needs labelled shards")

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> float:
        train, vocabulary = labelled_features(backbone, self.train_loader, desc="kNN monitor: train",
                                              max_samples=self.config.max_train_samples)
        test, _ = labelled_features(backbone, self.test_loader, vocabulary, desc="kNN monitor: test",
                                    max_samples=self.config.max_test_samples)
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
            # The other ranks wait for rank 0 at their next collective.
            return {"knn_top1": probe(method.eval_backbone)} if probe is not None else None

        return at_epoch_end


def monitor_hooks(config: TrainConfig) -> list[OnlineKnnHook]:
    """The epoch hooks a training config asks for (none without a `monitor` section)."""
    return [OnlineKnnHook()] if config.monitor is not None else []
