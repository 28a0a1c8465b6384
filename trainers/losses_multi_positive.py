"""Multi-positive contrastive losses: every view of the same group in the global batch is a
positive of every other (natural views that learn the object, not the photo).

The form is supervised contrastive learning's L_out (Khosla et al. 2020,
https://arxiv.org/abs/2004.11362, eq. 2) with group ids in place of labels: for anchor i with
positives P(i) (the other embeddings of its group, on any rank),

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ),

the mean of the per-positive log-likelihoods (L_out; solo-learn's `simclr_loss_func` takes the
log of the summed positives instead, L_in, which the paper finds worse). Invariants:

- Distributed-exact, as :func:`trainers.losses.nt_xent`: embeddings are gathered with gradient
  (one `gather_with_grad`), group ids without (one `gather`), both in rank order, so the
  candidates and their ids are the same on N ranks x B as on 1 rank x N*B.
- An anchor with no positive in the global batch contributes 0 to the value and the gradient and
  is left out of the mean: its terms are replaced by 0 with a `where` before any sum (no
  -inf x 0), and the count of anchors with a positive is clamped to >= 1, so nothing is NaN.
  That count is global (computed on every rank from the gathered ids: a sort, no host sync, no
  collective), and each rank returns its anchors' sum x world_size / count: the ranks' mean is
  the global mean, and with the averaging gradient sync so is the gradient.
- With exactly one positive per anchor (2 views per group, every group once) each term is the
  usual -log softmax at the positive: the losses equal :func:`trainers.losses.nt_xent` and
  :func:`trainers.losses.moco_v3`.

Group ids are int64, one per embedding (`trainers.methods.base.group_hashes` turns the batch's
group id strings into them). Limitations: ids hash the group id string alone, so two roots of a
multi-root dataset that use the same group id string are one group; a hash collision of two
groups in one global batch (probability about n^2 / 2^65 for n samples) makes them positives.

BYOL, SimSiam and DINO take G views of a sample in their natural pair-averaged form instead
(`trainers.losses.mean_over_view_pairs`, `trainers.losses.dino`): every view against every other
view of the same sample. That equals the group form here whenever each group is one sample of the
global batch (as natural-view samples are: a group is a sample); the cross-sample form would need
the targets of all ranks gathered with their group ids, for DINO out_dim wide (65,536 floats per
view), for the rare batch that holds one group twice (a group id shared by two dataset roots).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers import distributed

__all__ = ["multi_positive_nt_xent", "multi_positive_moco_v3", "multi_positive_moco_v3_views"]


def _check(temperature: float, embeddings: Tensor, group_ids: Tensor, what: str) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if embeddings.dim() != 2:
        raise ValueError(f"{what} needs embeddings of shape (N, D), got {tuple(embeddings.shape)}")
    if group_ids.dtype != torch.int64 or tuple(group_ids.shape) != (embeddings.shape[0],):
        raise ValueError(f"{what} needs one int64 group id per embedding ({embeddings.shape[0]}), got "
                         f"{group_ids.dtype} of shape {tuple(group_ids.shape)}")


def _mean_over_positives(logits: Tensor, positive: Tensor) -> Tensor:
    """Per anchor (row): -mean over its positives of log softmax(logits); 0 where it has none.

    Masked-out logits may be -inf (the anchor itself); they are never positives, so the `where`
    drops every -inf before the sum and the backward sends them exactly 0.
    """
    log_prob = F.log_softmax(logits, dim=1)
    total = torch.where(positive, log_prob, torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)).sum(dim=1)
    return -total / positive.sum(dim=1).clamp(min=1)


def _anchors_with_a_positive(group_ids: Tensor) -> Tensor:
    """How many entries of `group_ids` share their id with another entry (0-d int64, on device).

    After a sort equal ids are neighbours: an entry has a partner iff it equals the one before
    or after it. Fixed shapes throughout (no `unique`), so no host sync.
    """
    ordered = torch.sort(group_ids).values
    same = ordered[1:] == ordered[:-1]
    edge = torch.zeros(1, dtype=torch.bool, device=group_ids.device)
    return (torch.cat([edge, same]) | torch.cat([same, edge])).sum()


def multi_positive_nt_xent(z: Tensor, group_ids: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent with every same-group embedding of the global batch as a positive.

    `z` (M, D): this rank's embeddings, any number of views per sample in any order (SimCLR
    passes [view 1; view 2]); `group_ids` (M,) int64, one per row. Each row is an anchor scored
    against the M x world_size embeddings of all ranks but itself (cosine / `temperature`);
    its positives are the others with its group id (L_out, module doc). Returns this rank's
    share of the global mean over anchors that have a positive (module doc: N ranks x B == 1
    rank x N*B). Equals :func:`trainers.losses.nt_xent` (z1, z2) when `z` = [z1; z2] and
    `group_ids` = [g; g] with g distinct.
    """
    _check(temperature, z, group_ids, "multi_positive_nt_xent")
    z = F.normalize(z, dim=1)
    candidates = distributed.gather_with_grad(z)  # [z of rank 0, z of rank 1, ...]
    candidate_groups = distributed.gather(group_ids)  # the same order
    if candidates.shape[0] < 2:
        raise ValueError(f"multi_positive_nt_xent needs >= 2 embeddings in the global batch, got {candidates.shape[0]}")
    rows = z.shape[0]
    self_index = torch.arange(rows, device=z.device) + distributed.rank() * rows
    is_self = F.one_hot(self_index, num_classes=candidates.shape[0]).bool()
    logits = (z @ candidates.T / temperature).masked_fill(is_self, float("-inf"))
    positive = (group_ids[:, None] == candidate_groups[None, :]) & ~is_self
    per_anchor = _mean_over_positives(logits, positive)
    anchors = _anchors_with_a_positive(candidate_groups).clamp(min=1)
    return per_anchor.sum() * distributed.world_size() / anchors


def _contrast(q: Tensor, keys: Tensor, positive: Tensor, temperature: float) -> Tensor:
    """MoCo v3's ctr(q, k) with several positives: mean over queries of the L_out term, x 2t."""
    logits = F.normalize(q, dim=1) @ keys.T / temperature
    return _mean_over_positives(logits, positive).mean() * (2 * temperature)


def multi_positive_moco_v3(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, group_ids: Tensor,
                           temperature: float = 0.2) -> Tensor:
    """MoCo v3's symmetric loss with every same-group key of the global batch as a positive.

    ctr(q1, k2) + ctr(q2, k1) as :func:`trainers.losses.moco_v3` (keys of ALL ranks gathered in
    one collective, x 2t), but query i's positives are the keys of every sample whose group id
    equals its own (`group_ids` (B,) int64, one per sample, shared by its queries and keys; ids
    gathered in a second collective). A query's own key is always among them, so every query has
    a positive and the mean over this rank's queries is its share of the global mean as is.
    Equals :func:`trainers.losses.moco_v3` when the ids are distinct.
    """
    return multi_positive_moco_v3_views([q1, q2], [k1, k2], group_ids, temperature)


def multi_positive_moco_v3_views(queries: list[Tensor], keys: list[Tensor], group_ids: Tensor,
                                 temperature: float = 0.2) -> Tensor:
    """:func:`multi_positive_moco_v3` for G >= 2 global views per sample (`data.views_per_group`).

    The queries of view v are scored against the keys of every OTHER view of all ranks
    (G - 1 views x the global batch; as MoCo v3, a query never meets keys of its own view), their
    positives the keys whose sample shares its group (its own sample's other views included), so
    every view of a group is a positive of every other. The G terms are averaged x 2
    (2 / G * sum_v ctr(q_v, K_{w != v})), which for G = 2 is ctr(q1, k2) + ctr(q2, k1) exactly.
    `queries`, `keys`: G tensors (B, D) each; `group_ids` (B,) int64, one per sample.
    """
    views = len(queries)
    if views < 2 or len(keys) != views:
        raise ValueError(f"multi_positive_moco_v3 needs G >= 2 queries and G keys, got {views} and {len(keys)}")
    _check(temperature, queries[0], group_ids, "multi_positive_moco_v3")
    if len({tuple(t.shape) for t in (*queries, *keys)}) != 1:
        raise ValueError(f"multi_positive_moco_v3 needs {2 * views} (B, D) tensors of one shape, got "
                         f"{[tuple(t.shape) for t in (*queries, *keys)]}")
    batch, dim = keys[0].shape
    local = torch.cat([F.normalize(k, dim=1) for k in keys])
    gathered = distributed.gather_with_grad(local).view(-1, views, batch, dim)  # one collective
    other_ids = distributed.gather(group_ids).view(-1, batch).repeat(1, views - 1).flatten()
    positive = group_ids[:, None] == other_ids[None, :]  # the same for every v: views in rank-major blocks
    loss = sum(_contrast(q, torch.cat([gathered[:, w] for w in range(views) if w != v], dim=1).flatten(0, 1),
                         positive, temperature) for v, q in enumerate(queries))
    return loss * (2 / views)
