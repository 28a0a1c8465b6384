"""recall@k of natural-view groups against a brute-force count written in the test."""
import numpy as np
import pytest

from evaluation.retrieval import group_recall_at_k
from groundfloor.errors import UsageError


def _reference(vectors: np.ndarray, groups: list[str], k: int) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    hits = []
    for q, g in enumerate(groups):
        if groups.count(g) < 2:
            continue
        top = np.argsort(-sims[q], kind="stable")[:k]
        hits.append(any(groups[i] == g for i in top))
    return float(np.mean(hits))


def test_recall_matches_brute_force_and_grows_with_k():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((60, 16))
    group_of_row = np.concatenate([np.repeat(np.arange(40), 2), np.arange(40, 60)])  # 40 pairs, 20 singles
    vectors = (centers[group_of_row] + 0.9 * rng.standard_normal((100, 16))).astype(np.float32)
    groups = [f"g{g}" for g in group_of_row]

    res = group_recall_at_k(vectors, groups, ks=(1, 5, 10))
    assert res.num_queries == 80 and res.num_gallery == 100
    for k in (1, 5, 10):
        assert res.recall[k] == pytest.approx(_reference(vectors, groups, k))
    assert 0 < res.recall[1] <= res.recall[5] <= res.recall[10] <= 1
    assert res.as_dict()["recall"]["recall@10"] == res.recall[10]


def test_identical_views_give_perfect_recall_and_singletons_only_is_an_error():
    vectors = np.repeat(np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32), 2, axis=0)
    groups = [f"g{i // 2}" for i in range(20)]
    assert group_recall_at_k(vectors, groups, ks=(1,)).recall[1] == 1.0
    with pytest.raises(UsageError, match="no natural-view groups"):
        group_recall_at_k(vectors[::2], groups[::2])
