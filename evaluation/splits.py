"""Labelled train/test features for kNN and linear probes, from embeddings files or from a
checkpoint and shards (what `viewstream eval knn|linear` compares)."""
from __future__ import annotations

from typing import Any

import torch

from evaluation.features import FeatureSet
from evaluation.labels import align_labels
from groundfloor.errors import UsageError


def embedding_splits(train_path: str, test_path: str) -> tuple[FeatureSet, FeatureSet, dict[str, Any]]:
    """(train, test, producer) from two embeddings Parquet files of the same checkpoint; rows
    without a label are left out, test labels renumbered into the train vocabulary."""
    from evaluation.embeddings import read_embeddings
    from evaluation.sources import check_same_producer

    sets = []
    for path in (train_path, test_path):
        emb = read_embeddings(path)
        if emb.labels is None or (emb.labels >= 0).sum() == 0:
            raise UsageError(f"embeddings {path!r} have no labels; kNN and linear probes need labelled data")
        keep = emb.labels >= 0
        sets.append((FeatureSet(torch.from_numpy(emb.vectors[keep]), torch.from_numpy(emb.labels[keep])), emb.metadata))
    check_same_producer(sets[0][1], sets[1][1], f"train embeddings {train_path!r}", f"test embeddings {test_path!r}")
    align_labels(sets[0][0], sets[0][1].get("label_vocabulary"), sets[1][0], sets[1][1].get("label_vocabulary"))
    return sets[0][0], sets[1][0], sets[0][1]


def shard_splits(backbone, train: str, test: str, image_size: int, crop_fraction: float, batch_size: int, *,
                 endpoint_url=None, device: str = "cpu") -> tuple[FeatureSet, FeatureSet]:
    """(train, test) features of `backbone` on labelled shards; test labels use the train vocabulary."""
    from evaluation.sources import eval_loader, labelled_features

    def make(dataset):
        return eval_loader(dataset, image_size, batch_size, crop_fraction=crop_fraction,
                           endpoint_url=endpoint_url, device=device)

    train_loader, test_loader = make(train), make(test)
    if not test_loader.label_vocabulary:  # fail before spending time on the train split
        raise UsageError(f"dataset {test!r} has no labels; kNN and linear probes need labelled shards "
                         "(shard with --label-from parent)")
    train_set, vocab = labelled_features(backbone, train_loader, desc="train features")
    test_set, _ = labelled_features(backbone, test_loader, vocab, desc="test features")
    return train_set, test_set
