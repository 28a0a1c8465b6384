"""A preview of what the pipeline feeds the model: one batch of a recipe as a PNG grid (a row
per sample, a column per view) plus what was read. Behind `viewstream views`: eyeball a recipe
before training, and check that a dataset streams (local or s3://) without bad data."""
from __future__ import annotations

from typing import Any, Optional

from groundfloor.errors import UsageError


def recipe_sizes(recipe: str, size: int, local_size: int, num_local: int) -> dict[str, int]:
    """Size keywords of `recipe` (multicrop has global and local sizes)."""
    if recipe == "multicrop":
        return dict(global_size=size, local_size=local_size, num_local=num_local)
    return dict(size=size)


def with_views_per_group(spec, count: int):
    """`spec` with `count` global views (`--views-per-group`); a bad count is one line."""
    try:
        return spec.with_global_views(count)
    except ValueError as err:
        raise UsageError(f"--views-per-group {count}: {err}") from None


def preview_views(dataset: str, spec, batch_size: int, out: str, *, epoch: int = 0, seed: int = 0,
                  endpoint_url: Optional[str] = None) -> dict[str, Any]:
    """Write the first batch of `epoch` as a grid to `out`; returns keys, view sources and read counts."""
    import torch
    import torch.nn.functional as F
    from torchvision.utils import save_image

    from pipeline.loader import ViewLoader

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected an integer >= 1")
    loader = ViewLoader(dataset, spec, batch_size, seed=seed, endpoint_url=endpoint_url)
    batch = next(loader.iter_epoch(epoch), None)
    if batch is None or len(batch) == 0:
        raise UsageError(f"{dataset!r} yields no samples")
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    size = max(v.size for v in spec.views)
    columns = [F.interpolate(view * std + mean, size=(size, size), mode="nearest") for view in batch.views]
    grid = torch.stack(columns, dim=1).flatten(0, 1).clamp(0, 1)  # one row per sample
    save_image(grid, out, nrow=len(spec.views), padding=2)
    return {"out": out, "samples": len(batch), "views": len(spec.views), "keys": batch.keys,
            "view_sources": batch.view_sources.tolist(), "read": loader.stats.as_dict()}
