"""CPC v2's InfoNCE over patch latents against a reference looped over every term (float64)."""
from __future__ import annotations

import math

import pytest

from tests.trainers.loss_helpers import close, rand
from trainers import losses


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
