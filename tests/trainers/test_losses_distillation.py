"""Self-distillation losses (SwAV's swapped prediction with Sinkhorn, DINO, iBOT's masked patches)
against short references written from the papers (float64 loops; the library runs vectorised).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.trainers.loss_helpers import BATCHES, close, rand
from trainers import losses


# ------------------------------------------------------------------------------ SwAV
def sinkhorn_reference(scores, iterations, epsilon):
    """SwAV Appendix pseudo-code: alternate row (prototype) and column (sample) scaling."""
    q = torch.exp(scores / epsilon).T
    q = q / q.sum()
    k, b = q.shape
    r, c = torch.ones(k, dtype=q.dtype) / k, torch.ones(b, dtype=q.dtype) / b
    for _ in range(iterations):
        u = q.sum(dim=1)
        q = q * (r / u).unsqueeze(1)
        q = q * (c / q.sum(dim=0)).unsqueeze(0)
    return (q / q.sum(dim=0, keepdim=True)).T


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("iterations,epsilon", [(1, 0.05), (3, 0.05), (3, 0.1), (10, 0.03)])
def test_sinkhorn(batch, iterations, epsilon):
    scores = F.normalize(rand(batch, 8, seed=6), dim=1) @ F.normalize(rand(5, 8, seed=7), dim=1).T
    codes = losses.sinkhorn(scores, iterations, epsilon)
    close(codes, sinkhorn_reference(scores, iterations, epsilon).to(codes.dtype))
    close(codes.sum(dim=1), torch.ones(batch, dtype=codes.dtype))


def swav_reference(global_scores, local_scores, t, iterations, epsilon):
    """SwAV: codes of each global crop predicted by every other crop, averaged as the code does."""
    crops = global_scores + local_scores
    total = 0.0
    for i, scores in enumerate(global_scores):
        q = sinkhorn_reference(scores, iterations, epsilon)
        sub = 0.0
        for v, other in enumerate(crops):
            if v != i:
                p = torch.softmax(other / t, dim=1)
                sub += float(-(q * torch.log(p)).sum(dim=1).mean())
        total += sub / (len(crops) - 1)
    return total / len(global_scores)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("t", [0.1, 0.5])
@pytest.mark.parametrize("n_local", [0, 2])
def test_swav(batch, t, n_local):
    protos = F.normalize(rand(5, 8, seed=8), dim=1)
    crops = [F.normalize(rand(batch, 8, seed=10 + i), dim=1) @ protos.T for i in range(2 + n_local)]
    got = losses.swav(crops[:2], crops[2:], t, 3, 0.05)
    close(got, swav_reference(crops[:2], crops[2:], t, 3, 0.05))


def test_swav_queue_scores_join_sinkhorn_but_not_the_loss():
    protos = F.normalize(rand(5, 8), dim=1)
    crops = [F.normalize(rand(3, 8, seed=i), dim=1) @ protos.T for i in range(2)]
    queue = [F.normalize(rand(6, 8, seed=20 + i), dim=1) @ protos.T for i in range(2)]
    got = losses.swav(crops, [], 0.1, 3, 0.05, queue_scores=queue)
    # reference: Sinkhorn over [queue; batch], keep the batch rows
    expected = 0.0
    for i in range(2):
        q = sinkhorn_reference(torch.cat([queue[i], crops[i]]), 3, 0.05)[-3:]
        expected += float(-(q * torch.log_softmax(crops[1 - i] / 0.1, dim=1)).sum(dim=1).mean())
    close(got, expected / 2)


# ------------------------------------------------------------------------------ DINO
def dino_reference(student, teacher, center, tps, tpt):
    """DINO Algorithm 1, multi-crop: H(t, s) over pairs of different crops, averaged."""

    def h(t, s):
        t = torch.softmax((t - center) / tpt, dim=1)
        s = torch.log_softmax(s / tps, dim=1)
        return float(-(t * s).sum(dim=1).mean())

    terms = [h(t, s) for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("tps,tpt", [(0.1, 0.04), (0.1, 0.07), (0.2, 0.1)])
@pytest.mark.parametrize("n_local", [0, 3])
@pytest.mark.parametrize("n_global", [2, 3])  # 3: data.views_per_group
def test_dino(batch, tps, tpt, n_local, n_global):
    student = [rand(batch, 7, seed=30 + i) for i in range(n_global + n_local)]
    teacher = [rand(batch, 7, seed=40 + i) for i in range(n_global)]
    center = rand(1, 7, seed=50)
    close(losses.dino(student, teacher, center, tps, tpt), dino_reference(student, teacher, center, tps, tpt))


def test_dino_center_update_is_an_ema_of_the_teacher_mean():
    teacher = [rand(4, 7, seed=1), rand(4, 7, seed=2)]
    center = rand(1, 7, seed=3)
    expected = 0.9 * center + 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)
    close(losses.dino_center_update(teacher, center, 0.9), expected)


def test_dino_teacher_gets_no_gradient():
    teacher = [rand(4, 7).requires_grad_(True) for _ in range(2)]
    student = [rand(4, 7, seed=9).requires_grad_(True) for _ in range(2)]
    losses.dino(student, teacher, torch.zeros(1, 7, dtype=torch.float64)).backward()
    assert all(t.grad is None for t in teacher) and all(s.grad is not None for s in student)


# ------------------------------------------------------------------------------ iBOT
def ibot_patch_reference(student, teacher, masks, center, tps, tpt):
    """iBOT Eq. (MIM term), per image: the mean over its masked patches i of
    H(P_t(u_i - c'), P_s(u~_i)); images without a masked patch contribute 0 (main_ibot.py
    clamps the count at 1); mean over images, then over the global crops."""
    crops = []
    for s, t, m in zip(student, teacher, masks):
        per_image = []
        for b in range(s.shape[0]):
            masked = [i for i in range(s.shape[1]) if bool(m[b].flatten()[i])]
            total = 0.0
            for i in masked:
                p_t = torch.softmax((t[b, i] - center[0]) / tpt, dim=0)
                log_p_s = torch.log_softmax(s[b, i] / tps, dim=0)
                total += float(-(p_t * log_p_s).sum())
            per_image.append(total / max(len(masked), 1))
        crops.append(sum(per_image) / len(per_image))
    return sum(crops) / len(crops)


def bool_masks(batch, patches, seed, crops=2):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(batch, patches, generator=g) < 0.4 for _ in range(crops)]
    masks[0][0] = False  # an image without masked patches
    return masks


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("patches,dim", [(4, 5), (9, 7)])
@pytest.mark.parametrize("tps,tpt", [(0.1, 0.04), (0.1, 0.07), (0.2, 0.1)])
def test_ibot_patch(batch, patches, dim, tps, tpt):
    student = [rand(batch, patches, dim, seed=70 + i) for i in range(2)]
    teacher = [rand(batch, patches, dim, seed=80 + i) for i in range(2)]
    masks = bool_masks(batch, patches, seed=batch)
    center = rand(1, dim, seed=90)
    close(losses.ibot_patch(student, teacher, masks, center, tps, tpt),
          ibot_patch_reference(student, teacher, masks, center, tps, tpt))


def test_ibot_patch_ignores_unmasked_patches_and_teacher_gets_no_gradient():
    student = [rand(3, 4, 5, seed=1).requires_grad_(True) for _ in range(2)]
    teacher = [rand(3, 4, 5, seed=2).requires_grad_(True) for _ in range(2)]
    masks = bool_masks(3, 4, seed=0)
    losses.ibot_patch(student, teacher, masks, torch.zeros(1, 5, dtype=torch.float64)).backward()
    assert all(t.grad is None for t in teacher)
    for s, m in zip(student, masks):
        assert torch.all(s.grad[~m] == 0) and torch.any(s.grad[m] != 0)


def test_ibot_centers_are_emas_of_the_teacher_cls_and_per_image_patch_means():
    cls = [rand(4, 7, seed=1), rand(4, 7, seed=2)]
    patch = [rand(4, 3, 6, seed=3), rand(4, 3, 6, seed=4)]
    center, patch_center = rand(1, 7, seed=5), rand(1, 6, seed=6)
    got_c, got_p = losses.ibot_center_update(cls, patch, center, patch_center, 0.9, 0.8)
    close(got_c, 0.9 * center + 0.1 * torch.cat(cls).mean(dim=0, keepdim=True))
    close(got_p, 0.8 * patch_center + 0.2 * torch.cat([p.mean(dim=1) for p in patch]).mean(dim=0, keepdim=True))


def test_ibot_patch_checks_its_inputs():
    with pytest.raises(ValueError, match="one student, teacher and mask entry"):
        losses.ibot_patch([rand(2, 3, 4)], [rand(2, 3, 4)] * 2, [torch.ones(2, 3, dtype=torch.bool)], torch.zeros(1, 4))


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "call",
    [
        lambda: losses.sinkhorn(rand(2, 3), 0),
        lambda: losses.dino([rand(2, 3)] * 2, [rand(2, 3)], torch.zeros(1, 3), teacher_temp=0.0),
    ],
)
def test_bad_arguments_name_the_value(call):
    with pytest.raises(ValueError, match=r"got -?0|got -1"):
        call()
