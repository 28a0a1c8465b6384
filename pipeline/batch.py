"""`ViewBatch`: what the pipeline hands the trainers (ARCHITECTURE.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pipeline.epochs import DataPosition


@dataclass
class ViewBatch:
    """One batch of views of B samples.

    `views[v]` is the v-th view of the spec for every sample, float [B, 3, H, W], normalized,
    on the loader's device. `view_sources[b, v]` is the photo index (view i of ``{key}.{i}``)
    that view v of sample b was cropped from: the two global views of a group with >= 2 good
    photos come from different photos. `labels` index into `label_vocabulary` (the dataset's
    sorted labels), -1 where a sample has none; None when the dataset has no labels at all.
    `position` is where to resume after this batch; `epoch`/`batch` say which batch this is.
    B can be smaller than the batch size in the last batch of an epoch (drop_last=False) or
    when bad samples were skipped, and 0 on a rank that ran out of samples.
    """

    views: list[torch.Tensor]
    keys: list[str]
    group_ids: list[str]
    labels: Optional[torch.Tensor]
    label_vocabulary: list[str]
    view_sources: torch.Tensor
    rows: torch.Tensor
    epoch: int
    batch: int
    position: DataPosition

    def __len__(self) -> int:
        return len(self.keys)
