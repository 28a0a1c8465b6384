"""Pictures of a run, written as PNG: curves, kNN over training, what the model sees, retrieval.

Matplotlib with the Agg backend (no display needed, safe in Ray workers and CI). Each function
takes plain data (metrics records, tensors, images) and a path, writes one PNG and returns the
path, so the demo, the runner and the CLI can all call them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402  (written once, in the pipeline)
from trainers.metrics import METRICS_FILE, read_metrics  # noqa: E402
from groundfloor.errors import UsageError  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(records: Iterable[Mapping[str, Any]], key: str, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r[x_key]), float(r[key])) for r in records
           if key in r and x_key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])]
    if not pts:
        return np.empty(0), np.empty(0)
    x, y = np.array(pts).T
    return x, y


def _smooth(y: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average (as TensorBoard's smoothing) so the trend reads through noise."""
    if len(y) < 3:
        return y
    alpha, out, acc = 2.0 / (span + 1), np.empty_like(y), y[0]
    for i, v in enumerate(y):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def load_metrics(metrics: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Metrics records from a JSONL file, a run folder holding metrics.jsonl, or a list already."""
    if isinstance(metrics, (str, os.PathLike)):
        path = Path(metrics)
        path = path / METRICS_FILE if path.is_dir() else path
        if not path.is_file():
            raise UsageError(f"no metrics file at {str(path)!r}")
        return read_metrics(path)
    return list(metrics)


def plot_training_curves(metrics: str | os.PathLike | Sequence[Mapping[str, Any]], out_png: str | os.PathLike,
                         *, title: str = "training") -> Path:
    """Loss (raw and smoothed) and learning rate against optimizer step, one panel each."""
    records = load_metrics(metrics)
    steps, loss = _series(records, "loss")
    lr_steps, lr = _series(records, "lr")
    if len(loss) == 0:
        raise UsageError("no 'loss' values in the metrics: nothing to plot")
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax_loss.plot(steps, _smooth(loss, max(5, len(loss) // 20)), color="tab:blue", lw=2, label="smoothed")
    ax_loss.set(xlabel="step", ylabel="loss", title=f"{title}: loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(frameon=False)
    if len(lr):
        ax_lr.plot(lr_steps, lr, color="tab:orange", lw=2)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        ax_lr.text(0.5, 0.5, "no learning-rate values", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{title}: learning rate")
    ax_lr.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_knn_over_training(metrics: str | os.PathLike | Sequence[Mapping[str, Any]], out_png: str | os.PathLike,
                           *, key: str = "knn_top1", x_key: str = "epoch",
                           references: Optional[Mapping[str, float]] = None) -> Path:
    """kNN top-1 of the online monitor against epoch, with optional reference lines (e.g. raw pixels)."""
    records = load_metrics(metrics)
    x, y = _series(records, key, x_key)
    if len(y) == 0:
        raise UsageError(f"no {key!r} values in the metrics: was the online kNN monitor on?")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(x, 100 * y, marker="o", lw=2, color="tab:green", label="trained encoder")
    for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
        ax.axhline(100 * value, ls=style, color="gray", lw=1.5)
        ax.annotate(f"{name} {100 * value:.1f}%", (ax.get_xlim()[0], 100 * value), xytext=(4, 3),
                    textcoords="offset points", fontsize=8, color="dimgray")
    ax.annotate(f"{100 * y[-1]:.1f}%", (x[-1], 100 * y[-1]), xytext=(-8, 8), textcoords="offset points",
                ha="right", fontsize=9, color="tab:green")
    ax.margins(y=0.12)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel=x_key, ylabel="kNN top-1 (%)", title="kNN accuracy over training")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="lower right")
    return _save(fig, out_png)


def denormalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Normalised [B, 3, H, W] tensors back to displayable float [B, H, W, 3] in [0, 1]."""
    x = images.detach().float().cpu()
    x = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def plot_view_grid(views: Sequence[torch.Tensor] | Any, out_png: str | os.PathLike, *,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   max_samples: int = 8, view_names: Optional[Sequence[str]] = None,
                   row_labels: Optional[Sequence[str]] = None) -> Path:
    """What the model sees: one row per sample, one column per view, de-normalised.

    `views` is a ViewBatch (its `.views`, keys as row labels) or a list of [B, 3, H, W] tensors.
    Each view keeps its own size, so multi-crop's small local crops look small.
    """
    if hasattr(views, "views"):
        row_labels = row_labels or [str(k) for k in views.keys]
        views = views.views
    if not views or views[0].shape[0] == 0:
        raise UsageError("the batch has no images to show")
    n = min(max_samples, views[0].shape[0])
    images = [denormalize(v[:n], mean, std) for v in views]
    sizes = [v.shape[-1] for v in views]
    fig, axes = plt.subplots(n, len(views), squeeze=False,
                             figsize=(1.5 * sum(sizes) / max(sizes) + 0.6, 1.5 * n + 0.4),
                             gridspec_kw={"width_ratios": sizes})
    for col, imgs in enumerate(images):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(imgs[row], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view_names[col] if view_names else f"view {col}\n{sizes[col]} px", fontsize=7)
            if col == 0 and row_labels:
                ax.set_ylabel(row_labels[row][-22:], fontsize=6)
    fig.suptitle("augmented views from a real batch (what the model sees)", fontsize=10)
    return _save(fig, out_png)


def plot_retrieval_grid(queries: Sequence[np.ndarray], results: Sequence[Sequence[tuple[np.ndarray, float, Optional[bool]]]],
                        out_png: str | os.PathLike, *, query_labels: Optional[Sequence[str]] = None,
                        title: Optional[str] = None) -> Path:
    """Each row: a query image, then its top-k results with cosine score; green = same group.

    Images are HxWx3 (uint8 or float in [0, 1]) or HxW arrays; `results[i]` lists
    (image, score, same_group) best first; same_group None (unknown, e.g. an image-file query) is gray.
    """
    if not queries:
        raise UsageError("no queries to show")
    k = max(len(r) for r in results)
    fig, axes = plt.subplots(len(queries), k + 1, squeeze=False, figsize=(1.45 * (k + 1), 1.65 * len(queries)))
    for row, (query, found) in enumerate(zip(queries, results)):
        _show(axes[row, 0], query, "black", 3)
        axes[row, 0].set_title(query_labels[row][-18:] if query_labels else "query", fontsize=8, fontweight="bold")
        for col in range(1, k + 1):
            ax = axes[row, col]
            if col - 1 < len(found):
                image, score, same = found[col - 1]
                _show(ax, image, {True: "tab:green", False: "tab:red", None: "gray"}[same], 3 if same else 1.5)
                ax.set_title(f"#{col}  {score:.2f}", fontsize=8, color="tab:green" if same else "black")
            else:
                ax.axis("off")
    fig.suptitle(title or "retrieval: query, then nearest neighbours (green border = another photo of the same group)",
                 fontsize=9)
    return _save(fig, out_png)


def _show(ax: plt.Axes, image: np.ndarray, edge: str, width: float) -> None:
    image = np.asarray(image)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(edge)
        spine.set_linewidth(width)


def plot_pair_sheet(pairs: Sequence[tuple[np.ndarray, np.ndarray, str]], out_png: str | os.PathLike,
                    columns: int = 4) -> Path:
    """A contact sheet of image pairs (near-duplicates): each cell the two images side by side
    under a caption (score, groups), `columns` pairs per row."""
    if not pairs:
        raise UsageError("no pairs to show")
    rows = math.ceil(len(pairs) / columns)
    fig, axes = plt.subplots(rows, 2 * columns, squeeze=False, figsize=(1.5 * 2 * columns, 1.8 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for i, (a, b, caption) in enumerate(pairs):
        r, c = divmod(i, columns)
        for j, image in enumerate((a, b)):
            _show(axes[r, 2 * c + j], image, "gray", 1)
        axes[r, 2 * c].set_title(caption, fontsize=7, loc="left")
    fig.suptitle("closest pairs across groups (near-duplicates), closest first", fontsize=9)
    return _save(fig, out_png)


def plot_demo_summary(scores: Mapping[str, Mapping[str, float]], retrieval: Mapping[str, Mapping[int, float]],
                      out_png: str | os.PathLike) -> Path:
    """The demo's report as bars: Fashion-MNIST kNN / linear top-1 per encoder (left), and
    natural-view group recall@k per encoder (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    _bars(left, {metric.replace("_top1", "").replace("knn", "kNN top-1").replace("linear", "linear top-1"): values
                 for metric, values in scores.items()}, "Fashion-MNIST: accuracy (%)")
    _bars(right, {f"recall@{k}": {name: recalls[k] for name, recalls in retrieval.items()}
                  for k in sorted(next(iter(retrieval.values())))}, "natural views: group retrieval (%)")
    return _save(fig, out_png)


def _bars(ax: plt.Axes, groups: Mapping[str, Mapping[str, float]], title: str) -> None:
    """One cluster of bars per metric (`groups` key), one bar per encoder, value on top."""
    encoders = list(dict.fromkeys(name for values in groups.values() for name in values))
    width = 0.8 / max(1, len(encoders))
    colours = dict(zip(encoders, ("tab:green", "tab:blue", "tab:gray", "silver", "tab:orange")))
    for i, name in enumerate(encoders):
        xs = [g + (i - (len(encoders) - 1) / 2) * width for g in range(len(groups))]
        ys = [100 * values.get(name, float("nan")) for values in groups.values()]
        ax.bar(xs, ys, width, label=name.replace("_", " "), color=colours[name])
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.1f}", (x, y), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set(title=title)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(frameon=False, fontsize=8)
