"""SiT's losses (contrastive, reconstruction, rotation, uncertainty weighting) against references
written from the official code (float64).
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.trainers.loss_helpers import BATCHES, close, rand
from tests.trainers.test_losses_contrastive import moco_v3_reference
from trainers import losses


# ------------------------------------------------------------------------------ SiT
def sit_reference(s1, s2, t1, t2, rec, clean, mask, t, lmbda, rot_logits=None, turns=None, rot_weight=0.0):
    """Sara-Ahmed/SiT main.py: c_loss (its SimCLR module: student view i against teacher view j != i,
    CE over the teachers' keys with the own index as label, x 2t) + lmbda * r_loss (L1 over every
    corrupted pixel and channel: `recloss[masks == 1].mean()`); + rot_weight * the v1 rotation
    cross-entropy (1767b91 losses.py `CrossEntropyLoss()` of `rot_p` against `rots`, mean). Its
    c_loss is MoCo v3's Algorithm 1 with the teachers as keys: `moco_v3_reference`."""
    errors = [abs(float(rec[n, c, y, x] - clean[n, c, y, x]))
              for n in range(rec.shape[0]) for c in range(rec.shape[1])
              for y in range(rec.shape[2]) for x in range(rec.shape[3]) if mask[n, 0, y, x]]
    total = moco_v3_reference(s1, s2, t1, t2, t) + lmbda * sum(errors) / len(errors)
    if rot_logits is not None:
        rows = rot_logits.tolist()
        rotation = sum(-(row[int(k)] - math.log(sum(math.exp(x) for x in row))) for row, k in zip(rows, turns))
        total += rot_weight * rotation / len(rows)
    return total


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("channels,side", [(1, 4), (3, 6)])
@pytest.mark.parametrize("t,lmbda", [(0.2, 1.0), (0.5, 5.0)])
@pytest.mark.parametrize("rot_weight", [None, 0.5])
def test_sit(batch, channels, side, t, lmbda, rot_weight):
    s1, s2, t1, t2 = (rand(batch, 5, seed=s) for s in range(4))
    clean, rec = rand(2 * batch, channels, side, side, seed=4), rand(2 * batch, channels, side, side, seed=5)
    mask = rand(2 * batch, 1, side, side, seed=6) > 0.3
    mask[0, 0, 0, 0] = True
    rotation = {}
    if rot_weight is not None:
        rotation = dict(rotation_logits=3 * rand(2 * batch, 4, seed=7),
                        turns=torch.randint(0, 4, (2 * batch,), generator=torch.Generator().manual_seed(8)),
                        rotation_weight=rot_weight)
    expected = sit_reference(s1, s2, t1, t2, rec, clean, mask, t, lmbda,
                             rotation.get("rotation_logits"), rotation.get("turns"), rotation.get("rotation_weight", 0))
    close(losses.sit(s1, s2, t1, t2, rec, clean, mask, t, lmbda, **rotation), expected)


def test_uncertainty_weighted_is_sit_v1_mtl_loss():
    """1767b91 losses.py: total = sum over tasks of adj * exp(-s) * L + 0.5 * s (adj: CE 1, contrastive 1, L1 0.5)."""
    task = [rand(1, seed=s)[0].abs() for s in range(3)]
    s = rand(3, seed=9).requires_grad_(True)
    expected = sum(adj * math.exp(-float(si)) * float(li) + 0.5 * float(si)
                   for adj, si, li in zip((1.0, 0.5, 1.0), s.tolist(), task))
    loss = losses.uncertainty_weighted(task, s, (1.0, 0.5, 1.0))
    close(loss, expected)
    loss.backward()
    close(s.grad[1], 0.5 - 0.5 * math.exp(-float(s.detach()[1])) * float(task[1]))
    with pytest.raises(ValueError, match=r"one log-variance and one scale per task; got 3 losses, log_variances \(2,\)"):
        losses.uncertainty_weighted(task, s[:2], (1.0, 0.5, 1.0))


def test_sit_rotation_is_the_mean_cross_entropy_and_refuses_bad_shapes():
    logits = rand(6, 4, seed=1).requires_grad_(True)
    turns = torch.tensor([0, 1, 2, 3, 3, 1])
    loss = losses.sit_rotation(logits, turns)
    expected = sum(math.log(sum(math.exp(x) for x in row)) - row[k] for row, k in zip(logits.tolist(), turns.tolist()))
    close(loss, expected / 6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(N, classes\) logits and N labels, got \(6, 4\), \(5,\)"):
        losses.sit_rotation(logits, turns[:5])
    with pytest.raises(ValueError, match="rotation_logits need their turns"):
        losses.sit(*(rand(2, 5, seed=s) for s in range(4)), rand(2, 1, 2, 2), rand(2, 1, 2, 2),
                   torch.ones(2, 1, 2, 2, dtype=torch.bool), rotation_logits=logits[:2])


def test_sit_reconstruction_reads_only_corrupted_pixels_and_teachers_get_no_gradient():
    clean, rec = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1).requires_grad_(True)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[1, 0, 2:, :3] = True
    losses.sit_reconstruction(rec, clean, mask).backward()
    assert torch.equal(rec.grad != 0, mask.expand(2, 3, 4, 4))
    t1 = rand(3, 5).requires_grad_(True)
    s1 = rand(3, 5, seed=1).requires_grad_(True)
    losses.sit(s1, rand(3, 5, seed=2), t1, rand(3, 5, seed=3), rec, clean, mask).backward()
    assert t1.grad is None and s1.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"one shape, got \(2, 3, 4, 4\), \(2, 3, 4, 5\)"):
        losses.sit_reconstruction(rec, rand(2, 3, 4, 5), mask)
