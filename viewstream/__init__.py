"""viewstream: shards -> DALI view pipelines -> distributed SSL trainers."""

__version__ = "0.1.0"
