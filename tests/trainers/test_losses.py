"""Acceptance 1: each loss equals a short reference written from the paper's pseudo-code.

References loop over samples the way the papers write the formulas, in float64; the library
runs vectorised. Distributed behaviour is covered by test_methods_distributed.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainers import losses

BATCHES = [1, 3, 8]
TEMPERATURES = [0.07, 0.2, 0.5, 1.0]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor | float) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=1e-6, rtol=1e-6)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


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
def test_dino(batch, tps, tpt, n_local):
    student = [rand(batch, 7, seed=30 + i) for i in range(2 + n_local)]
    teacher = [rand(batch, 7, seed=40 + i) for i in range(2)]
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


# ------------------------------------------------------------------------------ BYOL / SimSiam
@pytest.mark.parametrize("batch", BATCHES)
def test_negative_cosine(batch):
    p, z = rand(batch, 6, seed=60), rand(batch, 6, seed=61)
    close(losses.negative_cosine(p, z), -sum(cos(a, b) for a, b in zip(p, z)) / batch)


def test_negative_cosine_stops_the_gradient_on_z_unless_asked():
    p, z = rand(4, 6).requires_grad_(True), rand(4, 6, seed=1).requires_grad_(True)
    losses.negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None
    losses.negative_cosine(p, z, stop_gradient=False).backward()
    assert z.grad is not None


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "call",
    [
        lambda: losses.nt_xent(rand(2, 3), rand(2, 3), 0.0),
        lambda: losses.info_nce(rand(2, 3), rand(2, 3), rand(4, 3), -1.0),
        lambda: losses.moco_v3(rand(2, 3), rand(2, 3), rand(2, 3), rand(2, 3), 0.0),
        lambda: losses.sinkhorn(rand(2, 3), 0),
        lambda: losses.dino([rand(2, 3)] * 2, [rand(2, 3)], torch.zeros(1, 3), teacher_temp=0.0),
    ],
)
def test_bad_arguments_name_the_value(call):
    with pytest.raises(ValueError, match=r"got -?0|got -1"):
        call()


# ------------------------------------------------------------------------------ Barlow Twins
def barlow_twins_reference(z1, z2, lambd, eps=1e-5):
    """Barlow Twins eq. 1: C_ij = sum_b z1n_bi z2n_bj / N (z standardised over the batch per dim)."""
    n, d = z1.shape

    def standardize(z):
        cols = []
        for j in range(d):
            col = [float(z[b, j]) for b in range(n)]
            mean = sum(col) / n
            var = sum((c - mean) ** 2 for c in col) / n
            cols.append([(c - mean) / math.sqrt(var + eps) for c in col])
        return cols  # cols[j][b]

    a, b = standardize(z1), standardize(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("dim", [1, 4, 7])
@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins(batch, dim, lambd):
    z1, z2 = rand(batch, dim, seed=1) * 3 + 1, rand(batch, dim, seed=2)
    close(losses.barlow_twins(z1, z2, lambd), barlow_twins_reference(z1, z2, lambd))


# ------------------------------------------------------------------------------ VICReg
def vicreg_reference(z1, z2, lam, mu, nu, eps=1e-4):
    """VICReg eqs. 1-6: s = mean ||z1_b - z2_b||^2 / d; v, c per branch over the batch."""
    n, d = z1.shape
    s = sum(float((z1[b] - z2[b]) @ (z1[b] - z2[b])) for b in range(n)) / (n * d)

    def v_and_c(z):
        mean = [sum(float(z[b, j]) for b in range(n)) / n for j in range(d)]
        cov = [[sum((float(z[b, i]) - mean[i]) * (float(z[b, j]) - mean[j]) for b in range(n)) / (n - 1)
                for j in range(d)] for i in range(d)]
        v = sum(max(0.0, 1 - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    (v1, c1), (v2, c2) = v_and_c(z1), v_and_c(z2)
    return lam * s + mu * (v1 + v2) / 2 + nu * (c1 + c2)


@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("dim", [1, 4, 7])
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
def test_vicreg(batch, dim, coeffs):
    z1, z2 = rand(batch, dim, seed=1) * 0.3, rand(batch, dim, seed=2) * 2  # one branch below std 1, one above
    close(losses.vicreg(z1, z2, *coeffs), vicreg_reference(z1, z2, *coeffs))


def test_vicreg_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        losses.vicreg(rand(1, 3), rand(1, 3))


# ------------------------------------------------------------------------------ MoBY
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_moby(batch, t):
    """MoBY: InfoNCE(pred_1, key_2, queue_2) + InfoNCE(pred_2, key_1, queue_1), MoCo's per-sample term."""
    p1, p2, k1, k2 = (rand(batch, 5, seed=s) for s in range(4))
    queue1, queue2 = (F.normalize(rand(6, 5, seed=s), dim=1) for s in (4, 5))
    expected = info_nce_reference(p1, k2, queue2, t) + info_nce_reference(p2, k1, queue1, t)
    close(losses.moby(p1, p2, k1, k2, queue1, queue2, t), expected)


# ------------------------------------------------------------------------------ CPC v2
def cpc_reference(latents, predictions, offsets):
    """CPC v2 eq. 3, looped: -log exp(zhat_ijk . z_{i+k,j}) / sum_l exp(zhat_ijk . z_l), z_l over every
    patch of every image of the batch; mean over all (image, i, j, k) terms."""
    n, h, w, _ = latents.shape
    pool = [latents[b, i, j] for b in range(n) for i in range(h) for j in range(w)]
    terms = []
    for prediction, k in zip(predictions, offsets):
        for b in range(n):
            for i in range(prediction.shape[1]):
                for j in range(w):
                    zhat = prediction[b, i, j]
                    target = latents[b, i + k, j] if k > 0 else latents[b, i, j]  # k < 0: rows 0..h+k-1
                    denominator = sum(math.exp(float(zhat @ z)) for z in pool)
                    terms.append(-math.log(math.exp(float(zhat @ target)) / denominator))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("rows,cols,dim", [(3, 2, 4), (4, 3, 5), (5, 1, 2)])
@pytest.mark.parametrize("offsets", [(1,), (1, 2), (2, -1, -2)])
def test_cpc_infonce(batch, rows, cols, dim, offsets):
    latents = rand(batch, rows, cols, dim, seed=1) * 0.5
    predictions = [rand(batch, rows - abs(k), cols, dim, seed=10 + m) * 0.5 for m, k in enumerate(offsets)]
    close(losses.cpc_infonce(latents, predictions, list(offsets)), cpc_reference(latents, predictions, offsets))


def test_cpc_infonce_gradient_reaches_predictions_and_every_latent():
    latents = rand(2, 3, 2, 4).requires_grad_(True)
    prediction = rand(2, 2, 2, 4, seed=1).requires_grad_(True)
    losses.cpc_infonce(latents, [prediction], [1]).backward()
    assert prediction.grad.abs().sum() > 0
    assert (latents.grad.flatten(0, 2).abs().sum(dim=1) > 0).all()  # targets and negatives alike (row 0 too)


@pytest.mark.parametrize(
    "offsets,shape,match",
    [([3], (2, 0, 2, 4), r"offset 3 needs 0 < \|offset\| < grid rows \(3\)"),
     ([1], (2, 3, 2, 4), r"prediction for offset 1 has shape \(2, 3, 2, 4\); expected \(2, 2, 2, 4\)")],
)
def test_cpc_infonce_rejects_offsets_and_shapes_that_do_not_fit(offsets, shape, match):
    with pytest.raises(ValueError, match=match):
        losses.cpc_infonce(rand(2, 3, 2, 4), [rand(*shape)], offsets)
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
