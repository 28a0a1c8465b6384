"""iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"): DINO's [CLS]
self-distillation plus masked image modelling against the EMA teacher as an online tokenizer.

As bytedance/ibot main_ibot.py: the teacher (EMA, no drop-path) sees the unmasked global crops
and outputs [CLS] and patch distributions through one head; the student sees the global crops
with block-masked patch embeddings replaced by a learned mask token (models/vision_transformer.py
`masked_embed`, zeros, student only: the teacher is built without it and the EMA pairs only common
names) and the local crops unmasked ([CLS] only). Loss (`iBOTLoss`):
lambda1 * DINO's [CLS] cross-entropy over pairs of different crops (:func:`trainers.losses.dino`)
+ lambda2 * the patch cross-entropy of each global crop with itself on its masked patches
(:func:`trainers.losses.ibot_patch`); separate centres for [CLS] and patches, both all-reduced
EMAs (:func:`trainers.losses.ibot_center_update`, one collective); the [CLS] and the patch
teacher temperatures warm up linearly; everything else (EMA schedule, per-parameter clipping,
first-epoch last-layer freeze, weight decay on every 2-D weight including the mask token) is
DINO's, inherited from :class:`trainers.methods.dino.DINO`.

main_ibot.py arguments and our fields: --out_dim 8192 (`out_dim`), --patch_out_dim 8192
(`patch_out_dim`), --shared_head (`shared_head`; the ViT-S recipe sets true: one last layer,
then out_dim == patch_out_dim), --norm_last_layer (`norm_last_layer`), --teacher_temp /
--warmup_teacher_temp (`teacher_temperature`, `warmup_teacher_temperature`),
--teacher_patch_temp 0.07 / --warmup_teacher_patch_temp 0.04, --warmup_teacher_temp_epochs 30
(one warm-up length for both, in steps here), --lambda1 / --lambda2 1.0
(`cls_loss_weight`, `patch_loss_weight`), --pred_ratio / --pred_ratio_var (`mask_ratios`: the
(low, high) ranges, one chosen per crop; README ViT-S: `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`
= unmasked or U(0.1, 0.5), i.e. mask probability 0.5), pred_aspect_ratio (0.3, 1/0.3)
(`mask_aspect_ratio`), --pred_shape block (the only shape here), --pred_start_epoch 0.

Masks are a pure function of (seed, epoch, sample row, crop) (:mod:`trainers.methods.masks`),
drawn on the host from the batch's `SampleIds` and copied to the device from pinned memory
without a host sync, so N ranks x B equals 1 rank x N*B and a resume replays them.
Deviations: temperatures warm up per step (official: per epoch, as our DINO); with
`shared_head: false` the teacher's patch layer is the EMA of the student's (official default
`--shared_head_teacher true` gives the teacher a shared head even then); the last layers are
`normalize(v) * g` instead of torch's weight_norm (the same function).
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from trainers import distributed
from trainers.heads import IBOTHead
from trainers.losses import dino, ibot_center_update, ibot_patch
from trainers.methods.base import Method, SampleIds, frozen_copy, register_method
from trainers.methods.dino import DINO, DINOConfig
from trainers.methods.masks import block_masks
from trainers.schedules import teacher_temperature
from groundfloor.errors import UsageError


class IBOTConfig(DINOConfig):
    name: Literal["ibot"] = "ibot"  # type: ignore[assignment]
    out_dim: int = Field(8192, ge=1, description="--out_dim: [CLS] prototypes")
    patch_out_dim: int = Field(8192, ge=1, description="--patch_out_dim: patch prototypes (== out_dim with shared_head)")
    shared_head: bool = Field(True, description="--shared_head: one last layer for [CLS] and patches")
    norm_last_layer: bool = Field(True, description="--norm_last_layer: weight-norm scale fixed at 1")
    teacher_patch_temperature: float = Field(0.07, gt=0, description="--teacher_patch_temp")
    warmup_teacher_patch_temperature: float = Field(0.04, gt=0, description="--warmup_teacher_patch_temp")
    cls_loss_weight: float = Field(1.0, ge=0, description="--lambda1")
    patch_loss_weight: float = Field(1.0, ge=0, description="--lambda2")
    patch_center_momentum: float = Field(0.9, ge=0, le=1, description="iBOTLoss center_momentum2")
    mask_ratios: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.0, 0.0), (0.1, 0.5)],
        description="(low, high) masked fractions; one range is chosen per crop (--pred_ratio +- --pred_ratio_var)")
    mask_aspect_ratio: tuple[float, float] = Field((0.3, 1 / 0.3), description="pred_aspect_ratio of the blocks")

    @field_validator("mask_ratios")
    @classmethod
    def _ratios_in_range(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if not value:
            raise ValueError("mask_ratios needs at least one (low, high) range")
        for lo, hi in value:
            if not 0.0 <= lo <= hi < 1.0:
                raise ValueError(f"mask_ratios range ({lo}, {hi}): expected 0 <= low <= high < 1")
        return value

    @model_validator(mode="after")
    def _shared_head_sizes(self) -> "IBOTConfig":
        if self.shared_head and self.patch_out_dim != self.out_dim:
            raise ValueError(f"shared_head: patch_out_dim={self.patch_out_dim} must equal out_dim={self.out_dim} "
                             "(one last layer); set shared_head: false for separate sizes")
        if not 0 < self.mask_aspect_ratio[0] <= self.mask_aspect_ratio[1]:
            raise ValueError(f"mask_aspect_ratio={self.mask_aspect_ratio}: expected 0 < low <= high")
        return self


@register_method
class IBOT(DINO):
    name = "ibot"
    config_class = IBOTConfig
    needs_sample_ids = True

    def __init__(self, config: IBOTConfig) -> None:
        Method.__init__(self, config)  # DINO's head is replaced by iBOT's
        self.require_vit_tokens("patch tokens and a masked forward")
        self.head = IBOTHead(self.feature_dim, config.out_dim, config.patch_out_dim, config.hidden_dim,
                             config.bottleneck_dim, shared_head=config.shared_head,
                             norm_last_layer=config.norm_last_layer)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.mask_token = nn.Parameter(torch.zeros(1, self.feature_dim))
        self.register_buffer("center", torch.zeros(1, config.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, config.patch_out_dim))

    def masks(self, samples: Optional[SampleIds], batch: int, grid: tuple[int, int], device: torch.device) -> list[Tensor]:
        """One (B, h, w) bool mask per global crop, on `device` (host draw, pinned copy, no sync).

        Without `samples` (callers that feed tensors, not loader batches) the rows are this
        rank's slice of a contiguous global batch and the epoch is 0.
        """
        cfg = self.config
        if samples is None:
            samples = SampleIds(0, 0, np.arange(batch, dtype=np.int64) + distributed.rank() * batch)
        if len(samples.rows) != batch:
            raise UsageError(f"ibot: {len(samples.rows)} sample ids for a batch of {batch}")
        host = torch.from_numpy(np.stack([
            block_masks(samples.seed, samples.epoch, samples.rows, view, grid, cfg.mask_ratios, cfg.mask_aspect_ratio)
            for view in range(cfg.num_global_views)]))
        if device.type == "cuda":
            host = host.pin_memory()
        return list(host.to(device, non_blocking=True).unbind(0))

    def training_step(self, views: list[Tensor], step: int, samples: Optional[SampleIds] = None
                      ) -> tuple[Tensor, dict[str, Tensor | float]]:
        self.check_views(views)
        cfg = self.config
        n_global = cfg.num_global_views
        batch, size = views[0].shape[0], views[0].shape[-2:]
        patch = self.backbone.patch_size
        grid = (size[0] // patch, size[1] // patch)
        masks = self.masks(samples, batch, grid, views[0].device)
        freeze = step < cfg.freeze_last_layer_steps
        with torch.no_grad():
            t_cls, t_patch = self.teacher_head.forward_tokens(*self.teacher_backbone.forward_tokens(torch.cat(views[:n_global])))
        s_cls, s_patch = self.head.forward_tokens(
            *self.backbone.forward_tokens(torch.cat(views[:n_global]), torch.cat(masks), self.mask_token), freeze_last_layer=freeze)
        student_cls = list(s_cls.chunk(n_global))
        if len(views) > n_global:
            student_cls += list(self.head(self.encode_multicrop(self.backbone, views[n_global:]),
                                          freeze_last_layer=freeze).chunk(len(views) - n_global))
        teacher_cls, teacher_patch = list(t_cls.chunk(n_global)), list(t_patch.chunk(n_global))
        temp = teacher_temperature(cfg.warmup_teacher_temperature, cfg.teacher_temperature,
                                   cfg.teacher_temperature_warmup_steps, step)
        patch_temp = teacher_temperature(cfg.warmup_teacher_patch_temperature, cfg.teacher_patch_temperature,
                                         cfg.teacher_temperature_warmup_steps, step)
        cls_loss = dino(student_cls, teacher_cls, self.center, cfg.student_temperature, temp)
        patch_loss = ibot_patch(list(s_patch.chunk(n_global)), teacher_patch, masks, self.patch_center,
                                cfg.student_temperature, patch_temp)
        loss = cfg.cls_loss_weight * cls_loss + cfg.patch_loss_weight * patch_loss
        center, patch_center = ibot_center_update(teacher_cls, teacher_patch, self.center, self.patch_center,
                                                  cfg.center_momentum, cfg.patch_center_momentum)
        self.center.copy_(center)
        self.patch_center.copy_(patch_center)
        masked = torch.stack(masks).float().mean()
        return loss, {"loss": loss.detach(), "cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach(),
                      "masked_fraction": masked, "teacher_temperature": temp, "teacher_patch_temperature": patch_temp}
