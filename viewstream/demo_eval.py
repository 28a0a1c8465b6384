"""The demo's evaluation: trained vs random-init encoder vs raw pixels, and its pictures.

All three are scored the same way: weighted kNN (k=20, cosine, T=0.07) of the test split
against the train split as memory bank, on the eval view (resize only, no augmentation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import ViewLoader, ViewSpec
from trainers.checkpoint import load_backbone
from trainers.config import TrainConfig
from evaluation.features import extract_features
from evaluation.sources import eval_loader, labelled_features
from evaluation.knn import knn_evaluate
from trainers.methods import build_method

K = 20


class _RawPixels(torch.nn.Module):
    """The 'encoder' that returns the image itself (de-normalised grey levels in [0, 1])."""

    def __init__(self, spec: ViewSpec) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # lets feature extraction find a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images * self.std + self.mean).mean(dim=1).flatten(1)


def demo_loader(dataset: str, config: TrainConfig, batch_size: int = 512) -> ViewLoader:
    """The shared eval loader at the monitor's image size, whole image (no centre crop)."""
    size = config.monitor.image_size if config.monitor else 28
    return eval_loader(dataset, size, batch_size, crop_fraction=1.0, endpoint_url=config.data.endpoint_url)


def _knn_top1(encoder: torch.nn.Module, train: ViewLoader, test: ViewLoader, name: str) -> float:
    bank, vocabulary = labelled_features(encoder, train, desc=f"{name}: train features")
    queries, _ = labelled_features(encoder, test, vocabulary, desc=f"{name}: test features")
    result = knn_evaluate(bank.features, bank.labels, queries.features, queries.labels, ks=(K,))
    return float(result[K].top1)


def evaluate_encoders(config: TrainConfig, checkpoint: str, shards: dict[str, str]) -> dict[str, float]:
    """kNN top-1 of the trained encoder, the same encoder at random init, and raw pixels."""
    train, test = demo_loader(shards["train"], config), demo_loader(shards["test"], config)
    trained, _ = load_backbone(checkpoint)
    random_init = build_method(config.method_config(), seed=config.seed).eval_backbone
    return {
        "trained": _knn_top1(trained, train, test, "trained"),
        "random_init": _knn_top1(random_init, train, test, "random init"),
        "raw_pixels": _knn_top1(_RawPixels(train.spec), train, test, "raw pixels"),
    }


def write_demo_plots(config: TrainConfig, result: Any, shards: dict[str, str], out: Path) -> list[Path]:
    """Loss/LR curves, kNN over training, a grid of real augmented views, a retrieval grid."""
    from evaluation.plots import (denormalize, load_metrics, plot_knn_over_training, plot_retrieval_grid,
                                     plot_training_curves, plot_view_grid)
    from evaluation.search import SearchIndex

    plots_dir = out / "plots"
    metrics = result.out_dir / "metrics.jsonl"
    paths = [plot_training_curves(metrics, plots_dir / "loss_lr.png", title=config.method["name"])]
    if any("knn_top1" in r for r in load_metrics(metrics)):
        paths.append(plot_knn_over_training(metrics, plots_dir / "knn_over_training.png"))
    views = ViewLoader(config.data.dataset, config.view_spec(), 8, seed=config.seed, num_threads=1)
    paths.append(plot_view_grid(next(iter(views.iter_epoch(0))), plots_dir / "augmented_views.png"))

    test = demo_loader(shards["test"], config, batch_size=256)
    trained, _ = load_backbone(result.checkpoint)
    batch = next(iter(test.iter_epoch(0)))
    feats = extract_features(trained, [batch]).features.numpy()
    index = SearchIndex.build(feats, keys=batch.keys)
    found = index.search(feats[:6], k=6)
    images = denormalize(batch.views[0])
    labels = batch.labels.numpy()
    rows = []
    for q in range(6):
        neighbours = [(int(i), float(s)) for i, s in zip(found.indices[q], found.scores[q]) if int(i) != q][:5]
        rows.append([(images[i], s, bool(labels[i] == labels[q])) for i, s in neighbours])
    vocab = batch.label_vocabulary
    paths.append(plot_retrieval_grid([images[q] for q in range(6)], rows, plots_dir / "retrieval.png",
                                     query_labels=[vocab[labels[q]] for q in range(6)]))
    return paths

