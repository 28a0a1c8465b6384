"""Querying a saved index: neighbours of stored rows (leaving the row itself out) or of image
files (through the checkpoint that made the embeddings), and the retrieval grid of the answers.

An index folder holds `source.json` (which embeddings, checkpoint, dataset and eval view made
it), so a query with images uses the same model and crop, and a grid finds the same images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from groundfloor.errors import UsageError

SOURCE_FILE = "source.json"


def write_index_source(index_dir: str, source: dict[str, Any]) -> None:
    (Path(index_dir) / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")


def read_index_source(index_dir: str) -> dict[str, Any]:
    path = Path(index_dir) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def neighbours(index, queries: np.ndarray, names: Sequence[str], own_keys: Sequence[Optional[str]],
               k: int) -> list[dict[str, Any]]:
    """Top-`k` hits per query row; a query that is a stored row (`own_keys[q]` its key) never
    finds itself: one extra neighbour is searched so it can be left out and `k` remain."""
    found = index.search(queries, k + 1)
    answers = []
    for name, own, scores, rows in zip(names, own_keys, found.scores, found.indices):
        hits = [{"key": index.keys[i], "group": index.groups[i], "score": float(s)}
                for s, i in zip(scores, rows) if i >= 0 and index.keys[i] != own][:k]
        answers.append({"query": name, "results": hits})
    return answers


def image_query_vectors(paths: Sequence[str], source: dict[str, Any], checkpoint: Optional[str], index_dim: int, *,
                        endpoint_url: Optional[str] = None, device: str = "cpu") -> tuple[np.ndarray, list]:
    """(features, decoded pictures) of image files, through the checkpoint and eval view the
    index's embeddings were made with (refused when the checkpoint is another model)."""
    import torch

    from evaluation.features import extract_features
    from evaluation.sources import check_same_producer, load_checkpoint_backbone, load_query_image

    checkpoint = checkpoint or source.get("checkpoint")
    if not checkpoint:
        raise UsageError("querying with images needs --checkpoint (the index does not say which one made it)")
    size = source.get("image_size")
    if not size:
        raise UsageError("the index does not record its image size; rebuild it from `viewstream embed` output")
    images = [load_query_image(p, int(size), float(source.get("crop_fraction", 0.875))) for p in paths]
    backbone, info = load_checkpoint_backbone(checkpoint, endpoint_url, source.get("embedding", "backbone"))
    backbone = backbone.to(device)
    check_same_producer(source, info.producer(), "the index", f"checkpoint {checkpoint!r}")
    feats = extract_features(backbone, [torch.cat([x for x, _ in images])]).features.numpy()
    if feats.shape[1] != index_dim:
        raise UsageError(f"checkpoint {checkpoint!r} makes {feats.shape[1]}-d features but the index holds {index_dim}-d")
    return feats, [p for _, p in images]


def draw_query_grid(dataset: Optional[str], index, answers: list[dict[str, Any]], pictures: Sequence,
                    path: str, endpoint_url: Optional[str] = None) -> str:
    """Retrieval grid of `answers` (a row per query; green: a hit in the query's own group)."""
    from evaluation.plots import plot_retrieval_grid
    from evaluation.sources import read_sample_image

    if not dataset:
        raise UsageError("--grid needs the images: pass --dataset")
    group_of = dict(zip(index.keys, index.groups))
    queries, rows = [], []
    for answer, picture in zip(answers, pictures):
        queries.append(picture if picture is not None
                       else read_sample_image(dataset, answer["query"], endpoint_url=endpoint_url))
        q_group = group_of.get(answer["query"])
        rows.append([(read_sample_image(dataset, h["key"], endpoint_url=endpoint_url), h["score"],
                      None if q_group is None else h["group"] == q_group) for h in answer["results"]])
    return plot_retrieval_grid(queries, rows, path, query_labels=[Path(a["query"]).name for a in answers])
