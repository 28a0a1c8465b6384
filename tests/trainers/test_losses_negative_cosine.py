"""BYOL / SimSiam's negative cosine similarity, and its stop-gradient."""
from __future__ import annotations

import pytest

from tests.trainers.loss_helpers import BATCHES, close, cos, rand
from trainers import losses


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
