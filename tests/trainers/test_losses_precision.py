"""Statistics under CPU bf16 autocast equal their fp32 computation (float64 references): the
helper `trainers.precision.fp32_statistics` keeps centres, Sinkhorn, Barlow Twins, VICReg and
CPC's logits out of half precision. Inputs are bf16 values (what autocast hands a loss), so the
fp32 computation of them is exact up to fp32 rounding, while a bf16 computation is ~1e-2 off."""
from __future__ import annotations

import pytest
import torch

from trainers import losses


def bf16(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(torch.bfloat16)


def under_autocast(fn, *args, **kwargs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(*args, **kwargs)


def as64(value):
    if isinstance(value, torch.Tensor):
        return value.double()
    if isinstance(value, (list, tuple)):
        return type(value)(as64(v) for v in value)
    return value


CASES = {
    "dino_center_update": (losses.dino_center_update, lambda: ([bf16(64, 256, seed=1) * 30, bf16(64, 256, seed=2)],
                                                               torch.zeros(1, 256)), {"momentum": 0.9}),
    "sinkhorn": (losses.sinkhorn, lambda: (bf16(96, 300, seed=3) * 0.3,), {"epsilon": 0.05}),
    "barlow_twins": (losses.barlow_twins, lambda: (bf16(128, 64, seed=4), bf16(128, 64, seed=5)), {}),
    "vicreg": (losses.vicreg, lambda: (bf16(128, 64, seed=6) + 3, bf16(128, 64, seed=7) + 3), {}),
    "cpc_infonce": (losses.cpc_infonce, lambda: (bf16(4, 5, 5, 32, seed=8) * 2, [bf16(4, 3, 5, 32, seed=9) * 2],
                                                 [2]), {}),
}


@pytest.mark.parametrize("name", CASES)
def test_statistics_under_bf16_autocast_match_a_float64_reference(name):
    fn, make, kwargs = CASES[name]
    args = make()
    got = under_autocast(fn, *args, **kwargs)
    expected = fn(*as64(args), **kwargs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)


def test_ibot_centres_under_bf16_autocast_match_a_float64_reference():
    cls, patch = [bf16(32, 128, seed=10) * 20], [bf16(32, 49, 96, seed=11) * 20]
    centres = (torch.zeros(1, 128), torch.zeros(1, 96))
    got = under_autocast(losses.ibot_center_update, cls, patch, *centres)
    expected = losses.ibot_center_update(as64(cls), as64(patch), *(c.double() for c in centres))
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=2e-5)


def test_gradients_reach_half_precision_inputs():
    z1 = bf16(32, 16, seed=12).requires_grad_()
    z2 = bf16(32, 16, seed=13).requires_grad_()
    under_autocast(losses.barlow_twins, z1, z2).backward()
    assert z1.grad is not None and z1.grad.dtype == torch.bfloat16 and torch.isfinite(z1.grad).all()


def test_a_half_precision_computation_would_fail_these_tolerances():
    """The check has teeth: Barlow Twins' cross-correlation formed in bf16 is far off."""
    z1, z2 = bf16(128, 64, seed=4), bf16(128, 64, seed=5)
    exact = losses.barlow_twins(z1.double(), z2.double())
    half = losses.barlow_twins.__wrapped__(z1, z2)  # the unwrapped loss, all in bf16
    assert (half.double() - exact).abs() > 2e-5 * exact.abs() + 2e-5
