"""Frozen-backbone feature extraction, streamed batch by batch.

Every evaluation (kNN, linear probe, embeddings, retrieval) starts from the same thing: the
backbone's output for each image, l2-normalised, computed without gradients in eval mode (so
BatchNorm uses its running statistics and dropout is off). Batches may be pipeline `ViewBatch`es,
``(images, labels)`` pairs or bare image tensors, so the pieces can be tested without shards.
On CUDA the forward runs under bf16 autocast by default (`precision="auto"`), as training does;
features are returned in fp32 and normalised in fp32. The same autocast call runs on the CPU
when asked (`precision="bf16"`), which is how the tests check the path without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class FeatureBatch:
    """Features of one batch, with whatever identifies the rows (keys, groups, labels)."""

    features: torch.Tensor                  # [B, D] float32 on CPU
    keys: Optional[list[str]] = None
    group_ids: Optional[list[str]] = None
    labels: Optional[torch.Tensor] = None   # [B] int64 on CPU


@dataclass
class FeatureSet:
    """All features of a split, concatenated: what kNN and the linear probe consume."""

    features: torch.Tensor                  # [N, D] float32
    labels: Optional[torch.Tensor] = None   # [N] int64
    keys: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _unpack_batch(batch: Any, view: int) -> tuple[torch.Tensor, Optional[list[str]], Optional[list[str]], Optional[torch.Tensor]]:
    """(images, keys, group_ids, labels) of a ViewBatch-like object, an (images, labels) pair or a tensor."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None, None
    if isinstance(batch, (tuple, list)):
        images, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        return images, None, None, (None if labels is None else torch.as_tensor(labels))
    views = getattr(batch, "views", None)
    if views is None:
        raise TypeError(f"cannot extract features from a {type(batch).__name__}: expected a ViewBatch, "
                        "an (images, labels) pair or an image tensor")
    keys = getattr(batch, "keys", None)
    groups = getattr(batch, "group_ids", None)
    labels = getattr(batch, "labels", None)
    return (views[view], None if keys is None else list(keys), None if groups is None else list(groups),
            None if labels is None else torch.as_tensor(labels))


PRECISIONS = ("auto", "bf16", "fp32")


def eval_precision(device: torch.device, precision: str = "auto") -> str:
    """"bf16" or "fp32" for an evaluation forward on `device` ("auto": bf16 on CUDA only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def eval_autocast(device: torch.device, precision: str = "auto"):
    """The autocast context of an evaluation forward (see `eval_precision`).

    `torch.autocast` takes device_type "cuda" and "cpu" with dtype bfloat16 alike
    (torch/amp/autocast_mode.py), so CPU tests run the CUDA code path."""
    enabled = eval_precision(device, precision) == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def iter_features(
    backbone: nn.Module,
    batches: Iterable[Any],
    *,
    view: int = 0,
    normalize: bool = True,
    device: Optional[torch.device | str] = None,
    progress: bool | str = False,
    total: Optional[int] = None,
    precision: str = "auto",
) -> Iterator[FeatureBatch]:
    """Yield the backbone's features batch by batch (no grad, eval mode, l2-normalised by default).

    The backbone's train/eval mode is restored afterwards, so this can run inside training for
    online monitoring. `view` picks which of a ViewBatch's views to embed (the eval recipe has one).
    `precision`: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16" or "fp32".
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    memory_format = input_memory_format(backbone)
    was_training = backbone.training
    backbone.eval()
    bar = tqdm(batches, total=total, desc=progress if isinstance(progress, str) else "features",
               unit="batch", disable=not progress)
    try:
        with torch.no_grad():
            for batch in bar:
                images, keys, groups, labels = _unpack_batch(batch, view)
                if images.shape[0] == 0:  # a rank that ran out of samples yields empty batches
                    continue
                with eval_autocast(device, precision):
                    out = backbone(images.to(device, non_blocking=True).contiguous(memory_format=memory_format))
                out = out.flatten(1).float()
                if normalize:
                    out = F.normalize(out, dim=1)
                yield FeatureBatch(out.cpu(), keys, groups, None if labels is None else labels.long().cpu())
    finally:
        bar.close()
        backbone.train(was_training)


def input_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's convolutions hold NHWC weights (conv nets, as the Trainer
    and `load_backbone` lay them out): an NCHW batch would be converted by every convolution."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.shape[1] > 1 and module.weight.shape[-1] > 1:
            weight = module.weight
            nhwc = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


def collect_features(batches: Iterable[FeatureBatch]) -> FeatureSet:
    """Concatenate streamed feature batches into one FeatureSet (labels only if every batch has them)."""
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    keys: list[str] = []
    groups: list[str] = []
    all_labelled = True
    for fb in batches:
        feats.append(fb.features)
        if fb.labels is None:
            all_labelled = False
        else:
            labels.append(fb.labels)
        if fb.keys is not None:
            keys.extend(fb.keys)
        if fb.group_ids is not None:
            groups.extend(fb.group_ids)
    if not feats:
        return FeatureSet(torch.empty(0, 0), None, keys, groups)
    return FeatureSet(torch.cat(feats), torch.cat(labels) if all_labelled and labels else None, keys, groups)


def extract_features(backbone: nn.Module, batches: Iterable[Any], **kwargs: Any) -> FeatureSet:
    """All features of `batches` in memory: `collect_features(iter_features(...))`."""
    return collect_features(iter_features(backbone, batches, **kwargs))
