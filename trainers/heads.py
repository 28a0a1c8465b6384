"""Projection and prediction heads, shaped as each paper's code builds them."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mlp", "DINOHead"]


def mlp(
    dims: list[int],
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_batch_norm_affine: bool = True,
    bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Linear layers through `dims` ([in, hidden..., out]) with BN + activation between them.

    Papers differ only in these switches: SimCLR/BYOL/SwAV: BN in hidden layers; MoCo v2: no BN;
    MoCo v3/SimSiam: also a BN after the last layer (without affine), linear layers without
    bias where followed by BN.
    """
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least [in, out] dims, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        followed_by_bn = batch_norm and (not last or last_batch_norm)
        layers.append(nn.Linear(d_in, d_out, bias=bias and not followed_by_bn))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(activation())
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=last_batch_norm_affine))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO's head: 3-layer GELU MLP to a bottleneck, l2-normalise, weight-normalised last layer.

    The last layer's weight norm is fixed to 1 (DINO's `norm_last_layer=True`), written as
    `normalize(v)` rows instead of torch's weight_norm parametrisation.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], batch_norm=False, activation=nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        nn.init.trunc_normal_(self.last_layer.weight, std=0.02)

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        weight = F.normalize(self.last_layer.weight, dim=1)
        if freeze_last_layer:
            weight = weight.detach()  # DINO cancels these gradients in the first epoch
        return F.linear(x, weight)
