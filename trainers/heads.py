"""Projection and prediction heads, shaped as each paper's code builds them."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mlp", "simclr_projection_head", "DINOHead"]


def mlp(
    dims: list[int],
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_batch_norm_affine: bool = True,
    last_batch_norm_bias: bool = True,
    bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Linear layers through `dims` ([in, hidden..., out]) with BN + activation between them.

    Papers differ only in these switches: SimCLR/BYOL/SwAV: BN in hidden layers; MoCo v2: no BN;
    MoCo v3/SimSiam: also a BN after the last layer (without affine), linear layers without
    bias where followed by BN; SimCLR: a last BN with a scale but no shift
    (`last_batch_norm_bias=False`: its bias is frozen at zero, like TF's `center=False`).
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
            norm = nn.BatchNorm1d(d_out, affine=last_batch_norm_affine)
            if last_batch_norm_affine and not last_batch_norm_bias:
                norm.bias.requires_grad_(False)  # stays 0: BN without beta
            layers.append(norm)
    return nn.Sequential(*layers)


def simclr_projection_head(in_dim: int, out_dim: int = 128, num_layers: int = 3, hidden_dim: int | None = None) -> nn.Sequential:
    """SimCLR's projection head (google-research/simclr tf2/model.py `ProjectionHead`, lines 169-186).

    `num_layers` dense layers, each followed by BN; hidden layers are input-wide
    (`num_classes=lambda input_shape: int(input_shape[-1])`), BN with scale and shift, then ReLU;
    the output layer has no bias and a BN with scale but no shift (`LinearLayer(use_bias=False,
    use_bn=True)` -> `BatchNormRelu(relu=False, center=False)`); dense layers never have a bias
    when followed by BN (`use_bias=self.use_bias and not self.use_bn`).
    """
    hidden = hidden_dim or in_dim
    dims = [in_dim, *([hidden] * (num_layers - 1)), out_dim]
    return mlp(dims, last_batch_norm=True, last_batch_norm_affine=True, last_batch_norm_bias=False)


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
