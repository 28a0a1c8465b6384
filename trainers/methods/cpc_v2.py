"""CPC v2 (Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive Coding").

Each image is cut into a grid of overlapping patches; every patch is encoded on its own by the
backbone (mean-pooled to one vector z_ij); a masked-convolution context network over the grid
gives context vectors c_ij that see only rows <= i (PixelCNN-style: padding above, none below);
a linear map W_k per offset predicts z_{i+k,j} = W_k c_ij, scored against every patch latent of
the global batch with InfoNCE (:func:`trainers.losses.cpc_infonce`, negatives gathered across
ranks with gradient). With `bidirectional`, a second context network and its own W_k run on
the grid flipped upside down and predict rows above ("predicting lengths and directions").
Two departures from the appendix A.2 pseudo-code of arXiv v2 (as public transcriptions give it): its
masked step is a 1x3 then a 2x1 convolution on a map padded one row above (2 rows x 3 columns;
ours is `context_kernel` rows and columns), and it scores 64-d 1x1 projections of the latents
against 64-d predictions scaled by 0.1 (ours: W_k to the full latent width, raw latents as targets).

The backbone uses layer norm (`backbone.norm: layer`, GroupNorm(1, C), the default here), as
the paper replaces batch norm: BN statistics would let patches of one image see each other.
So there is no BatchNorm to convert and no SyncBatchNorm in this method.

Why patches are cut here, on the device, and not by the pipeline: the pipeline's contract is
views (B, 3, H, W) (pipeline/batch.py); `Tensor.unfold` cuts the grid of a whole batch in one
view-only op where the views already are, so nothing changes in the DALI graph. The views' own
augmentation (crop, flip, jitter, grey, blur) applies to the whole image. Of the paper's
per-patch augmentation, colour dropping (keep one random channel of a patch, the others set to
the normalised mean 0) and horizontal flips are done here, each with its probability, on the
device: the draws for the GLOBAL batch come from a generator seeded by (patch_augment_seed,
step) on the batch's device, and each rank takes its rows (rank * B ...), so they are a pure
function of (seed, step, position in the global batch): a resumed run and N ranks x B draw
exactly what one run / one rank x N*B draws, with no host traffic. (`training_step` gets no
sample ids, so the draws follow the batch position, not the sample; with gradient accumulation
the micro-batches of one step repeat one draw.) Per-patch random crops are left out.

The two global views the pipeline makes per sample are two CPC images: each view's loss takes
its negatives from the same view of every sample (so the other crop of the same photo is never
a negative), and the loss is the mean of the two. `use_both_views: false` uses the first only.

Evaluation (`eval_backbone`) cuts a whole eval image into the same grid and returns the mean of
the patch vectors (the paper's linear protocol pools the patch features of the encoder).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from trainers import distributed
from trainers.backbones.base import Backbone
from trainers.losses import cpc_infonce
from trainers.methods.base import Method, MethodConfig, register_method
from groundfloor.errors import UsageError


class CPCV2Config(MethodConfig):
    backbone_defaults = {"norm": "layer"}  # the paper's layer norm instead of batch norm

    name: Literal["cpc_v2"] = "cpc_v2"
    patch_size: int = Field(64, ge=4, description="square patch side in pixels")
    patch_stride: int = Field(32, ge=1, description="pixels between patch origins (< patch_size: overlapping)")
    min_offset: int = Field(1, ge=1, description="predict the rows min_offset..max_offset below each context row")
    max_offset: int = Field(3, ge=1)
    bidirectional: bool = Field(False, description="also predict rows above, with a second context network")
    context_blocks: int = Field(2, ge=0, description="residual blocks of the masked-convolution context network")
    context_hidden_dim: int | None = Field(None, ge=1, description="bottleneck width (default: feature_dim / 4)")
    context_kernel: int = Field(3, ge=1, description="rows and columns each masked convolution sees (odd)")
    use_both_views: bool = Field(True, description="both global views are CPC images (false: the first only)")
    patch_color_drop_p: float = Field(0.0, ge=0, le=1, description="per patch: keep one random channel, zero the others")
    patch_flip_p: float = Field(0.0, ge=0, le=1, description="per patch: horizontal flip")
    patch_augment_seed: int = Field(0, ge=0, description="seeds the per-patch draws with the step")

    @model_validator(mode="after")
    def _check_grid(self) -> "CPCV2Config":
        if self.min_offset > self.max_offset:
            raise ValueError(f"min_offset={self.min_offset} > max_offset={self.max_offset}")
        if self.context_kernel % 2 == 0:
            raise ValueError(f"context_kernel={self.context_kernel} must be odd (centred on the column)")
        if self.backbone.norm == "batch" and self.backbone.name in ("convnet", "resnet18", "resnet50"):
            raise ValueError("backbone.norm=batch: CPC v2 uses layer norm (batch statistics leak between patches)")
        return self


    def check_view_sizes(self, global_sizes: list[int]) -> None:
        for size in global_sizes:
            rows = (size - self.patch_size) // self.patch_stride + 1 if size >= self.patch_size else 0
            if rows <= self.max_offset:
                raise UsageError(f"{size} px views give a grid of {rows} rows of {self.patch_size} px patches "
                                 f"(stride {self.patch_stride}); max_offset={self.max_offset} needs more")


def patch_grid(images: Tensor, patch: int, stride: int) -> Tensor:
    """(B, 3, S, S) images -> (B, rows, cols, 3, patch, patch) overlapping patches (a view, no copy)."""
    if images.shape[-1] < patch or images.shape[-2] < patch:
        raise UsageError(f"images of {tuple(images.shape[-2:])} px are smaller than patch_size={patch}")
    return images.unfold(2, patch, stride).unfold(3, patch, stride).permute(0, 2, 3, 1, 4, 5)


class PatchGridBackbone(Backbone):
    """A backbone applied to every patch of an image grid; forward gives the mean patch vector.

    Holds the method's backbone (shared parameters, not a copy). The inner module is called
    `encoder`, not `net`, so `viewstream export` refuses it rather than exporting a network that
    expects patches as if it took whole images.
    """

    family = "patch_grid"

    def __init__(self, encoder: nn.Module, patch: int, stride: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch, self.stride = patch, stride
        self.feature_dim = encoder.feature_dim

    def grid(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, rows, cols, D): every patch through the encoder in one batch."""
        return self.encode(patch_grid(images, self.patch, self.stride),
                           channels_last=images.is_contiguous(memory_format=torch.channels_last))

    def encode(self, patches: Tensor, channels_last: bool = False) -> Tensor:
        """(B, rows, cols, 3, P, P) patches -> (B, rows, cols, D)."""
        batch, rows, cols = patches.shape[:3]
        flat = patches.reshape(batch * rows * cols, *patches.shape[3:])  # one copy of the overlapping patches
        if channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)  # the runner's NHWC views stay NHWC
        return self.encoder(flat).view(batch, rows, cols, -1)

    def forward(self, images: Tensor) -> Tensor:
        return self.grid(images).mean(dim=(1, 2))


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution whose output row i sees input rows i-k+1..i only (padding above, none below).

    Stacked, the receptive field of row i stays in rows <= i: the PixelCNN constraint CPC needs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=kernel, padding=0)
        self._pad = (kernel // 2, kernel // 2, kernel - 1, 0)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self._pad))


class ContextBlock(nn.Module):
    """Bottleneck residual block: 1x1 -> masked k x k -> 1x1, ReLU before each (no norm: no leaks)."""

    def __init__(self, dim: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(dim, hidden, 1)
        self.masked = MaskedConv2d(hidden, hidden, kernel)
        self.expand = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(F.relu(self.masked(F.relu(self.reduce(F.relu(x))))))


class ContextNetwork(nn.Module):
    """Latent grid (B, D, H, W) -> context grid (B, D, H, W), row i seeing rows <= i; then W_k."""

    def __init__(self, dim: int, hidden: int, kernel: int, blocks: int, offsets: list[int]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ContextBlock(dim, hidden, kernel) for _ in range(blocks)])
        self.offsets = offsets
        self.predictors = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in offsets])  # W_k

    def forward(self, latents: Tensor) -> list[Tensor]:
        """(B, H, W, D) latents -> predictions of latents[:, k:] for each offset k, each (B, H-k, W, D)."""
        rows = latents.shape[1]
        # contiguous NCHW: a permuted (NHWC-strided) input gives the 1x1 convs NHWC-strided weight
        # gradients, which DDP's buckets (laid out like the parameters) must copy, with a warning
        context = self.blocks(latents.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        return [w(context[:, : rows - k]) for k, w in zip(self.offsets, self.predictors)]


@register_method
class CPCV2(Method):
    name = "cpc_v2"
    config_class = CPCV2Config

    def __init__(self, config: CPCV2Config) -> None:
        super().__init__(config)
        dim = self.feature_dim
        hidden = config.context_hidden_dim or max(1, dim // 4)
        offsets = list(range(config.min_offset, config.max_offset + 1))
        self.context_down = ContextNetwork(dim, hidden, config.context_kernel, config.context_blocks, offsets)
        self.context_up = (ContextNetwork(dim, hidden, config.context_kernel, config.context_blocks, offsets)
                           if config.bidirectional else None)

    @property
    def eval_backbone(self) -> nn.Module:
        """The backbone over the patch grid, mean-pooled: what kNN, probes and embed see."""
        return PatchGridBackbone(self.backbone, self.config.patch_size, self.config.patch_stride)

    def view_loss(self, latents: Tensor) -> Tensor:
        """InfoNCE of one view's (B, H, W, D) latent grid: top-down, and bottom-up if bidirectional."""
        rows = latents.shape[1]
        if rows <= self.config.max_offset:
            raise UsageError(f"the patch grid has {rows} rows; max_offset={self.config.max_offset} needs more "
                             "(larger views, or smaller patch_size / patch_stride)")
        predictions = self.context_down(latents)
        offsets = list(self.context_down.offsets)
        if self.context_up is not None:  # the grid upside down: row i predicts rows above; flip back to align
            predictions += [p.flip(1) for p in self.context_up(latents.flip(1))]
            offsets += [-k for k in self.context_up.offsets]
        return cpc_infonce(latents, predictions, offsets)

    def augment_patches(self, patches: Tensor, step: int, views: int) -> Tensor:
        """Colour dropping and flips per patch, drawn for the global batch and sliced to this rank's rows.

        `patches` (views * B, rows, cols, 3, P, P), view-major as `torch.cat(views)`.
        """
        cfg = self.config
        if not (cfg.patch_color_drop_p or cfg.patch_flip_p):
            return patches
        local, rows, cols = patches.shape[0] // views, patches.shape[1], patches.shape[2]
        world, rank = distributed.world_size(), distributed.rank()
        g = torch.Generator(device=patches.device)
        g.manual_seed(cfg.patch_augment_seed * 1_000_003 + step)
        shape = (views, local * world, rows, cols)
        drop = torch.rand(shape, generator=g, device=patches.device) < cfg.patch_color_drop_p
        keep = torch.randint(0, 3, shape, generator=g, device=patches.device)
        flip = torch.rand(shape, generator=g, device=patches.device) < cfg.patch_flip_p

        def mine(t: Tensor) -> Tensor:  # this rank's rows of every view, back in torch.cat(views) order
            return t[:, rank * local : (rank + 1) * local].reshape(views * local, rows, cols)

        drop, keep, flip = mine(drop), mine(keep), mine(flip)
        channels = F.one_hot(keep, 3).bool() | ~drop[..., None]  # (N, rows, cols, 3): which channels stay
        patches = patches * channels[..., None, None].to(patches.dtype)
        return torch.where(flip[..., None, None, None], patches.flip(-1), patches)

    def training_step(self, views: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        self.check_views(views)
        used = views if self.config.use_both_views else views[:1]
        grid = PatchGridBackbone(self.backbone, self.config.patch_size, self.config.patch_stride)
        images = torch.cat(used)
        patches = self.augment_patches(patch_grid(images, grid.patch, grid.stride), step, len(used))
        latents = grid.encode(patches, channels_last=images.is_contiguous(memory_format=torch.channels_last))
        latents = latents.chunk(len(used))  # all patches of all used views went through one forward
        loss = sum(self.view_loss(z) for z in latents) / len(latents)
        return loss, {"loss": loss.detach()}
