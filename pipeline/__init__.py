"""viewstream pipeline stage: stream shards and make SSL views in DALI (see ARCHITECTURE.md 2)."""
from pipeline.batch import ViewBatch
from pipeline.epochs import DataPosition
from pipeline.loader import ViewLoader
from pipeline.spec import RECIPES, Augmentation, ViewConfig, ViewSpec

__all__ = ["Augmentation", "DataPosition", "RECIPES", "ViewBatch", "ViewConfig", "ViewLoader",
           "ViewSpec"]
