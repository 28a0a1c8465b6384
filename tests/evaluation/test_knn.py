"""Weighted kNN equals scikit-learn's KNeighborsClassifier with the same exp(cos / T) weighting."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from evaluation.knn import knn_evaluate, knn_scores, topk_neighbours
from groundfloor.errors import UsageError


def _clustered(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))  # shared by splits
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    feats = centers[labels] + 1.5 * torch.randn(n, dim, generator=g)
    return F.normalize(feats, dim=1), labels


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (20, 0.07), (50, 0.5), (200, 0.07)])
def test_knn_matches_sklearn_weighted_classifier(k, temperature):
    train_x, train_y = _clustered(1500, 24, 10, seed=0)
    test_x, test_y = _clustered(400, 24, 10, seed=1)

    ref = KNeighborsClassifier(
        n_neighbors=k, metric="cosine", algorithm="brute",
        weights=lambda d: np.exp((1.0 - d) / temperature),
    ).fit(train_x.double().numpy(), train_y.numpy())
    proba = ref.predict_proba(test_x.double().numpy())
    ref_top1 = (proba.argmax(1) == test_y.numpy()).mean()
    ref_top5 = np.mean([y in np.argsort(-p, kind="stable")[:5] for p, y in zip(proba, test_y.numpy())])

    # Small blocks exercise the running top-k over several train and test blocks.
    ours = knn_evaluate(train_x, train_y, test_x, test_y, ks=(k,), temperature=temperature, test_block=64)[k]
    assert ours.top1 == pytest.approx(ref_top1, abs=1.5 / len(test_y))
    assert ours.top5 == pytest.approx(ref_top5, abs=1.5 / len(test_y))
    assert 0.3 < ours.top1 <= ours.top5

    scores = knn_scores(train_x, train_y, test_x, k=k, temperature=temperature)
    np.testing.assert_allclose((scores / scores.sum(1, keepdim=True)).numpy(), proba, atol=1e-4)


def test_blocked_topk_equals_full_topk():
    train_x, _ = _clustered(1000, 16, 5, seed=2)
    test_x, _ = _clustered(70, 16, 5, seed=3)
    from evaluation import knn as knn_module

    full_s, full_i = (test_x @ train_x.T).topk(30, dim=1)
    s, i = topk_neighbours(train_x, test_x, 30, test_block=16, train_block=128)
    torch.testing.assert_close(s, full_s)
    assert torch.equal(i, full_i)
    assert knn_module.DEFAULT_KS == (20, 200) and knn_module.DEFAULT_TEMPERATURE == 0.07


def test_k_larger_than_train_set_uses_every_train_sample():
    train_x, train_y = _clustered(12, 8, 3, seed=4)
    test_x, test_y = _clustered(20, 8, 3, seed=5)
    res = knn_evaluate(train_x, train_y, test_x, test_y, ks=(20, 200))
    assert res[20].top1 == res[200].top1  # both vote with all 12 train samples
    assert res[20].top5 == 1.0            # only 3 classes: the true one is always in the top 5


def test_mismatched_dimensions_are_a_usage_error():
    with pytest.raises(UsageError, match="dimension"):
        knn_evaluate(torch.randn(10, 8), torch.zeros(10, dtype=torch.long), torch.randn(4, 6), torch.zeros(4, dtype=torch.long))
