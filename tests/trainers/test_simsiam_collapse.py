"""Acceptance 4: the SimSiam paper's collapse result (Chen & He 2021, Fig. 2), on Fashion-MNIST.

Without stop-gradient the per-dimension std of the l2-normalised output z/|z| falls toward 0
within ~100 steps; with it, it stays near 1/sqrt(d), the value of a spread-out output.
The projector's output BN is off in both runs: with it, train-mode BN keeps every dimension
standardised across the batch, which hides a collapse from this metric at small batch sizes.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainers.methods import build_method

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
DIM, STEPS, BATCH, PX = 64, 100, 64, 16


def fashion_images(n: int = 512) -> torch.Tensor:
    with gzip.open(FASHION) as f:
        f.read(16)
        raw = f.read(n * 28 * 28)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).float().view(n, 1, 28, 28) / 255.0


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip + brightness, batched through one affine grid."""
    n = x.shape[0]
    scale = 0.6 + 0.4 * torch.rand(n, generator=g)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=g) - 1)
    grid = F.affine_grid(theta, (n, 1, PX, PX), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False) * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g))
    return ((out - 0.3) / 0.35).expand(-1, 3, -1, -1)


def output_std_after_training(stop_gradient: bool) -> float:
    data, g = fashion_images(), torch.Generator().manual_seed(0)
    method = build_method(
        dict(name="simsiam", backbone={"name": "convnet", "width": 0.25}, projection_dim=DIM,
             prediction_hidden_dim=16, projection_output_batch_norm=False, stop_gradient=stop_gradient),
        seed=0,
    )
    optimizer = torch.optim.SGD(method.parameter_groups(1e-4), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x = data[torch.randint(0, len(data), (BATCH,), generator=g)]
        loss, _ = method.training_step([augment(x, g), augment(x, g)], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z = method.projector(method.backbone(augment(data[:256], g)))
    return F.normalize(z, dim=1).std(dim=0).mean().item()


@pytest.mark.integration
def test_simsiam_collapses_without_stop_gradient_and_not_with_it():
    spread = 1 / math.sqrt(DIM)
    with_sg, without_sg = output_std_after_training(True), output_std_after_training(False)
    assert with_sg > 0.6 * spread, f"with stop-gradient std {with_sg:.4f} vs 1/sqrt(d) {spread:.4f}"
    assert without_sg < 0.3 * spread, f"without stop-gradient std {without_sg:.4f} did not fall toward 0"
