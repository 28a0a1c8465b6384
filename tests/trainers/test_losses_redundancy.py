"""Redundancy-reduction losses (Barlow Twins, VICReg) against references looped over samples and
dimensions as the papers write them (float64).
"""
from __future__ import annotations

import math

import pytest

from tests.trainers.loss_helpers import close, rand
from trainers import losses


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
