"""Contrastive losses (SimCLR, MoCo v2, MoCo v3, MoBY) against short references written from the papers.

References loop over samples the way the papers write the formulas, in float64; the library
runs vectorised. Distributed behaviour is covered by test_methods_distributed.py.
"""
from __future__ import annotations

import math

import pytest
import torch.nn.functional as F

from tests.trainers.loss_helpers import BATCHES, TEMPERATURES, close, cos, rand
from trainers import losses


# ------------------------------------------------------------------------------ SimCLR
def nt_xent_reference(z1, z2, t):
    """SimCLR Algorithm 1: z_{2k-1}, z_{2k} are the views of sample k; l(i, j) over k != i."""
    z = [v for pair in zip(z1, z2) for v in pair]
    n = len(z)

    def l(i, j):
        denominator = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n) if k != i)
        return -math.log(math.exp(cos(z[i], z[j]) / t) / denominator)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n // 2)) / n


@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_nt_xent(batch, t):
    z1, z2 = rand(batch, 5, seed=1), rand(batch, 5, seed=2)
    close(losses.nt_xent(z1, z2, t), nt_xent_reference(z1, z2, t))


# ------------------------------------------------------------------------------ MoCo v2
def info_nce_reference(q, k, queue, t):
    """MoCo Algorithm 1: logits [q.k+, q.queue]/t, label 0 (keys and queue normalised)."""
    total = 0.0
    for qi, ki in zip(q, k):
        positive = math.exp(cos(qi, ki) / t)
        negatives = sum(math.exp(float(F.normalize(qi, dim=0) @ n) / t) for n in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_info_nce(batch, t):
    q, k = rand(batch, 6, seed=3), rand(batch, 6, seed=4)
    queue = F.normalize(rand(10, 6, seed=5), dim=1)
    close(losses.info_nce(q, k, queue, t), info_nce_reference(q, k, queue, t))


def test_info_nce_gives_the_queue_no_gradient():
    queue = F.normalize(rand(10, 6), dim=1).requires_grad_(True)
    q = rand(4, 6).requires_grad_(True)
    losses.info_nce(q, rand(4, 6, seed=1), queue).backward()
    assert queue.grad is None and q.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ MoCo v3
def moco_v3_reference(q1, q2, k1, k2, t):
    """MoCo v3 Algorithm 1: ctr(q, k) = CE(q k^T / t, arange) * 2t; ctr(q1, k2) + ctr(q2, k1)."""

    def ctr(q, k):
        total = 0.0
        for i in range(len(q)):
            logits = [cos(q[i], k[j]) / t for j in range(len(k))]
            total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
        return total / len(q) * 2 * t

    return ctr(q1, k2) + ctr(q2, k1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_moco_v3(batch, t):
    q1, q2, k1, k2 = (rand(batch, 4, seed=s) for s in range(4))
    close(losses.moco_v3(q1, q2, k1, k2, t), moco_v3_reference(q1, q2, k1, k2, t))


# ------------------------------------------------------------------------------ MoBY
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_moby(batch, t):
    """MoBY: InfoNCE(pred_1, key_2, queue_2) + InfoNCE(pred_2, key_1, queue_1), MoCo's per-sample term."""
    p1, p2, k1, k2 = (rand(batch, 5, seed=s) for s in range(4))
    queue1, queue2 = (F.normalize(rand(6, 5, seed=s), dim=1) for s in (4, 5))
    expected = info_nce_reference(p1, k2, queue2, t) + info_nce_reference(p2, k1, queue1, t)
    close(losses.moby(p1, p2, k1, k2, queue1, queue2, t), expected)


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "call",
    [
        lambda: losses.nt_xent(rand(2, 3), rand(2, 3), 0.0),
        lambda: losses.info_nce(rand(2, 3), rand(2, 3), rand(4, 3), -1.0),
        lambda: losses.moco_v3(rand(2, 3), rand(2, 3), rand(2, 3), rand(2, 3), 0.0),
    ],
)
def test_bad_arguments_name_the_value(call):
    with pytest.raises(ValueError, match=r"got -?0|got -1"):
        call()
