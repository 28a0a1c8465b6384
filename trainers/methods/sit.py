"""SiT (Atito, Awais, Kittler 2021, "SiT: Self-supervised vIsion Transformer", arXiv 2104.03602).

A ViT learns from corrupted crops: it reconstructs the clean crop from its patch tokens and
matches an EMA teacher, which sees the clean crops, with its class token. As the official code
Sara-Ahmed/SiT main.py (`train_SiT`, `train_one_epoch`, `SimCLR`, `FullPipline`):
- corruption: :mod:`trainers.methods.gmml` (GMML drop to zeros of 0.5 of a crop, or with
  probability 1/2 replacement of 0.3 of it from another sample's crop; `--drop_perc 0.5
  --drop_replace 0.3 --drop_align 1 --drop_type zeros`);
- student: ViT -> `CLSHead` on the class token (3 layers, 4096 hidden, BN, ReLU then GELU, 256
  out with a BN without affine: `--out_dim 256`) and `RECHead` on the patch tokens (3 x
  Linear + GELU at the ViT width, a ConvTranspose2d with kernel = stride = patch size back to
  pixels); drop-path 0.1 (`--drop_path_rate`), the teacher none (:func:`frozen_copy`);
- teacher: an EMA copy of ViT + CLSHead fed the clean crops, momentum 0.996 cosine to 1
  (`--momentum_teacher`);
- loss: `c_loss + lmbda * r_loss` (`--lmbda 1`; README: 5 on small datasets). c_loss is its
  `SimCLR` module: the student's corrupted view i against the teacher's clean view j != i,
  teacher keys gathered over ranks, T = 0.2 (`--simclr_temp`), scaled by 2T -- MoCo v3's loss
  (:func:`trainers.losses.moco_v3`); r_loss the L1 over corrupted pixels
  (:func:`trainers.losses.sit_reconstruction`);
- optimisation (configs/full/sit.yaml): AdamW, lr 5e-4 x batch / 256, 10 warm-up epochs, cosine
  to 1e-6, weight decay 0.04 -> 0.1 on every weight that is not a bias or 1-D (the ViT tokens
  decay: `utils.get_params_groups`), gradients clipped per parameter at 3.0
  (`utils.clip_gradients`, DINO's).

Rotation (`rotation_weight` > 0; default 0, the official main.py): the rotation-prediction task
of the paper's first version (arXiv 2104.03602 v1; its code is Sara-Ahmed/SiT at commit 1767b91,
2021-04-20): each view of a sample is turned by its own 0/90/180/270 degrees
(:mod:`trainers.methods.rotation`) BEFORE the corruption, so the corruption, its donors and the
reconstruction target are the turned crops (v1 rotates in `getItem`, then `distortImages`, and
reconstructs the rotated clean `imgs`); a learned rotation token (v1's `rot_token`, next to the
class token here) feeds a Linear(D, 4) `rot_head` with 4-way cross-entropy (:func:`trainers.losses.sit_rotation`);
the teacher sees the un-rotated clean crops. v1 has no teacher: its contrastive pair is the two
student views, each turned on its own, so the positive pair differs by a uniform quarter turn --
as here between a turned student view and an un-turned teacher view. Total loss
`c_loss + lmbda * r_loss + rotation_weight * rot_loss`, FIXED weights by default (they keep the
official current recipe's `lmbda` as it is); v1's code learns them instead (losses.py `MTL_loss`:
Kendall et al.'s uncertainty weighting, `adj * exp(-s) * L + s / 2` per task, s initialised to
1, adj 1/2 for the L1 term): `uncertainty_weighting: true`
(:func:`trainers.losses.uncertainty_weighted`, on the fixed-weighted losses: weights 1 are v1's).
What stays of the current recipe in the v1 variant: the EMA teacher and MoCo v3-style contrast
(v1: SimCLR's NT-Xent between the two student views), the GMML corruption (v1: noise, blur,
grey patches and pasted patches). Square crops only (a quarter turn of a non-square crop changes
the batch shape): others are refused.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from trainers.losses import moco_v3, sit_reconstruction, sit_rotation, uncertainty_weighted
from trainers.methods.base import Method, MethodConfig, SampleIds, frozen_copy, register_method
from trainers.methods.dino import DINO
from trainers.methods.gmml import GMMLSettings, apply_gmml, draw_gmml
from trainers.methods.rotation import draw_rotations, rotate
from trainers.schedules import ema_momentum
from groundfloor.errors import UsageError


class SiTConfig(MethodConfig):
    backbone_defaults = {"name": "vit_small", "drop_path_rate": 0.1}  # main.py --model vit_small --drop_path_rate 0.1

    name: Literal["sit"] = "sit"
    temperature: float = Field(0.2, gt=0, description="--simclr_temp")
    out_dim: int = Field(256, ge=1, description="--out_dim")
    head_hidden_dim: int = Field(4096, ge=1, description="CLSHead hidden_dim")
    head_layers: int = Field(3, ge=2, description="CLSHead nlayers")
    ema_momentum: float = Field(0.996, ge=0, le=1, description="--momentum_teacher, cosine to 1")
    reconstruction_weight: float = Field(1.0, ge=0, description="--lmbda (README: 5 on small datasets)")
    drop_fraction: float = Field(0.5, gt=0, le=1, description="--drop_perc: share of a crop dropped to zeros")
    replace_fraction: float = Field(0.3, gt=0, le=1, description="--drop_replace: share replaced from another sample")
    replace_probability: float = Field(0.5, ge=0, le=1, description="GMML_replace_list rep_drop")
    drop_align: int = Field(1, ge=1, description="--drop_align: rectangles on a grid of this many pixels")
    max_block_fraction: float = Field(0.3, gt=0, le=1, description="largest rectangle side / crop side")
    max_blocks: int = Field(128, ge=1, description="rectangles drawn per crop (bound of the official loop)")
    replace_group_size: int = Field(64, ge=1, description="donors come from groups of this many samples of a "
                                                          "rank's batch (official: the per-GPU batch, 64)")
    rotation_weight: float = Field(0.0, ge=0, description="arXiv v1 rotation task: weight of its 4-way "
                                                          "cross-entropy (0: off, as the official main.py)")
    uncertainty_weighting: bool = Field(False, description="v1's code: learned task weights exp(-s) (Kendall et "
                                                           "al.) on the (fixed-weighted) losses; off: fixed weights")


class SiTContrastiveHead(nn.Module):
    """SiT's `CLSHead` (vision_transformer.py): Linear-BN-ReLU, (Linear-BN-GELU) x (layers - 2),
    Linear-BN without affine; Linear weights trunc-normal(0.02), biases 0."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 4096, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            modules += [nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU()]
        modules += [nn.Linear(hidden_dim, out_dim), nn.BatchNorm1d(out_dim, affine=False)]
        self.mlp = nn.Sequential(*modules)
        _trunc_normal_linears(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class SiTReconstructionHead(nn.Module):
    """SiT's `RECHead`: 3 x (Linear + GELU) at the token width, then a ConvTranspose2d with
    kernel = stride = patch size from the token grid back to pixels."""

    def __init__(self, dim: int, patch_size: int, channels: int = 3) -> None:
        super().__init__()
        self.mlp = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(dim, dim), nn.GELU())])
        _trunc_normal_linears(self)
        self.to_pixels = nn.ConvTranspose2d(dim, channels, kernel_size=patch_size, stride=patch_size)

    def forward(self, patches: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.mlp(patches).transpose(1, 2)                     # (N, D, h*w)
        return self.to_pixels(x.unflatten(2, grid))               # (N, C, h*p, w*p)


def _vit_tokens_with(net: nn.Module, images: Tensor, token: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """timm ViT `forward_features` with one more learned token after the prefix (class) tokens:
    (features as `net(images)` reads them, patch tokens, the extra token), all after the final norm;
    `token` None: exactly `forward_tokens` (the test that this follows timm's forward).

    The token has no position embedding (as timm's register tokens): v1 gives its rotation token
    one, but a learned token plus a learned position is one learned token. It lives in the method,
    not the backbone, so the encoder that is exported and evaluated is the plain ViT.
    """
    x = net.patch_drop(net._pos_embed(net.patch_embed(images)))
    prefix = net.num_prefix_tokens
    if token is not None:
        x = torch.cat([x[:, :prefix], token.expand(x.shape[0], -1, -1), x[:, prefix:]], dim=1)
    x = net.norm(net.blocks(net.norm_pre(x)))
    extra = None
    if token is not None:
        extra = x[:, prefix]
        x = torch.cat([x[:, :prefix], x[:, prefix + 1:]], dim=1)
    return net.forward_head(x), x[:, prefix:], extra


def _trunc_normal_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


@register_method
class SiT(Method):
    name = "sit"
    config_class = SiTConfig
    needs_sample_ids = True

    def __init__(self, config: SiTConfig) -> None:
        super().__init__(config)
        self.require_vit_tokens("patch tokens to reconstruct from")
        self.gmml = GMMLSettings(config.drop_fraction, config.replace_fraction, config.replace_probability,
                                 config.drop_align, config.max_block_fraction, config.max_blocks,
                                 config.replace_group_size)
        self.head = SiTContrastiveHead(self.feature_dim, config.out_dim, config.head_hidden_dim, config.head_layers)
        self.reconstruction_head = SiTReconstructionHead(self.feature_dim, self.backbone.patch_size)
        if config.rotation_weight > 0:  # v1: `rot_token` -> Linear(D, 4) `rot_head` (vision_transformer_SiT.py)
            self.rotation_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, self.feature_dim), std=0.02))
            self.rotation_head = nn.Linear(self.feature_dim, 4)
            _trunc_normal_linears(self.rotation_head)
        if config.uncertainty_weighting:  # v1 `rot_w`, `contrastive_w`, `recons_w`: nn.Parameter(1.0) each
            self.task_log_variances = nn.Parameter(torch.ones(2 + (config.rotation_weight > 0)))
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)

    clip_gradients = DINO.clip_gradients  # utils.clip_gradients: per parameter, as DINO's

    def no_weight_decay_names(self) -> set[str]:
        # utils.get_params_groups: only biases and 1-D parameters skip weight decay; v1 kept its
        # rot_token out too (`no_weight_decay`)
        return {"rotation_token"} if self.config.rotation_weight > 0 else set()

    def training_step(self, views: list[Tensor], step: int, samples: SampleIds | None = None
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        self.check_views(views)
        if samples is None or len(samples.rows) != views[0].shape[0]:
            raise UsageError("sit draws its corruptions per sample: training_step needs samples=SampleIds "
                             "with one id per sample (the Trainer passes them)")
        cfg, patch = self.config, self.backbone.patch_size
        clean = torch.cat(views)                                    # view-major: view 1 of all, then view 2
        height, width = clean.shape[-2:]
        if height % patch or width % patch:
            raise UsageError(f"sit reconstructs whole patches: crops of {height}x{width} px are not a multiple "
                             f"of the patch size {patch}")
        target, logs = clean, {}
        if cfg.rotation_weight > 0:  # v1 getItem: each view turned on its own, before the corruption
            target, turns = rotate(clean, draw_rotations(samples.seed, samples.epoch, samples.rows, len(views)))
        table = draw_gmml(samples.seed, samples.epoch, samples.rows, len(views), height, width, self.gmml)
        corrupted, mask, short = apply_gmml(target, table, cfg.max_blocks)  # donors: rotated clean crops too
        with torch.no_grad():  # the teacher sees the un-rotated clean crops
            t1, t2 = self.teacher_head(self.teacher_backbone(clean)).chunk(2)
        if cfg.rotation_weight > 0:
            features, patches, token = _vit_tokens_with(self.backbone.net, corrupted, self.rotation_token)
        else:
            features, patches = self.backbone.forward_tokens(corrupted)
        s1, s2 = self.head(features).chunk(2)
        reconstruction = self.reconstruction_head(patches, (height // patch, width // patch))
        contrastive = moco_v3(s1, s2, t1, t2, cfg.temperature)
        rec_loss = sit_reconstruction(reconstruction, target, mask)  # the rotated clean crop
        parts = {"contrastive": (contrastive, 1.0), "reconstruction": (cfg.reconstruction_weight * rec_loss, 0.5)}
        if cfg.rotation_weight > 0:
            logits = self.rotation_head(token)
            rotation = sit_rotation(logits, turns)
            parts["rotation"] = (cfg.rotation_weight * rotation, 1.0)
            logs = {"rotation": rotation.detach(),
                    "rotation_accuracy": (logits.detach().argmax(dim=1) == turns).float().mean()}
        if cfg.uncertainty_weighting:  # v1 MTLLOSS: adj * exp(-s) * L + s / 2 (adj 1/2 for the L1 term)
            terms = list(parts.values())
            loss = uncertainty_weighted([t for t, _ in terms], self.task_log_variances, [a for _, a in terms])
            weights = torch.exp(-self.task_log_variances.detach())
            logs.update({f"{name}_learned_weight": weights[i] for i, name in enumerate(parts)})
        else:
            loss = sum(t for t, _ in parts.values())
        return loss, {"loss": loss.detach(), "contrastive": contrastive.detach(),
                      "reconstruction": rec_loss.detach(), "corruption_short": short, **logs}

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)]

    def momentum_at(self, step: int, total_steps: int) -> float:
        return ema_momentum(self.config.ema_momentum, step, total_steps)  # momentum_schedule[it]
