"""viewstream pipeline stage: stream shards and make SSL views in DALI (ARCHITECTURE.md 2).

    from pipeline import ViewLoader, ViewSpec

    spec = ViewSpec.from_recipe("multicrop", global_size=224, local_size=96, num_local=6)
    loader = ViewLoader("s3://bucket/dataset", spec, batch_size=64, rank=rank,
                        world_size=world, seed=0, device="cuda", drop_last=True)
    for batch in loader.iter_epoch(epoch, start_batch=position.batch):
        loss = method(batch.views)            # list of [B, 3, H, W], normalized, on device
        save_checkpoint(..., data_position=batch.position.as_dict())

Modules: `spec` (what views), `epochs` (exact per-rank plans from per-shard counts), `roots`
(several dataset roots as one, per-root epoch sizes), `samples`/`streams`/`imageinfo`
(reading and checking shards, S3 resume, image headers), `params` (all randomness, drawn in
numpy), `dali_graph` (the DALI graph for both backends), `producer` (background reading
ahead), `loader`, `preview` (a batch as a PNG grid).
"""
import importlib
from typing import TYPE_CHECKING

# Public names and the module each lives in. They are imported on first use, so that the CLI's
# help (every `viewstream` start) does not pay for torch and DALI.
_EXPORTS = {
    "Augmentation": "pipeline.spec", "RECIPES": "pipeline.spec", "ViewConfig": "pipeline.spec",
    "ViewSpec": "pipeline.spec", "DataPosition": "pipeline.epochs", "ViewBatch": "pipeline.batch",
    "ViewLoader": "pipeline.loader",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from pipeline.batch import ViewBatch
    from pipeline.epochs import DataPosition
    from pipeline.loader import ViewLoader
    from pipeline.spec import RECIPES, Augmentation, ViewConfig, ViewSpec


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
