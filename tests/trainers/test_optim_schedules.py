"""Optimizers (LARS excluding biases/norms, LR scaling) and per-step schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.optim import Lars

from tests.trainers.tiny import TINY_CONFIGS
from trainers.methods import build_method
from trainers.optim import OptimizerConfig, build_optimizer, learning_rate_schedule, scaled_learning_rate
from trainers.schedules import cosine_schedule, ema_momentum, ema_momentum_schedule, teacher_temperature_schedule


def test_learning_rate_scales_with_global_batch():
    assert scaled_learning_rate(0.3, 4096) == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(0.3)
    assert scaled_learning_rate(1e-3, 64, "none") == 1e-3


@pytest.mark.parametrize("name,cls", [("lars", Lars), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer_keeps_the_no_decay_group(name, cls):
    method = build_method(TINY_CONFIGS["simclr"], seed=0)
    optimizer = build_optimizer(OptimizerConfig(name=name, base_lr=0.2, weight_decay=1e-4), method.parameter_groups(1e-4), 512)
    assert isinstance(optimizer, cls)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]
    assert all(g["lr"] == pytest.approx(0.4) for g in optimizer.param_groups)


def test_lars_adapts_weights_but_not_biases_and_norms():
    weight = torch.nn.Parameter(torch.randn(8, 8) * 3)
    bias = torch.nn.Parameter(torch.randn(8))
    optimizer = build_optimizer(
        OptimizerConfig(name="lars", base_lr=0.1, lr_scaling="none", weight_decay=1e-4),
        [{"params": [weight], "weight_decay": 1e-4}, {"params": [bias], "weight_decay": 0.0}],
        256,
    )
    weight.grad, bias.grad = torch.ones_like(weight), torch.ones_like(bias)
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    optimizer.step()
    torch.testing.assert_close(b0 - bias.detach(), torch.full((8,), 0.1))  # plain SGD step
    plain = 0.1 * (weight.grad + 1e-4 * w0)
    assert not torch.allclose(w0 - weight.detach(), plain)  # trust ratio applied


def test_cosine_schedule_with_warmup():
    s = cosine_schedule(1.0, 0.1, total_steps=110, warmup_steps=10)
    assert len(s) == 110 and s[0] == 0.0 and s[10] == pytest.approx(1.0)
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 0)
    assert s[-1] == pytest.approx(0.1, abs=1e-3)
    lr = learning_rate_schedule(OptimizerConfig(base_lr=0.3, warmup_steps=5), 512, 50)
    assert lr.max() == pytest.approx(0.6) and lr[5] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=6)


def test_ema_momentum_rises_from_base_to_one_on_a_cosine():
    assert ema_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert ema_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert ema_momentum(0.996, 100, 100) == pytest.approx(1.0)
    s = ema_momentum_schedule(0.99, 100)
    assert np.all(np.diff(s) >= 0) and s[0] == pytest.approx(0.99)
    assert s[25] == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_teacher_temperature_warms_up_linearly_then_stays():
    s = teacher_temperature_schedule(0.04, 0.07, warmup_steps=4, total_steps=8)
    np.testing.assert_allclose(s, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07, 0.07])
