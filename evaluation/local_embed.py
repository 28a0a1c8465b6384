"""`embed` in one process: every root's eval views through the backbone, into one embeddings
Parquet file, labels numbered in the roots' union vocabulary (as `embed --ray` numbers them)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch

from evaluation.labels import vocabulary_remap


def root_feature_batches(backbone, roots: Sequence[str], image_size: int, crop_fraction: float, batch_size: int,
                         vocabulary: Sequence[str], *, endpoint_url: Optional[str] = None,
                         device: str = "cpu") -> tuple[Iterator[tuple[Any, str]], int]:
    """(FeatureBatches of every root in turn with the root they came from, total batches)."""
    from evaluation.features import iter_features
    from evaluation.sources import eval_loader

    loaders = [eval_loader(root, image_size, batch_size, crop_fraction=crop_fraction, endpoint_url=endpoint_url,
                           device=device) for root in roots]

    def batches():
        for loader in loaders:
            remap = vocabulary_remap(loader.label_vocabulary, vocabulary)
            for fb in iter_features(backbone, loader.iter_epoch(0), device=device):
                if fb.labels is not None and vocabulary:
                    fb.labels = remap[fb.labels]
                elif vocabulary:
                    fb.labels = torch.full((len(fb.features),), -1, dtype=torch.long)
                yield fb, loader.dataset

    return batches(), sum(loader.batches_per_epoch for loader in loaders)


def embed_locally(backbone, roots: Sequence[str], out: str, identity: dict[str, Any], image_size: int,
                  crop_fraction: float, batch_size: int, vocabulary: Sequence[str], *,
                  endpoint_url: Optional[str] = None, device: str = "cpu") -> int:
    """Write the embeddings of `roots` to the Parquet file `out`; returns the rows written."""
    from evaluation.embeddings import write_embeddings

    batches, total = root_feature_batches(backbone, roots, image_size, crop_fraction, batch_size, vocabulary,
                                          endpoint_url=endpoint_url, device=device)
    return write_embeddings(out, batches, metadata=identity | {"dataset": roots[0]}, total=total,
                            part_columns=True)
