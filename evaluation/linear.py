"""Linear probe on frozen, precomputed features.

The recipe is the one SimCLR (Chen et al., 2020, transfer section) and CLIP (Radford et al.,
2021) use for frozen features: features standardised with the train split's mean and std, then
multinomial logistic regression with an L2 penalty, solved to convergence with full-batch
L-BFGS. The problem is convex, so the answer does not depend on initialisation, batch order or
learning-rate schedules (unlike the 100-epoch SGD protocol, which needs augmentations and a GPU)
and equals scikit-learn's ``LogisticRegression(C=...)``. The penalty C is picked on a held-out
part of the train split (chosen by `seed`) unless it is given, then the probe is refit on the
whole train split.

Objective (as scikit-learn): ``0.5 * ||W||^2 + C * sum_i CE(W x_i + b, y_i)``; b is not penalised.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from evaluation.knn import topk_accuracy
from groundfloor.errors import UsageError

SMALL_PROBLEM_VALUES = 1_000_000  # features.numel() below which one thread is faster


class LinearProbeConfig(BaseModel):
    """How the probe is fitted; the defaults are the standard recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    c: Optional[float] = Field(None, gt=0, description="inverse L2 strength; None = choose from c_grid")
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out to choose C")
    standardize: bool = True
    max_iter: int = Field(1000, ge=1)
    tolerance: float = 1e-7
    seed: int = 0


@dataclass
class LinearProbe:
    """A fitted probe: standardisation then ``x @ weight.T + bias``."""

    weight: torch.Tensor   # [C, D]
    bias: torch.Tensor     # [C]
    mean: torch.Tensor     # [D]
    std: torch.Tensor      # [D]
    c: float
    iterations: int

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.weight.dtype) - self.mean) / self.std
        return x @ self.weight.T + self.bias


@dataclass(frozen=True)
class LinearProbeResult:
    top1: float
    top5: float
    train_top1: float
    c: float
    num_train: int
    num_test: int
    iterations: int

    def as_dict(self) -> dict:
        return asdict(self)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float, max_iter: int,
                  tolerance: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean CE + ||W||^2 / (2 C N) (scikit-learn's objective divided by C N) with L-BFGS."""
    n, d = x.shape
    weight = torch.zeros(num_classes, d, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    l2 = 1.0 / (2.0 * c * n)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, max_eval=max_iter * 2,
                                  tolerance_grad=tolerance, tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return weight.detach(), bias.detach(), iterations


@contextmanager
def _threads_for(num_values: int) -> Iterator[None]:
    """One intra-op thread for small problems: L-BFGS does thousands of tiny ops, and waking a
    thread pool for each costs more than the op (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    if num_values < SMALL_PROBLEM_VALUES:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, config: LinearProbeConfig = LinearProbeConfig(),
                     *, num_classes: Optional[int] = None) -> LinearProbe:
    """Fit the probe on (features, labels); choose C on a seeded held-out split if not given."""
    with _threads_for(features.numel()):
        return _fit_linear_probe(features, labels, config, num_classes)


def _fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, config: LinearProbeConfig,
                      num_classes: Optional[int]) -> LinearProbe:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise UsageError(f"linear probe expects features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    x = features.double()
    y = labels.long()
    num_classes = num_classes or int(y.max()) + 1
    if config.standardize:
        mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    else:
        mean, std = torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)
    xs = (x - mean) / std
    c = config.c if config.c is not None else _choose_c(xs, y, num_classes, config)
    weight, bias, iterations = _fit_logistic(xs, y, num_classes, c, config.max_iter, config.tolerance)
    return LinearProbe(weight, bias, mean, std, c, iterations)


def _choose_c(x: torch.Tensor, y: torch.Tensor, num_classes: int, config: LinearProbeConfig) -> float:
    """The C of `c_grid` with the best top-1 on a held-out part of train (first best wins ties)."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(config.seed))
    n_val = max(1, int(round(config.val_fraction * x.shape[0])))
    val, fit = order[:n_val], order[n_val:]
    best_c, best_acc = config.c_grid[0], -1.0
    for c in config.c_grid:
        w, b, _ = _fit_logistic(x[fit], y[fit], num_classes, c, config.max_iter, config.tolerance)
        acc = ((x[val] @ w.T + b).argmax(1) == y[val]).double().mean().item()
        if acc > best_acc:
            best_c, best_acc = c, acc
    return best_c


def linear_probe_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    config: LinearProbeConfig = LinearProbeConfig(),
) -> LinearProbeResult:
    """Fit on train, report top-1/top-5 on test (and top-1 on train, to spot over-fitting)."""
    if train_features.shape[1:] != test_features.shape[1:]:
        raise UsageError(f"train and test features differ in dimension: {train_features.shape[1]} vs {test_features.shape[1]}")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = fit_linear_probe(train_features, train_labels, config, num_classes=num_classes)
    test_acc = topk_accuracy(probe.scores(test_features), test_labels, (1, 5))
    train_acc = topk_accuracy(probe.scores(train_features), train_labels, (1,))
    return LinearProbeResult(test_acc[1], test_acc[5], train_acc[1], probe.c, int(train_features.shape[0]),
                             int(test_features.shape[0]), probe.iterations)
