"""Schedules as precomputed per-step arrays (DINO's `cosine_scheduler` style).

An array indexed by step is trivially resumable: the value at step s is a pure function of the
config, never of how many times a scheduler object was stepped.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "cosine_schedule",
    "ema_momentum",
    "ema_momentum_schedule",
    "teacher_temperature",
    "teacher_temperature_schedule",
]


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from `warmup_start_value` to `base_value`, then cosine to `final_value`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    warmup = np.linspace(warmup_start_value, base_value, warmup_steps, endpoint=False)
    decay_steps = total_steps - warmup_steps
    progress = np.arange(decay_steps) / max(decay_steps, 1)
    decay = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * progress))
    return np.concatenate([warmup, decay]).astype(np.float64)


def ema_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's cosine EMA momentum: `base` at step 0 rising to 1 at `total_steps`."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def ema_momentum_schedule(base: float, total_steps: int) -> np.ndarray:
    """:func:`ema_momentum` for every step, as an array."""
    return np.array([ema_momentum(base, s, total_steps) for s in range(total_steps)])


def teacher_temperature(warmup_temp: float, temp: float, warmup_steps: int, step: int) -> float:
    """DINO's teacher temperature: linear from `warmup_temp` to `temp` over `warmup_steps`."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return float(np.linspace(warmup_temp, temp, warmup_steps)[max(step, 0)])


def teacher_temperature_schedule(warmup_temp: float, temp: float, warmup_steps: int, total_steps: int) -> np.ndarray:
    """:func:`teacher_temperature` for every step, as an array."""
    return np.array([teacher_temperature(warmup_temp, temp, warmup_steps, s) for s in range(total_steps)])
