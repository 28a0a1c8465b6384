"""Multi-positive contrastive losses (trainers.losses_multi_positive) and their wiring in SimCLR
and MoCo v3.

References loop over anchors and positives the way SupCon's L_out is written (Khosla et al.
2020, eq. 2), in float64 with autograd, so values AND gradients are compared. The 2-rank tests
run real gloo processes: the loss alone (uneven anchors without positives on the two ranks), and
the real `Trainer.train_step` with groups that span both ranks, gradients taken BEFORE clipping
(the tiny configs clip at 5.0, which would hide a gradient that is N times too large).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import DataPosition, ViewBatch
from tests.trainers.loss_helpers import TEMPERATURES, rand
from tests.trainers.spawn import run_distributed
from tests.trainers.tiny import (CONVNET, GLOBAL_BATCH, assert_ranks_ran_as_one, local_rows, make_trainer, make_views,
                                 run_recording_gradients_before_clipping)
from testbed.host_syncs import counting_syncs
from trainers import distributed, losses
from trainers.losses_multi_positive import multi_positive_moco_v3, multi_positive_nt_xent
from trainers.methods import SampleIds, build_method, group_hashes
from groundfloor.errors import UsageError


def ids(*groups: int) -> torch.Tensor:
    return torch.tensor(groups, dtype=torch.int64)


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------ references
def nt_xent_reference(z: torch.Tensor, groups: list[int], t: float) -> torch.Tensor:
    """L_out: per anchor i with positives P(i) = {p != i: g_p = g_i},
    -1/|P(i)| sum_p log(exp(s_ip/t) / sum_{a != i} exp(s_ia/t)); mean over anchors with a positive."""
    n = len(groups)
    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and groups[p] == groups[i]]
        if not positives:
            continue
        s = [F.cosine_similarity(z[i], z[a], dim=0) / t for a in range(n)]
        denominator = sum(torch.exp(s[a]) for a in range(n) if a != i)
        terms.append(-sum(torch.log(torch.exp(s[p]) / denominator) for p in positives) / len(positives))
    return sum(terms) / len(terms) if terms else z.sum() * 0


def moco_v3_reference(q1, q2, k1, k2, groups: list[int], t: float) -> torch.Tensor:
    """ctr(q, k): per query i, -1/|P(i)| sum_{j: g_j = g_i} log softmax_j(cos(q_i, k_.)/t), mean, x 2t."""

    def ctr(q, k):
        total = 0
        for i in range(len(q)):
            s = [F.cosine_similarity(q[i], k[j], dim=0) / t for j in range(len(k))]
            denominator = sum(torch.exp(x) for x in s)
            positives = [j for j in range(len(k)) if groups[j] == groups[i]]
            total = total - sum(torch.log(torch.exp(s[j]) / denominator) for j in positives) / len(positives)
        return total / len(q) * 2 * t

    return ctr(q1, k2) + ctr(q2, k1)


def value_and_grad(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), list(grads)


# group patterns of 8 embeddings: k = 2 distinct, a group drawn twice, 3 and 4 views of a group,
# anchors without a positive among others, and no positive at all
PATTERNS = {
    "pairs": [0, 1, 2, 3, 0, 1, 2, 3],
    "group_twice": [0, 1, 0, 2, 0, 1, 0, 2],
    "k_views": [5, 5, 5, 7, 7, 7, 7, 9],
    "some_alone": [0, 1, 2, 3, 0, 4, 5, 3],
    "all_alone": [0, 1, 2, 3, 4, 5, 6, 7],
}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_nt_xent_matches_the_loop_reference_in_value_and_gradient(pattern, t):
    z, groups = rand(8, 5, seed=1), PATTERNS[pattern]
    value, (grad,) = value_and_grad(lambda x: multi_positive_nt_xent(x, torch.tensor(groups), t), z)
    ref_value, (ref_grad,) = value_and_grad(lambda x: nt_xent_reference(x, groups, t), z)
    assert_same(value, ref_value, "loss")
    assert_same(grad, ref_grad, "gradient")
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("pattern", ["pairs", "group_twice", "some_alone"])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_moco_v3_form_matches_the_loop_reference_in_value_and_gradient(pattern, t):
    groups = PATTERNS[pattern]
    tensors = [rand(8, 4, seed=s) for s in range(4)]
    value, grads = value_and_grad(lambda *x: multi_positive_moco_v3(*x, torch.tensor(groups), t), *tensors)
    ref_value, ref_grads = value_and_grad(lambda *x: moco_v3_reference(*x, groups, t), *tensors)
    assert_same(value, ref_value, "loss")
    for name, g, r in zip(("q1", "q2", "k1", "k2"), grads, ref_grads):
        assert_same(g, r, f"gradient of {name}")


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_two_views_of_distinct_groups_are_nt_xent_and_moco_v3(batch, t):
    """One positive per anchor: the multi-positive forms ARE the existing losses (values, gradients)."""
    g = torch.arange(batch) * 3 + 11
    z1, z2 = rand(batch, 5, seed=2), rand(batch, 5, seed=3)
    value, grads = value_and_grad(lambda a, b: multi_positive_nt_xent(torch.cat([a, b]), g.repeat(2), t), z1, z2)
    ref_value, ref_grads = value_and_grad(lambda a, b: losses.nt_xent(a, b, t), z1, z2)
    assert_same(value, ref_value, "nt_xent")
    for g_, r in zip(grads, ref_grads):
        assert_same(g_, r, "nt_xent gradient")
    tensors = [rand(batch, 4, seed=s) for s in range(4, 8)]
    value, grads = value_and_grad(lambda *x: multi_positive_moco_v3(*x, g, t), *tensors)
    ref_value, ref_grads = value_and_grad(lambda *x: losses.moco_v3(*x, t), *tensors)
    assert_same(value, ref_value, "moco_v3")
    for g_, r in zip(grads, ref_grads):
        assert_same(g_, r, "moco_v3 gradient")


def test_anchors_without_a_positive_are_left_out_of_the_mean_but_stay_negatives():
    z = rand(6, 5, seed=4)
    paired = multi_positive_nt_xent(z[:4], ids(0, 1, 0, 1), 0.5)
    # two lone anchors added: the mean is still over the 4 paired anchors, whose denominators
    # now also hold the lone embeddings as negatives (so the value changes, and the lone rows
    # get a gradient from being negatives, none from being anchors)
    value, (grad,) = value_and_grad(lambda x: multi_positive_nt_xent(x, ids(0, 1, 0, 1, 2, 3), 0.5), z)
    ref_value, (ref_grad,) = value_and_grad(lambda x: nt_xent_reference(x, [0, 1, 0, 1, 2, 3], 0.5), z)
    assert_same(value, ref_value, "loss")
    assert_same(grad, ref_grad, "gradient")
    assert not torch.allclose(value, paired) and grad[4:].abs().sum() > 0
    # no positive anywhere: 0, a zero gradient, nothing NaN (a 0/0 mean would be NaN)
    value, (grad,) = value_and_grad(lambda x: multi_positive_nt_xent(x, ids(0, 1, 2, 3, 4, 5), 0.5), z)
    assert value == 0 and torch.equal(grad, torch.zeros_like(grad))


def test_half_precision_inputs_stay_finite_and_close():
    z, g = rand(8, 16, seed=5), torch.tensor(PATTERNS["some_alone"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = multi_positive_nt_xent(z.float(), g, 0.1)
    assert torch.isfinite(low)
    torch.testing.assert_close(low.double(), multi_positive_nt_xent(z, g, 0.1), atol=0.1, rtol=0.02)


@pytest.mark.parametrize("call, message", [
    (lambda: multi_positive_nt_xent(rand(4, 3), ids(0, 0, 1, 1), 0.0), "temperature must be > 0, got 0.0"),
    (lambda: multi_positive_nt_xent(rand(4, 3), torch.zeros(4), 0.5), "int64 group id per embedding"),
    (lambda: multi_positive_nt_xent(rand(4, 3), ids(0, 0, 1), 0.5), r"\(4\), got torch.int64 of shape \(3,\)"),
    (lambda: multi_positive_nt_xent(rand(1, 3), ids(0), 0.5), ">= 2 embeddings in the global batch, got 1"),
    (lambda: multi_positive_moco_v3(rand(2, 3), rand(2, 3), rand(2, 3), rand(3, 3), ids(0, 1), 0.2), "one shape"),
])
def test_bad_arguments_name_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------ group ids
def test_group_hashes_are_a_pure_function_of_the_string():
    expected = int.from_bytes(hashlib.blake2b("listing/42".encode(), digest_size=8).digest(), "little", signed=True)
    hashed = group_hashes(["listing/42", "listing/7", "listing/42"])
    assert hashed.dtype == np.int64 and hashed[0] == expected == hashed[2] != hashed[1]
    assert group_hashes([]).shape == (0,)


def test_a_multi_positive_method_refuses_a_batch_without_group_ids():
    method = build_method(dict(name="simclr", backbone=CONVNET, projection_hidden_dim=8, projection_dim=4,
                               multi_positive=True), seed=0)
    assert method.needs_sample_ids and not build_method(dict(name="simclr", backbone=CONVNET)).needs_sample_ids
    views = [torch.randn(2, 3, 16, 16)] * 2
    with pytest.raises(UsageError, match="multi_positive needs the batch's group ids"):
        method.training_step(views, 0)
    with pytest.raises(UsageError, match="for 2 samples, got 3"):
        method.training_step(views, 0, samples=SampleIds(0, 0, np.arange(2), np.arange(3)))


# ------------------------------------------------------------------------------ the methods' step
MP_CONFIGS = {
    "simclr": dict(name="simclr", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16, multi_positive=True),
    "moco_v3": dict(name="moco_v3", backbone=CONVNET, projection_hidden_dim=32, projection_dim=16,
                    prediction_hidden_dim=32, multi_positive=True),
}
# the global batch's groups per step (rank 0 takes the first half): groups that span both ranks,
# a group three times, singletons
STEP_GROUPS = [["a", "b", "a", "c", "b", "d", "a", "e"], ["f", "f", "g", "h", "g", "i", "i", "i"]]
assert all(len(groups) == GLOBAL_BATCH for groups in STEP_GROUPS)


def grouped_view_batch(views: list[torch.Tensor], step: int) -> ViewBatch:
    """This rank's share of a global batch, with group ids that are a function of the global row."""
    local = [local_rows(v) for v in views]
    n = local[0].shape[0]
    start = distributed.rank() * n
    groups = STEP_GROUPS[step][start:start + n]
    rows = local_rows(torch.arange(GLOBAL_BATCH)) + step * GLOBAL_BATCH
    return ViewBatch(views=local, keys=[f"s{step}row{int(r)}" for r in rows], group_ids=groups, labels=None,
                     label_vocabulary=[], view_sources=torch.zeros(n, 2, dtype=torch.long), rows=rows,
                     epoch=0, batch=step, position=DataPosition(0, step + 1))


def test_micro_batches_carry_their_own_samples_groups():
    trainer = make_trainer(MP_CONFIGS["simclr"], gradient_accumulation_steps=2)
    views = make_views(MP_CONFIGS["simclr"], 1)[0]
    parts = trainer._sample_ids(grouped_view_batch(views, 0), 2)
    assert [p.rows.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [p.groups.tolist() for p in parts] == [group_hashes(STEP_GROUPS[0][:4]).tolist(),
                                                  group_hashes(STEP_GROUPS[0][4:]).tolist()]


def syncs_per_step(config: dict, device: str = "cpu") -> int:
    """Host syncs of a multi-positive step (forward + backward) after a warm-up step; on CPU the
    calls that WOULD sync on a GPU (testbed.host_syncs), on CUDA torch's own sync debug mode."""
    method = build_method(config, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g).to(device) for _ in range(2)]
    samples = SampleIds(0, 0, np.arange(GLOBAL_BATCH), group_hashes(STEP_GROUPS[0]))
    counter = [0]
    for warm in (True, False):
        with counting_syncs(device, [0] if warm else counter):
            loss, _ = method.training_step(views, 0, samples=samples)
            loss.backward()
    return counter[0]


@pytest.mark.parametrize("name", ["simclr", "moco_v3"])
def test_a_multi_positive_step_makes_no_host_sync(name):
    assert syncs_per_step(MP_CONFIGS[name]) == 0


# ------------------------------------------------------------------------------ 2 ranks x B == 1 rank x 2B
def run_with_gradients_before_clipping(config: dict) -> list[dict]:
    """Two real Trainer steps with groups across ranks, gradients recorded before clipping."""
    return run_recording_gradients_before_clipping(
        config, lambda: [grouped_view_batch(views, step)
                         for step, views in enumerate(make_views(config, len(STEP_GROUPS)))])


def split_loss_run(z: torch.Tensor, groups: torch.Tensor, t: float) -> dict:
    """The loss alone on this rank's rows of (z, groups): value and the gradient of its rows."""
    n = z.shape[0] // distributed.world_size()
    mine = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
    value, (grad,) = value_and_grad(lambda x: multi_positive_nt_xent(x, groups[mine], t), z[mine])
    return {"loss": value, "grad": grad}


def all_distributed_runs() -> dict:
    torch.manual_seed(123)  # nothing may depend on the global RNG
    # anchors with a positive: 3 of rank 0's 4 rows, 1 of rank 1's; a local mean would differ
    z, groups = rand(8, 5, seed=6), ids(0, 1, 0, 1, 2, 3, 4, 5)
    return {"loss": split_loss_run(z, groups, 0.3),
            **{name: run_with_gradients_before_clipping(config) for name, config in MP_CONFIGS.items()}}


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_distributed(all_distributed_runs, world_size=2)


@pytest.mark.integration
def test_the_loss_on_two_ranks_is_the_loss_on_one(two_ranks):
    whole = split_loss_run(rand(8, 5, seed=6), ids(0, 1, 0, 1, 2, 3, 4, 5), 0.3)
    ranks_mean = sum(r["loss"]["loss"] for r in two_ranks) / 2
    assert_same(ranks_mean, whole["loss"], "mean of the ranks' losses")
    # gather_with_grad's backward sums the ranks' contributions; the DDP sync then divides by 2
    grads = torch.cat([r["loss"]["grad"] for r in two_ranks]) / 2
    assert_same(grads, whole["grad"], "gradient")


@pytest.mark.integration
@pytest.mark.parametrize("name", MP_CONFIGS)
def test_two_ranks_train_as_one_with_groups_across_ranks(two_ranks, name):
    single = run_with_gradients_before_clipping(MP_CONFIGS[name])
    plain = run_with_gradients_before_clipping({**MP_CONFIGS[name], "multi_positive": False})
    assert not torch.allclose(single[0]["loss"], plain[0]["loss"])  # the groups really changed the loss
    assert_ranks_ran_as_one([runs[name] for runs in two_ranks], single, name, assert_same)
