"""The demo's evaluation: trained encoders against random init and raw pixels, and its pictures.

Fashion-MNIST (part 1): weighted kNN (k=20, cosine, T=0.07) of the test split against the train
split as memory bank, and a linear probe (`evaluation.linear`: L-BFGS logistic regression on
standardised frozen features), both on the eval view (resize only, no augmentation), for the
trained encoder, the same architecture at random init, and the raw pixels.

Natural views (part 2): group retrieval recall@k (`evaluation.retrieval`) over two photos of
every held-out object, for natural-view training, augmentation-only training, random init and
raw RGB pixels; the encoders embed with their projection head (`RETRIEVAL_EMBEDDING`), and the
natural-view encoder's backbone features are scored beside it. The retrieval grid is drawn from
the same rows: green is another photo of the query's object, not "same label".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline import ViewLoader, ViewSpec
from trainers.checkpoint import evaluation_model, load_backbone, load_method
from trainers.config import TrainConfig
from evaluation.features import iter_features
from evaluation.linear import LinearProbeConfig, linear_probe_evaluate
from evaluation.sources import eval_loader, labelled_features, retrieval_rows
from evaluation.knn import knn_evaluate
from evaluation.retrieval import group_recall_at_k
from trainers.methods import build_method

K = 20
RECALL_KS = (1, 5, 10)
GRID_QUERIES, GRID_K = 6, 5
# The probe: standardised features, C = 0.1 fixed (the best of 0.1 / 1 / 10 for both the trained
# encoder and raw pixels on the quick demo, so no C search: one fit per encoder) and L-BFGS
# capped at 100 iterations: on raw pixels (many near-constant border pixels: badly conditioned)
# 1000 iterations took 140 s on 1,536 images for the same top-1 (0.836) as 200 in 0.6 s.
PROBE = LinearProbeConfig(c=0.1, max_iter=100)
# Natural-view retrieval embeds with the backbone then the projection head: the space the
# contrastive loss compared photos of one object in, where background and lighting were made to
# not matter (full demo, seed 0: recall@1 22.1% against 9.7% from the backbone features alone;
# benchmarks/demo_experiments.md). kNN and the probe keep the backbone (transfer to labels).
RETRIEVAL_EMBEDDING = "projection"


class _RawPixels(torch.nn.Module):
    """The 'encoder' that returns the image itself (de-normalised levels in [0, 1]); grey
    averages the channels (Fashion-MNIST is grey in three identical channels)."""

    def __init__(self, spec: ViewSpec, grey: bool = True) -> None:
        super().__init__()
        self.grey = grey
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # lets feature extraction find a device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * self.std + self.mean
        return (pixels.mean(dim=1) if self.grey else pixels).flatten(1)


def demo_loader(dataset: str, config: TrainConfig, batch_size: int = 512) -> ViewLoader:
    """The shared eval loader at the monitor's image size, whole image (no centre crop)."""
    size = config.monitor.image_size if config.monitor else 28
    return eval_loader(dataset, size, batch_size, crop_fraction=1.0, endpoint_url=config.data.endpoint_url)


def _scores(encoder: torch.nn.Module, train: ViewLoader, test: ViewLoader, name: str) -> tuple[float, float]:
    """(kNN top-1, linear-probe top-1) of one encoder, from one pass of feature extraction."""
    bank, vocabulary = labelled_features(encoder, train, desc=f"{name}: train features")
    queries, _ = labelled_features(encoder, test, vocabulary, desc=f"{name}: test features")
    knn = knn_evaluate(bank.features, bank.labels, queries.features, queries.labels, ks=(K,))
    linear = linear_probe_evaluate(bank.features, bank.labels, queries.features, queries.labels, PROBE)
    return float(knn[K].top1), float(linear.top1)


def evaluate_encoders(config: TrainConfig, checkpoint: str, shards: dict[str, str]) -> dict[str, dict[str, float]]:
    """{"knn_top1": {...}, "linear_top1": {...}} of the trained encoder, the same encoder at
    random init, and raw pixels."""
    train, test = demo_loader(shards["train"], config), demo_loader(shards["test"], config)
    trained, _ = load_backbone(checkpoint)
    encoders = {"trained": trained,
                "random_init": evaluation_model(build_method(config.method_config(), seed=config.seed)),
                "raw_pixels": _RawPixels(train.spec)}
    out: dict[str, dict[str, float]] = {"knn_top1": {}, "linear_top1": {}}
    for name, encoder in encoders.items():
        knn, linear = _scores(encoder, train, test, name.replace("_", " "))
        out["knn_top1"][name], out["linear_top1"][name] = knn, linear
    return out


def natural_view_rows(encoders: dict[str, torch.nn.Module], loader: ViewLoader
                      ) -> tuple[dict[str, np.ndarray], list[str], np.ndarray]:
    """Features of every encoder for the rows `viewstream eval retrieval` scores
    (`evaluation.sources.retrieval_rows`: two different photos of every multi-photo group, one
    of the rest), their groups, and the photos themselves (HxWx3 in [0, 1]) for the grid; one
    pass over the loader feeds all encoders."""
    from evaluation.plots import denormalize

    feats: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    groups: list[str] = []
    images: list[np.ndarray] = []
    for batch in loader.iter_epoch(0):
        if len(batch) == 0:
            continue
        rows = retrieval_rows(batch)
        for name, encoder in encoders.items():
            views = [next(iter_features(encoder, [batch], view=v)).features for v in (0, 1)]
            feats[name] += [views[v][b] for b, v in rows]
        shown = [denormalize(batch.views[v], loader.spec.mean, loader.spec.std) for v in (0, 1)]
        groups += [batch.group_ids[b] for b, _ in rows]
        images += [shown[v][b] for b, v in rows]
    return {name: torch.stack(rows).numpy() for name, rows in feats.items()}, groups, np.stack(images)


def evaluate_retrieval(config: TrainConfig, checkpoints: dict[str, str], test_dataset: str,
                       ks: tuple[int, ...] = RECALL_KS, embedding: str = RETRIEVAL_EMBEDDING
                       ) -> tuple[dict[str, dict[int, float]], dict[str, Any]]:
    """recall@k of each checkpoint, random init and raw RGB pixels on `test_dataset`, and the
    first encoder's retrieval grid rows ({"queries", "rows"}) for the picture.

    Checkpoints and random init embed with `embedding` alike; with "projection" the first
    checkpoint's backbone features are scored too, as "{name}_backbone"."""
    size = int(config.data.recipe_options.get("size", 32))
    loader = eval_loader(test_dataset, size, 256, crop_fraction=1.0, views=2, endpoint_url=config.data.endpoint_url)
    methods = {name: load_method(path)[0] for name, path in checkpoints.items()}  # each checkpoint read once
    encoders = {name: evaluation_model(method, embedding) for name, method in methods.items()}
    first = next(iter(checkpoints))
    if embedding != "backbone":
        encoders[f"{first}_backbone"] = evaluation_model(methods[first])
    encoders["random_init"] = evaluation_model(build_method(config.method_config(), seed=config.seed), embedding)
    encoders["raw_pixels"] = _RawPixels(loader.spec, grey=False)
    vectors, groups, images = natural_view_rows(encoders, loader)
    recalls = {name: group_recall_at_k(v, groups, ks).recall for name, v in vectors.items()}
    return recalls, retrieval_grid(vectors[first], groups, images)


def retrieval_grid(vectors: np.ndarray, groups: list[str], images: np.ndarray,
                   queries: int = GRID_QUERIES, k: int = GRID_K) -> dict[str, Any]:
    """Queries (one photo each of the first objects) with their top-k other photos, each
    marked True when it is another photo of the query's object (its group)."""
    from evaluation.search import SearchIndex

    index = SearchIndex.build(vectors, groups=groups)
    picked, seen = [], set()
    for i, g in enumerate(groups):  # first photo of the first `queries` distinct groups
        if g not in seen:
            seen.add(g)
            picked.append(i)
        if len(picked) == queries:
            break
    found = index.search(vectors[picked], k=k + 1)
    rows = []
    for q, (idx, scores) in zip(picked, zip(found.indices, found.scores)):
        hits = [(int(i), float(s)) for i, s in zip(idx, scores) if int(i) != q and int(i) >= 0][:k]
        rows.append([(images[i], s, groups[i] == groups[q]) for i, s in hits])
    return {"queries": [images[q] for q in picked], "rows": rows}


def write_demo_plots(config: TrainConfig, result: Any, shards: dict[str, str], out: Path,
                     references: Optional[dict[str, float]] = None) -> list[Path]:
    """Loss/LR curves, kNN over training (random-init and raw-pixel levels as reference lines),
    a grid of real augmented views."""
    from evaluation.plots import load_metrics, plot_knn_over_training, plot_training_curves, plot_view_grid

    plots_dir = out / "plots"
    metrics = result.out_dir / "metrics.jsonl"
    paths = [plot_training_curves(metrics, plots_dir / "loss_lr.png", title=config.method["name"])]
    if any("knn_top1" in r for r in load_metrics(metrics)):
        lines = {label: references[key] for key, label in (("raw_pixels", "raw pixels"), ("random_init", "random init"))
                 if references and key in references}
        paths.append(plot_knn_over_training(metrics, plots_dir / "knn_over_training.png", references=lines))
    views = ViewLoader(config.data.dataset, config.view_spec(), 8, seed=config.seed, num_threads=1)
    paths.append(plot_view_grid(next(iter(views.iter_epoch(0))), plots_dir / "augmented_views.png"))
    return paths


def write_retrieval_plots(grid: dict[str, Any], scores: dict[str, dict[str, float]],
                          retrieval: dict[str, dict[int, float]], out: Path) -> list[Path]:
    """The natural-view retrieval grid and the summary bar chart of the report."""
    from evaluation.plots import plot_demo_summary, plot_retrieval_grid

    plots_dir = out / "plots"
    return [
        plot_retrieval_grid(grid["queries"], grid["rows"], plots_dir / "retrieval.png",
                            query_labels=["query"] * len(grid["queries"]),
                            title="natural-view retrieval on held-out objects: query, then its top-5 "
                                  "(green = another photo of the same object)"),
        plot_demo_summary(scores, retrieval, plots_dir / "summary.png"),
    ]


def print_report_table(report: dict[str, Any]) -> None:
    """The report as two small tables on the terminal."""
    print(f"\nFashion-MNIST ({report['method']})     kNN top-1 (k={K})   linear top-1")
    for name in ("trained", "random_init", "raw_pixels"):
        print(f"  {name.replace('_', ' '):22s} {100 * report[f'knn_top1_{name}']:10.2f}% "
              f"{100 * report[f'linear_top1_{name}']:13.2f}%")
    ks = [k for k in RECALL_KS if f"recall@{k}_natural_views" in report]
    print(f"\nnatural views ({report['view_method']}, group retrieval)  " + "  ".join(f"recall@{k}" for k in ks))
    for name in ("natural_views", "natural_views_backbone", "augment_only", "random_init", "raw_pixels"):
        if f"recall@{ks[0]}_{name}" in report:
            label = "natural views, backbone features" if name == "natural_views_backbone" else name.replace("_", " ")
            print(f"  {label:36s}" + "".join(f"{100 * report[f'recall@{k}_{name}']:9.2f}%" for k in ks))
    print()
