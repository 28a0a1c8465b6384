"""Projection and prediction heads, shaped as each paper's code builds them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mlp", "simclr_projection_head", "DINOHead", "IBOTHead"]


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


class IBOTHead(DINOHead):
    """iBOT's head (bytedance/ibot models/head.py `iBOTHead`): DINO's MLP shared by the [CLS]
    and the patch tokens, then a last layer for [CLS] and one for the patches (the same layer
    with `shared_head`, iBOT's `last_layer2 = self.last_layer`).

    `norm_last_layer=False` (the ViT-S recipe) makes the weight norm's scale `weight_g` a
    trained parameter: here `last_layer_scale` (out_dim, 1), initialised to 1 like
    `weight_g.data.fill_(1)`, 2-D so it is weight-decayed as in iBOT's `get_params_groups`,
    and named "last_layer*" so the first-epoch freeze covers it (`cancel_gradients_last_layer`).
    """

    def __init__(self, in_dim: int, out_dim: int, patch_out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 shared_head: bool = True, norm_last_layer: bool = True) -> None:
        super().__init__(in_dim, out_dim, hidden_dim, bottleneck_dim)
        if shared_head and patch_out_dim != out_dim:
            raise ValueError(f"a shared head has one output size: patch_out_dim={patch_out_dim} != out_dim={out_dim}")
        self.shared_head = shared_head
        self.last_layer_scale = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))
        self.last_layer2 = None
        self.last_layer2_scale = None
        if not shared_head:
            self.last_layer2 = nn.Linear(bottleneck_dim, patch_out_dim, bias=False)
            nn.init.trunc_normal_(self.last_layer2.weight, std=0.02)
            self.last_layer2_scale = None if norm_last_layer else nn.Parameter(torch.ones(patch_out_dim, 1))

    @staticmethod
    def _weight(weight: Tensor, scale: Tensor | None, freeze: bool) -> Tensor:
        weight = F.normalize(weight, dim=1)
        if scale is not None:
            weight = weight * scale
        return weight.detach() if freeze else weight

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:  # type: ignore[override]
        """[CLS] features (N, in_dim) -> (N, out_dim) logits (local crops: no patches)."""
        return F.linear(F.normalize(self.mlp(x), dim=-1),
                        self._weight(self.last_layer.weight, self.last_layer_scale, freeze_last_layer))

    def forward_tokens(self, cls: Tensor, patches: Tensor, freeze_last_layer: bool = False) -> tuple[Tensor, Tensor]:
        """([CLS] (N, in_dim), patches (N, L, in_dim)) -> ((N, out_dim), (N, L, patch_out_dim)), one MLP pass."""
        x = F.normalize(self.mlp(torch.cat([cls.unsqueeze(1), patches], dim=1)), dim=-1)
        w1 = self._weight(self.last_layer.weight, self.last_layer_scale, freeze_last_layer)
        if self.shared_head:
            out = F.linear(x, w1)
            return out[:, 0], out[:, 1:]
        w2 = self._weight(self.last_layer2.weight, self.last_layer2_scale, freeze_last_layer)
        return F.linear(x[:, 0], w1), F.linear(x[:, 1:], w2)
