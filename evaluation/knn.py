"""Weighted k-nearest-neighbour classification on frozen, l2-normalised features.

The protocol of InstDisc (Wu et al., 2018) as used by DINO (Caron et al., 2021, `eval_knn.py`):
cosine similarity s between a test feature and every train feature, the k most similar train
samples vote for their label with weight exp(s / T), T = 0.07; the class with the largest summed
weight wins. It is cheap, has no hyper-parameter to tune on the test set and tracks linear-probe
accuracy well, which is why it is also the online monitor during training.

Similarities are computed in blocks of test rows x train rows with a running top-k, so memory
stays bounded (60k train x 10k test takes one [block, train_block] matrix at a time).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import torch

from groundfloor.errors import UsageError

DEFAULT_KS = (20, 200)
DEFAULT_TEMPERATURE = 0.07


@dataclass(frozen=True)
class KnnAccuracy:
    """Accuracy of the weighted kNN vote for one k (fractions in [0, 1])."""

    k: int
    temperature: float
    top1: float
    top5: float
    num_train: int
    num_test: int

    def as_dict(self) -> dict:
        return asdict(self)


def _check_features(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor) -> None:
    if train.ndim != 2 or test.ndim != 2:
        raise UsageError(f"kNN expects 2-d feature matrices, got train {tuple(train.shape)} and test {tuple(test.shape)}")
    if train.shape[1] != test.shape[1]:
        raise UsageError(f"train and test features differ in dimension: {train.shape[1]} vs {test.shape[1]}")
    if train.shape[0] == 0:
        raise UsageError("kNN needs at least one train feature, got none")
    if train_labels.shape != (train.shape[0],):
        raise UsageError(f"train labels have shape {tuple(train_labels.shape)}, expected ({train.shape[0]},)")


def topk_neighbours(
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    k: int,
    *,
    test_block: int = 256,
    train_block: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of the k most similar train rows for every test row, sorted descending.

    Inner products, i.e. cosine similarity for l2-normalised features. Blocked over both test
    and train rows with a running top-k, so it scales past what fits as one matrix.
    """
    k = min(k, train_features.shape[0])
    train = train_features.float()
    sims_out, idx_out = [], []
    for start in range(0, test_features.shape[0], test_block):
        query = test_features[start : start + test_block].float()
        best_s = torch.empty(query.shape[0], 0)
        best_i = torch.empty(query.shape[0], 0, dtype=torch.long)
        for t0 in range(0, train.shape[0], train_block):
            sims = query @ train[t0 : t0 + train_block].T
            s, i = sims.topk(min(k, sims.shape[1]), dim=1, largest=True, sorted=True)
            best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + t0], 1).gather(1, order)
        sims_out.append(best_s)
        idx_out.append(best_i)
    return torch.cat(sims_out), torch.cat(idx_out)


def knn_vote(
    neighbour_sims: torch.Tensor,
    neighbour_labels: torch.Tensor,
    num_classes: int,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """Class scores [N, C]: sum over the neighbours of exp(similarity / T) into their label's column."""
    weights = (neighbour_sims / temperature).exp()
    scores = torch.zeros(neighbour_sims.shape[0], num_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: Optional[int] = None,
    test_block: int = 256,
) -> torch.Tensor:
    """Weighted-vote class scores [N_test, C] of every test feature (argmax = prediction)."""
    _check_features(train_features, train_labels, test_features)
    num_classes = num_classes or int(train_labels.max()) + 1
    sims, idx = topk_neighbours(train_features, test_features, k, test_block=test_block)
    return knn_vote(sims, train_labels.long()[idx], num_classes, temperature)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true label is among the `k` highest scores, for each k (k capped at C)."""
    labels = labels.long().view(-1, 1)
    order = scores.argsort(dim=1, descending=True, stable=True)
    out = {}
    for k in ks:
        hit = (order[:, : min(k, scores.shape[1])] == labels).any(dim=1)
        out[k] = hit.double().mean().item() if len(hit) else 0.0
    return out


def knn_evaluate(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: Optional[int] = None,
    test_block: int = 256,
) -> dict[int, KnnAccuracy]:
    """Top-1/top-5 accuracy of the weighted kNN classifier for each k in `ks`.

    The neighbours are searched once for the largest k; smaller k use the head of the same
    sorted list, so evaluating k = 20 and 200 costs one search.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UsageError(f"k must be positive integers, got {ks}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    _check_features(train_features, train_labels, test_features)
    if test_labels.shape != (test_features.shape[0],):
        raise UsageError(f"test labels have shape {tuple(test_labels.shape)}, expected ({test_features.shape[0]},)")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    sims, idx = topk_neighbours(train_features, test_features, ks[-1], test_block=test_block)
    neighbour_labels = train_labels.long()[idx]
    results = {}
    for k in ks:
        scores = knn_vote(sims[:, :k], neighbour_labels[:, :k], num_classes, temperature)
        acc = topk_accuracy(scores, test_labels, (1, 5))
        results[k] = KnnAccuracy(k, temperature, acc[1], acc[5], int(train_features.shape[0]), int(test_features.shape[0]))
    return results
