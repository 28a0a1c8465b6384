"""Optimizers (LARS excluding biases/norms, LR scaling) and per-step schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.trainers.tiny import TINY_CONFIGS
from trainers.methods import build_method
from trainers.optim import (
    LARS,
    OptimizerConfig,
    build_optimizer,
    learning_rate_schedule,
    optimizer_schedule,
    scaled_learning_rate,
)
from trainers.schedules import cosine_schedule, ema_momentum, ema_momentum_schedule, teacher_temperature_schedule


def test_learning_rate_scales_with_global_batch():
    assert scaled_learning_rate(0.3, 4096) == pytest.approx(4.8)
    assert scaled_learning_rate(0.075, 4096, "sqrt") == pytest.approx(0.3)
    assert scaled_learning_rate(1e-3, 64, "none") == 1e-3


@pytest.mark.parametrize("name,cls", [("lars", LARS), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
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


def _moco_v3_lars_reference(params, grads_per_step, lr, wd, momentum=0.9, eta=0.001, adapt=True):
    """facebookresearch/moco-v3 moco/optimizer.py LARS.step (lines 19-43), `p.ndim > 1` replaced by `adapt`."""
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for p, dp, mu in zip(params, grads, mus):
            if adapt:
                dp = dp.add(p, alpha=wd)
                param_norm, update_norm = torch.norm(p), torch.norm(dp)
                one = torch.ones_like(param_norm)
                q = torch.where(param_norm > 0., torch.where(update_norm > 0, eta * param_norm / update_norm, one), one)
                dp = dp.mul(q)
            mu.mul_(momentum).add_(dp)
            p.add_(mu, alpha=-lr)
    return params


def test_lars_matches_moco_v3_lars_over_steps():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    grads = [[torch.randn(16, 8)] for _ in range(4)]
    expected = _moco_v3_lars_reference([w.detach()], grads, lr=0.5, wd=1e-6)
    optimizer = LARS([{"params": [w], "weight_decay": 1e-6, "lars_adaptation": True}], lr=0.5)
    for (g,) in grads:
        w.grad = g.clone()
        optimizer.step()
    torch.testing.assert_close(w.detach(), expected[0])


def test_lars_adaptation_is_independent_of_weight_decay():
    """The bug in timm's Lars (adapts only when weight_decay != 0): here the flag alone decides."""
    torch.manual_seed(1)
    w0 = torch.randn(8, 8) * 3
    g = torch.ones(8, 8)
    moved = {}
    for wd, adapt in ((0.0, True), (1e-6, True), (0.0, False), (1e-3, False)):
        w = torch.nn.Parameter(w0.clone())
        w.grad = g.clone()
        LARS([{"params": [w], "weight_decay": wd, "lars_adaptation": adapt}], lr=4.8).step()
        moved[wd, adapt] = (w0 - w.detach()).abs().mean().item()
    # adapted: ~ lr * eta * |w| / |g| per element, the same with or without weight decay
    assert moved[0.0, True] == pytest.approx(4.8 * 0.001 * w0.norm().item() / 8, rel=1e-4)
    assert moved[1e-6, True] == pytest.approx(moved[0.0, True], rel=1e-3)
    assert moved[0.0, False] == pytest.approx(4.8)  # plain SGD
    w = torch.nn.Parameter(w0.clone())
    w.grad = g.clone()
    LARS([{"params": [w], "weight_decay": 1e-3, "lars_adaptation": False}], lr=0.1).step()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * (g + 1e-3 * w0))  # decayed, not adapted


def test_larc_ratio_is_apex_larcs():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(8, 8))
    w0, g = w.detach().clone(), torch.randn(8, 8)
    w.grad = g.clone()
    LARS([{"params": [w], "weight_decay": 1e-2, "lars_adaptation": True}], lr=1.0, larc=True).step()
    # apex/parallel/LARC.py (clip=False): adaptive_lr = eta * |w| / (|g| + wd * |w| + eps); g = (g + wd w) * adaptive_lr
    ratio = 0.001 * w0.norm() / (g.norm() + 1e-2 * w0.norm() + 1e-8)
    torch.testing.assert_close(w.detach(), w0 - (g + 1e-2 * w0) * ratio)


def test_config_switches_decay_and_adaptation_of_norms_and_biases():
    method = build_method(TINY_CONFIGS["simclr"], seed=0)
    groups = method.parameter_groups(1e-6)
    default = build_optimizer(OptimizerConfig(weight_decay=1e-6), groups, 256)
    assert [(g["weight_decay"], g["lars_adaptation"]) for g in default.param_groups] == [(1e-6, True), (0.0, False)]
    decay_all = build_optimizer(OptimizerConfig(weight_decay=1e-6, weight_decay_on_all_parameters=True), groups, 256)
    assert [(g["weight_decay"], g["lars_adaptation"]) for g in decay_all.param_groups] == [(1e-6, True), (1e-6, False)]
    everything = build_optimizer(OptimizerConfig(weight_decay=1e-6, weight_decay_on_all_parameters=True,
                                                 lars_adaptation_on_all_parameters=True), groups, 256)
    assert [(g["weight_decay"], g["lars_adaptation"]) for g in everything.param_groups] == [(1e-6, True), (1e-6, True)]
    with pytest.raises(ValueError, match="lars_adaptation_on_all_parameters needs name: lars"):
        OptimizerConfig(name="sgd", lars_adaptation_on_all_parameters=True)


def test_per_group_schedules_fixed_lr_and_cosine_weight_decay():
    method = build_method(TINY_CONFIGS["simsiam"], seed=0)
    config = OptimizerConfig(name="sgd", base_lr=0.05, warmup_steps=10, weight_decay=0.04, final_weight_decay=0.4)
    optimizer = build_optimizer(config, method.parameter_groups(config.weight_decay), 512)
    schedule = optimizer_schedule(config, 512, 100)
    predictor = {id(p) for p in method.predictor.parameters()}
    seen = []
    for step in (0, 10, 55, 99):
        schedule.apply(optimizer, step)
        for g in optimizer.param_groups:
            in_predictor = {id(p) for p in g["params"]} <= predictor
            assert g["lr"] == pytest.approx(0.1 if in_predictor else schedule.lr[step])
            assert g["weight_decay"] == (0.0 if g["norm_or_bias"] else pytest.approx(schedule.weight_decay[step]))
        seen.append(schedule[step])
    assert seen[0] == 0.0 and seen[1] == pytest.approx(0.1) and seen[3] < 1e-3
    assert schedule.weight_decay[0] == pytest.approx(0.04) and schedule.weight_decay[-1] == pytest.approx(0.4, abs=1e-4)
    assert np.all(np.diff(schedule.weight_decay) >= 0)
    assert len(schedule) == 100 and float(learning_rate_schedule(config, 512, 100)[10]) == schedule[10]


def test_warmup_starts_from_warmup_start_lr():
    lr = learning_rate_schedule(OptimizerConfig(base_lr=4.8, lr_scaling="none", warmup_steps=10, warmup_start_lr=0.3,
                                                final_lr=0.0048), 4096, 100)
    assert lr[0] == pytest.approx(0.3) and lr[10] == pytest.approx(4.8) and lr[-1] == pytest.approx(0.0048, abs=2e-3)


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


def test_lars_resumes_from_a_timm_lars_checkpoint():
    """Runs checkpointed before this LARS (timm's Lars) resume with timm's semantics."""
    import copy

    from timm.optim import Lars

    torch.manual_seed(3)
    w, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))
    old = Lars([{"params": [w], "weight_decay": 1e-6}, {"params": [b], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    w.grad, b.grad = torch.randn(4, 4), torch.randn(4)
    old.step()
    saved, w1, b1 = copy.deepcopy(old.state_dict()), w.detach().clone(), b.detach().clone()
    g2w, g2b = torch.randn(4, 4), torch.randn(4)
    w.grad, b.grad = g2w.clone(), g2b.clone()
    old.step()
    expected_w, expected_b = w.detach().clone(), b.detach().clone()

    with torch.no_grad():
        w.copy_(w1), b.copy_(b1)
    new = LARS([{"params": [w]}, {"params": [b]}], lr=0.5)
    new.load_state_dict(saved)
    assert [g["lars_adaptation"] for g in new.param_groups] == [True, False]
    assert new.param_groups[0]["trust_coefficient"] == 0.001 and new.param_groups[0]["lr"] == 0.1
    w.grad, b.grad = g2w.clone(), g2b.clone()
    new.step()
    torch.testing.assert_close(b.detach(), expected_b)  # plain SGD with momentum, as timm
    torch.testing.assert_close(w.detach(), expected_w, rtol=1e-5, atol=1e-6)  # timm's ratio differs by O(wd)


def test_bias_norm_lr_scale_scales_the_whole_schedule_of_biases_and_norms_only():
    """barlowtwins main.py adjust_learning_rate: param_groups[0] lr x 0.2 (weights), [1] lr x 0.0048 (ndim == 1)."""
    method = build_method(TINY_CONFIGS["barlow_twins"], seed=0)
    config = OptimizerConfig(base_lr=0.2, final_lr=0.0016, warmup_steps=10, weight_decay=1.5e-6,
                             bias_norm_lr_scale=0.0048 / 0.2)
    optimizer = build_optimizer(config, method.parameter_groups(config.weight_decay), 2048)
    schedule = optimizer_schedule(config, 2048, 100)
    assert [g["lr_scale"] for g in optimizer.param_groups if g["norm_or_bias"]] == [pytest.approx(0.024)]
    assert {g["lr_scale"] for g in optimizer.param_groups if not g["norm_or_bias"]} == {1.0}
    for step in (0, 5, 10, 99):
        schedule.apply(optimizer, step)
        base = 2048 / 256 * (step / 10 if step < 10 else 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 90)))
        for g in optimizer.param_groups:
            official = base * (0.0048 if g["norm_or_bias"] else 0.2)
            assert g["lr"] == pytest.approx(official, rel=1e-9, abs=1e-15), (step, g["norm_or_bias"])
    default = build_optimizer(OptimizerConfig(), method.parameter_groups(1e-6), 256)
    assert all(g["lr_scale"] == 1.0 for g in default.param_groups)  # every other recipe: unchanged


def test_bias_norm_lr_scale_survives_a_checkpoint_resume(tmp_path):
    """Through the real Trainer: the restored optimizer's groups keep their scale and LR."""
    from tests.trainers.tiny import make_trainer, make_views, view_batch

    config = TINY_CONFIGS["barlow_twins"]
    optimizer = {"name": "lars", "base_lr": 0.5, "reference_batch_size": 8, "warmup_steps": 1, "weight_decay": 1e-4,
                 "bias_norm_lr_scale": 0.024}
    views = make_views(config, 4, seed=3)
    trainer = make_trainer(config, 4, optimizer=optimizer)
    for step in range(2):
        trainer.train_step(view_batch(views[step], step))
    trainer.save(str(tmp_path))
    trainer.train_step(view_batch(views[2], 2))
    expected = [(g["lr_scale"], g["lr"]) for g in trainer.optimizer.param_groups]

    resumed = make_trainer(config, 4, optimizer=dict(optimizer, bias_norm_lr_scale=1.0))  # the checkpoint decides
    resumed.restore(str(tmp_path))
    resumed.train_step(view_batch(views[2], 2))
    got = [(g["lr_scale"], g["lr"]) for g in resumed.optimizer.param_groups]
    assert got == expected
    lr = float(trainer.lr[2])
    assert sorted(expected) == [(pytest.approx(0.024), pytest.approx(0.024 * lr)), (1.0, pytest.approx(lr))]
