"""Self-supervised losses, functional and distributed-exact.

Each loss is the mean over this rank's samples of the per-sample term the original paper's code
uses; anything that needs other ranks' samples (negatives, Sinkhorn sums, centers) goes through
:mod:`trainers.distributed`, so N ranks x batch B equals 1 rank x batch N*B. Names and argument
order are public API. Forms with several positives per anchor (group ids) live in
:mod:`trainers.losses_multi_positive`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers import distributed
from trainers.precision import fp32_statistics

__all__ = [
    "nt_xent", "info_nce", "moco_v3", "sinkhorn", "swav", "dino", "dino_center_update", "negative_cosine",
    "mean_over_view_pairs",
    "barlow_twins", "vicreg", "moby", "cpc_infonce", "ibot_patch", "ibot_center_update",
    "sit_reconstruction", "sit_rotation", "uncertainty_weighted", "sit",
]


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

    For each of the 2B local anchors, cross-entropy of cos(anchor, positive)/t against all other
    2NB-1 embeddings of all ranks (gathered with gradient); mean over the 2B anchors.
    """
    _check_temperature("temperature", temperature)
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    batch = z1.shape[0]
    local = torch.cat([z1, z2], dim=0)  # 2B x D: view 1 then view 2
    candidates = distributed.gather_with_grad(local)  # one collective: [z1, z2] of rank 0, rank 1, ...
    logits = local @ candidates.T / temperature
    rows = torch.arange(2 * batch, device=z1.device)
    self_index = rows + distributed.rank() * 2 * batch
    positive_index = self_index + torch.where(rows < batch, batch, -batch)
    logits = logits.masked_fill(F.one_hot(self_index, num_classes=candidates.shape[0]).bool(), float("-inf"))
    return F.cross_entropy(logits, positive_index)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v2's InfoNCE (He et al. 2020, https://arxiv.org/abs/1911.05722).

    Logits [q.k+, q.queue] / t with label 0; `queue` (K x D) holds l2-normalised keys of
    earlier batches and gets no gradient. Mean over local queries.
    """
    _check_temperature("temperature", temperature)
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def _moco_v3_contrast(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    q = F.normalize(q, dim=1)
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + distributed.rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


def moco_v3(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v3's symmetric loss (Chen et al. 2021, https://arxiv.org/abs/2104.02057).

    ctr(q1, k2) + ctr(q2, k1), where ctr is cross-entropy of q against the keys of ALL ranks
    (gathered) with the matching key as label, scaled by 2t as in the paper's code.
    """
    _check_temperature("temperature", temperature)
    batch = k1.shape[0]
    local = torch.cat([F.normalize(k1, dim=1), F.normalize(k2, dim=1)])
    keys = distributed.gather_with_grad(local).view(-1, 2, batch, k1.shape[1])  # one collective
    all_k1, all_k2 = keys[:, 0].flatten(0, 1), keys[:, 1].flatten(0, 1)
    return _moco_v3_contrast(q1, all_k2, temperature) + _moco_v3_contrast(q2, all_k1, temperature)


@torch.no_grad()
@fp32_statistics
def sinkhorn(scores: Tensor, iterations: int = 3, epsilon: float = 0.05) -> Tensor:
    """SwAV's distributed Sinkhorn-Knopp (Caron et al. 2020, https://arxiv.org/abs/2006.09882).

    `scores` (B x K) are this rank's rows; row and total sums are all-reduced so the
    equipartition constraint holds over the global batch. Returns soft codes (B x K) whose rows
    sum to 1. The global max is subtracted before exp (cancels in the normalisation) so low
    epsilon cannot overflow.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    _check_temperature("epsilon", epsilon)
    scores = scores.detach() / epsilon
    scores = scores - distributed.all_reduce_max(scores.max())
    q = torch.exp(scores).T  # K x B
    prototypes = q.shape[0]
    total_samples = q.shape[1] * distributed.world_size()
    q /= distributed.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= distributed.all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= total_samples
    q *= total_samples
    return q.T


def swav(
    global_scores: Sequence[Tensor],
    local_scores: Sequence[Tensor],
    temperature: float = 0.1,
    iterations: int = 3,
    epsilon: float = 0.05,
    queue_scores: Sequence[Tensor] | None = None,
) -> Tensor:
    """SwAV's swapped prediction over prototype scores (cosine similarities, B x K per crop).

    Codes come from each global crop (Sinkhorn, no gradient, optionally with this rank's share
    of the queue's scores prepended as in the paper); every other crop predicts them with a
    softmax at `temperature`. Averaged over the other crops, then over the global crops.
    """
    _check_temperature("temperature", temperature)
    crops = list(global_scores) + list(local_scores)
    if len(global_scores) < 1 or len(crops) < 2:
        raise ValueError(f"swav needs >= 1 global crop and >= 2 crops, got {len(global_scores)} + {len(local_scores)}")
    if queue_scores is not None and len(queue_scores) != len(global_scores):
        raise ValueError(f"queue_scores needs one entry per global crop ({len(global_scores)}), got {len(queue_scores)}")
    log_probs = [F.log_softmax(c / temperature, dim=1) for c in crops]
    total = global_scores[0].new_zeros(())
    for i, scores in enumerate(global_scores):
        batch = scores.shape[0]
        with torch.no_grad():
            block = scores.detach()
            if queue_scores is not None:
                block = torch.cat([queue_scores[i].detach(), block], dim=0)
            codes = sinkhorn(block, iterations, epsilon)[-batch:].to(scores.dtype)
        subloss = global_scores[0].new_zeros(())
        for v, lp in enumerate(log_probs):
            if v != i:
                subloss = subloss - (codes * lp).sum(dim=1).mean()
        total = total + subloss / (len(crops) - 1)
    return total / len(global_scores)


def dino(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO's cross-entropy (Caron et al. 2021, https://arxiv.org/abs/2104.14294).

    `student_out`: logits per crop, global crops first; `teacher_out`: logits of the global crops.
    Teacher targets are softmax((t - center)/teacher_temp) without gradient; each pair of
    DIFFERENT crops contributes the mean over samples of H(teacher, student); the result is
    the mean over pairs.
    """
    _check_temperature("student_temp", student_temp)
    _check_temperature("teacher_temp", teacher_temp)
    if len(teacher_out) < 1 or len(student_out) < 2:
        raise ValueError(f"dino needs >= 1 teacher crop and >= 2 student crops, got {len(teacher_out)}, {len(student_out)}")
    student_log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    total = student_out[0].new_zeros(())
    terms = 0
    for iq, target in enumerate(targets):
        for v, log_prob in enumerate(student_log_probs):
            if v == iq:
                continue
            total = total + torch.sum(-target * log_prob, dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
@fp32_statistics
def dino_center_update(teacher_out: Sequence[Tensor], center: Tensor, momentum: float = 0.9) -> Tensor:
    """DINO's EMA of the teacher's mean output over ALL ranks' samples; returns the new center."""
    stacked = torch.cat([t.detach() for t in teacher_out], dim=0)
    batch_sum = distributed.all_reduce_sum(stacked.sum(dim=0, keepdim=True))
    batch_center = batch_sum / (stacked.shape[0] * distributed.world_size())
    return center * momentum + batch_center * (1 - momentum)


def ibot_patch(
    student_patch: Sequence[Tensor],
    teacher_patch: Sequence[Tensor],
    masks: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.07,
) -> Tensor:
    """iBOT's masked-patch self-distillation (Zhou et al. 2022, https://arxiv.org/abs/2111.07832).

    Per global crop q: `student_patch[q]` (B, L, K) logits of the student's MASKED crop,
    `teacher_patch[q]` (B, L, K) logits of the teacher's unmasked crop, `masks[q]` (B, L) bool.
    bytedance/ibot main_ibot.py `iBOTLoss.forward` (the `v == q` branch): per patch
    H(softmax((t - center2)/teacher_temp), softmax(s/student_temp)), summed over the masked
    patches of each image and divided by their count (at least 1: an unmasked image adds 0 but
    still counts), mean over images, then over crops. The teacher gets no gradient.
    """
    _check_temperature("student_temp", student_temp)
    _check_temperature("teacher_temp", teacher_temp)
    if not len(student_patch) == len(teacher_patch) == len(masks) >= 1:
        raise ValueError(f"ibot_patch needs one student, teacher and mask entry per global crop, got "
                         f"{len(student_patch)}, {len(teacher_patch)}, {len(masks)}")
    total = student_patch[0].new_zeros(())
    for s, t, m in zip(student_patch, teacher_patch, masks):
        target = F.softmax((t.detach() - center) / teacher_temp, dim=-1)
        per_patch = torch.sum(-target * F.log_softmax(s / student_temp, dim=-1), dim=-1)  # (B, L)
        m = m.flatten(1).to(per_patch.dtype)
        total = total + (torch.sum(per_patch * m, dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    return total / len(student_patch)


@torch.no_grad()
@fp32_statistics
def ibot_center_update(teacher_cls: Sequence[Tensor], teacher_patch: Sequence[Tensor], center: Tensor,
                       patch_center: Tensor, momentum: float = 0.9, patch_momentum: float = 0.9
                       ) -> tuple[Tensor, Tensor]:
    """iBOT's two centres (`iBOTLoss.update_center`): EMAs of the teacher's mean [CLS] output and
    of its per-image mean patch output, over ALL ranks' images, in ONE all-reduce.

    `teacher_cls[q]` (B, K), `teacher_patch[q]` (B, L, K2); returns (center, patch_center).
    """
    cls = torch.cat([t.detach() for t in teacher_cls], dim=0)
    patch = torch.cat([t.detach().mean(dim=1) for t in teacher_patch], dim=0)
    sums = distributed.all_reduce_sum(torch.cat([cls.sum(dim=0), patch.sum(dim=0)])[None])
    total = cls.shape[0] * distributed.world_size()
    k = cls.shape[1]
    return (center * momentum + sums[:, :k] / total * (1 - momentum),
            patch_center * patch_momentum + sums[:, k:] / total * (1 - patch_momentum))


def negative_cosine(p: Tensor, z: Tensor, *, stop_gradient: bool = True) -> Tensor:
    """-cos(p, z) averaged over samples (SimSiam, https://arxiv.org/abs/2011.10566; BYOL).

    z is detached (the stop-gradient that prevents collapse); `stop_gradient=False` exists only
    to reproduce the collapse experiment.
    """
    if stop_gradient:
        z = z.detach()
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


def mean_over_view_pairs(term: Callable[[Tensor, Tensor], Tensor], online: Sequence[Tensor],
                         targets: Sequence[Tensor]) -> Tensor:
    """The mean of term(online[a], targets[b]) over the ordered pairs (a, b) of different views.

    The pair-averaged form of a two-view loss for G >= 2 views of each sample
    (`data.views_per_group`): every view predicts every other view of its sample. Summed in the
    order (0, 1), (0, 2), ..., (1, 0), ... and scaled by 1 / (G (G - 1)), so G = 2 gives
    (term(0, 1) + term(1, 0)) / 2 to the last bit.
    """
    views = len(online)
    if views < 2 or len(targets) != views:
        raise ValueError(f"need >= 2 views and as many targets, got {views} and {len(targets)}")
    total = online[0].new_zeros(())
    for a in range(views):
        for b in range(views):
            if a != b:
                total = total + term(online[a], targets[b])
    return total / (views * (views - 1))


def _off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal elements of a square matrix, flattened (barlowtwins/vicreg `off_diagonal`)."""
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def _global_standardize(z: Tensor, eps: float) -> Tensor:
    """(z - mean) / sqrt(var + eps) with mean and biased var over ALL ranks' rows, with gradient.

    What barlowtwins main.py's `nn.BatchNorm1d(affine=False)` computes after its
    `convert_sync_batchnorm`: statistics of the global batch, and their gradient reaches every rank.
    """
    total = z.shape[0] * distributed.world_size()
    mean = distributed.all_reduce_with_grad(z.sum(dim=0)) / total
    centered = z - mean
    var = distributed.all_reduce_with_grad(centered.pow(2).sum(dim=0)) / total
    return centered / torch.sqrt(var + eps)


@fp32_statistics
def barlow_twins(z1: Tensor, z2: Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, https://arxiv.org/abs/2103.03230), eq. 1.

    C = z1n^T z2n / N over the GLOBAL batch (z standardised per dimension over all ranks' N rows);
    loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2. As barlowtwins main.py, each rank
    computes its rows' share of C and the shares are summed by an all-reduce, here one that carries
    gradient (an all-reduce without it drops the other ranks' terms from the gradient, the bug
    lightly fixed). Every rank returns the same global value; see the module doc for why the
    gradient then equals single-process training.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"barlow_twins needs two (B, D) tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    total = z1.shape[0] * distributed.world_size()
    c = distributed.all_reduce_with_grad(_global_standardize(z1, eps).T @ _global_standardize(z2, eps)) / total
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@fp32_statistics
def vicreg(z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
           eps: float = 1e-4) -> Tensor:
    """VICReg (Bardes et al. 2022, https://arxiv.org/abs/2105.04906), as vicreg main_vicreg.py `VICReg.forward`.

    sim_coeff * MSE(z1, z2) (this rank's rows: its mean over ranks is the global MSE)
    + std_coeff * mean_j relu(1 - sqrt(Var(z_j) + eps)), averaged over the two branches
    + cov_coeff * sum_{i != j} Cov(z)_ij^2 / D, summed over the two branches;
    variance (unbiased) and covariance over the GLOBAL batch, gathered with gradient
    (main_vicreg.py's `FullGatherLayer`; one gather for both branches).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"vicreg needs two (B, D) tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    dim = z1.shape[1]
    repr_loss = F.mse_loss(z1, z2)
    both = distributed.gather_with_grad(torch.cat([z1, z2], dim=1))
    total = both.shape[0]
    if total < 2:
        raise ValueError("vicreg needs a global batch of at least 2 samples for its variance")
    both = both - both.mean(dim=0)
    std = torch.sqrt(both.var(dim=0) + eps)
    std_x, std_y = std[:dim], std[dim:]
    std_loss = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    x, y = both[:, :dim], both[:, dim:]
    cov_x = (x.T @ x) / (total - 1)
    cov_y = (y.T @ y) / (total - 1)
    cov_loss = _off_diagonal(cov_x).pow(2).sum() / dim + _off_diagonal(cov_y).pow(2).sum() / dim
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def moby(p1: Tensor, p2: Tensor, k1: Tensor, k2: Tensor, queue1: Tensor, queue2: Tensor, temperature: float = 0.2) -> Tensor:
    """MoBY's symmetric contrastive loss (Xie et al. 2021, https://arxiv.org/abs/2105.04553).

    Transformer-SSL models/moby.py `forward`: contrastive_loss(pred_1, proj_2_ng, queue2) +
    contrastive_loss(pred_2, proj_1_ng, queue1), each MoCo's InfoNCE (:func:`info_nce`): the
    predictions of one view against the momentum keys of the other and the queue of that other
    view's earlier keys (K x D, l2-normalised, no gradient). Mean over local samples per term.
    """
    return info_nce(p1, k2, queue2, temperature) + info_nce(p2, k1, queue1, temperature)


@fp32_statistics
def cpc_infonce(latents: Tensor, predictions: Sequence[Tensor], offsets: Sequence[int]) -> Tensor:
    """CPC's InfoNCE over a grid of patch latents (Hénaff et al. 2020, https://arxiv.org/abs/1905.09272, eq. 3).

    `latents` (B, H, W, D): this rank's images, a D-vector per patch of an H x W grid.
    `predictions[m]` (B, H - |k|, W, D) with k = `offsets[m]`: predictions of the latents k rows
    below (k > 0: of `latents[:, k:]`, made from context rows 0..H-k-1) or |k| rows above (k < 0:
    of `latents[:, :H+k]`, the bottom-up direction). Each prediction's logits are its dot products
    with EVERY latent of the global batch (all locations of all images of all ranks, gathered with
    gradient); the positive is its target patch, the rest are the negatives the paper names
    ("other locations in the image and other images in the mini-batch"). No normalisation or
    temperature (the paper scores z^T W_k c). Returns the mean over this rank's predictions of
    -log softmax at the positive, i.e. the paper's sum over (i, j, k) divided by its count.
    """
    if latents.dim() != 4:
        raise ValueError(f"cpc_infonce needs latents of shape (B, H, W, D), got {tuple(latents.shape)}")
    if len(predictions) != len(offsets) or not predictions:
        raise ValueError(f"cpc_infonce needs one offset per prediction, got {len(predictions)} and {len(offsets)}")
    batch, rows, cols, dim = latents.shape
    local = batch * rows * cols
    candidates = distributed.gather_with_grad(latents.reshape(local, dim))  # one collective, rank order
    index = (torch.arange(local, device=latents.device) + distributed.rank() * local).view(batch, rows, cols)
    anchors, targets = [], []
    for prediction, k in zip(predictions, offsets):
        if not 0 < abs(k) < rows:
            raise ValueError(f"offset {k} needs 0 < |offset| < grid rows ({rows})")
        if tuple(prediction.shape) != (batch, rows - abs(k), cols, dim):
            raise ValueError(f"prediction for offset {k} has shape {tuple(prediction.shape)}; "
                             f"expected {(batch, rows - abs(k), cols, dim)}")
        anchors.append(prediction.reshape(-1, dim))
        targets.append((index[:, k:] if k > 0 else index[:, : rows + k]).reshape(-1))
    logits = torch.cat(anchors) @ candidates.T
    return F.cross_entropy(logits, torch.cat(targets))
def sit_reconstruction(reconstruction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """SiT's reconstruction loss (Atito et al. 2021, https://arxiv.org/abs/2104.03602).

    Sara-Ahmed/SiT main.py: `F.l1_loss(s_recons, clean, reduction="none")[masks == 1].mean()`, the
    mean absolute error over every corrupted pixel and channel of the batch (`mask`: bool, (N, 1,
    H, W) or (N, C, H, W)). Distributed-exact: this rank's sum over the GLOBAL count / world size
    (the count is all-reduced; it carries no gradient), so the ranks' mean is the global masked
    mean. Computed in at least float32 (autocast may hand over a bf16 reconstruction).
    """
    if reconstruction.shape != target.shape or reconstruction.dim() != 4:
        raise ValueError(f"sit_reconstruction needs two (N, C, H, W) tensors of one shape, got "
                         f"{tuple(reconstruction.shape)}, {tuple(target.shape)}")
    dtype = torch.promote_types(reconstruction.dtype, torch.float32)
    error = (reconstruction.to(dtype) - target.detach().to(dtype)).abs()
    mask = mask.bool().expand_as(error)
    count = distributed.all_reduce_sum(mask.sum().to(dtype)).clamp_min(1.0)
    return torch.where(mask, error, 0.0).sum() * distributed.world_size() / count


def sit_rotation(logits: Tensor, turns: Tensor) -> Tensor:
    """SiT v1's rotation loss (arXiv 2104.03602 v1; Sara-Ahmed/SiT at 1767b91, losses.py
    `LearnedLoss("CrossEntropy")`): 4-way cross-entropy of the rotation head's logits (N, 4)
    against each crop's quarter turns (N,), mean over this rank's crops (equal per-rank batches:
    the ranks' mean is the global mean). Computed in at least float32."""
    if logits.dim() != 2 or logits.shape[0] != turns.shape[0]:
        raise ValueError(f"sit_rotation needs (N, classes) logits and N labels, got {tuple(logits.shape)}, "
                         f"{tuple(turns.shape)}")
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), turns)


def uncertainty_weighted(task_losses: Sequence[Tensor], log_variances: Tensor, scales: Sequence[float]) -> Tensor:
    """Learned task weighting (Kendall, Gal, Cipolla 2018, https://arxiv.org/abs/1705.07115) as SiT
    v1's code has it (Sara-Ahmed/SiT at 1767b91, losses.py `LearnedLoss.calculate_weighted_loss`):
    `sum_i scale_i * exp(-s_i) * L_i + s_i / 2`, s = `log_variances` learned (one per task), scale
    1 for a cross-entropy or contrastive term and 1/2 for an L1 one (its `adj`)."""
    if log_variances.shape != (len(task_losses),) or len(scales) != len(task_losses):
        raise ValueError(f"uncertainty_weighted needs one log-variance and one scale per task; got "
                         f"{len(task_losses)} losses, log_variances {tuple(log_variances.shape)}, {len(scales)} scales")
    s = log_variances.float() if log_variances.dtype in (torch.float16, torch.bfloat16) else log_variances
    return sum(scale * torch.exp(-s[i]) * loss + 0.5 * s[i] for i, (loss, scale) in enumerate(zip(task_losses, scales)))


def sit(s1: Tensor, s2: Tensor, t1: Tensor, t2: Tensor, reconstruction: Tensor, target: Tensor, mask: Tensor,
        temperature: float = 0.2, reconstruction_weight: float = 1.0, rotation_logits: Tensor | None = None,
        turns: Tensor | None = None, rotation_weight: float = 0.0) -> Tensor:
    """SiT's total loss: `c_loss + lmbda * r_loss` (Sara-Ahmed/SiT main.py), plus
    `rotation_weight * rot_loss` when the v1 rotation task is on (`rotation_logits`, `turns`).

    c_loss: its `SimCLR.forward`, the student's heads of the corrupted crops (s1, s2) against the
    EMA teacher's heads of the clean crops (t1, t2), crossed and gathered over ranks at
    `temperature`, scaled by 2t: exactly :func:`moco_v3`'s symmetric loss. r_loss:
    :func:`sit_reconstruction` (`target`: the rotated clean crops when rotating). rot_loss:
    :func:`sit_rotation`.
    """
    contrastive = moco_v3(s1, s2, t1.detach(), t2.detach(), temperature)
    loss = contrastive + reconstruction_weight * sit_reconstruction(reconstruction, target, mask)
    if rotation_logits is not None:
        if turns is None:
            raise ValueError("sit: rotation_logits need their turns")
        loss = loss + rotation_weight * sit_rotation(rotation_logits, turns)
    return loss
