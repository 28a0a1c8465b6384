"""Shared by the loss tests (tests/trainers/test_losses_*.py): float64 inputs and exact comparisons."""
from __future__ import annotations

import torch

BATCHES = [1, 3, 8]
TEMPERATURES = [0.07, 0.2, 0.5, 1.0]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor | float) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=1e-6, rtol=1e-6)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))
