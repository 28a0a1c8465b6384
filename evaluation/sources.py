"""Where evaluation inputs come from: checkpoints, shards (through the pipeline) and image files.

The CLI's glue, kept apart from the pure pieces so those stay testable with tensors alone.
Imports of the training side (`trainers.checkpoint`) and of the pipeline happen inside the
functions: the evaluation package imports fine where only embeddings files are at hand.
"""
from __future__ import annotations

import functools
import io
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from evaluation.features import FeatureSet, extract_features, iter_features
from evaluation.labels import vocabulary_remap
from groundfloor.errors import UsageError

DEFAULT_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is: enough to tell whether two things came from the same model."""

    path: str
    method: Optional[str]
    backbone: Optional[str]
    step: Optional[int]
    image_size: Optional[int]
    crop_fraction: Optional[float]
    embedding: str = "backbone"   # or "projection" (trainers.methods.base.EMBEDDINGS)

    def producer(self) -> dict[str, Any]:
        """Metadata stored with embeddings, indexes and exports made from this checkpoint.

        `embedding` is recorded only when it is not the backbone, so that artefacts written before
        projection embeddings existed keep their identity (a missing field reads as "backbone")."""
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        if fields.get("embedding") == "backbone":
            del fields["embedding"]
        return fields | {"checkpoint": self.path}


def describe_checkpoint(path: str, meta: dict[str, Any], embedding: str = "backbone") -> CheckpointInfo:
    """Method, backbone, step and eval image size from a checkpoint's meta.json contents."""
    config = meta.get("config") or {}
    method = config.get("method") or {}
    backbone = method.get("backbone") or {}
    monitor = config.get("monitor") or {}
    options = (config.get("data") or {}).get("recipe_options") or {}
    size = monitor.get("image_size") or options.get("size") or options.get("global_size")
    return CheckpointInfo(str(path), method.get("name"), backbone.get("name") if isinstance(backbone, dict) else None,
                          (meta.get("progress") or {}).get("step"), size, monitor.get("crop_fraction"), embedding)


def load_checkpoint_backbone(path: str, endpoint_url: Optional[str] = None,
                             embedding: str = "backbone") -> tuple[nn.Module, CheckpointInfo]:
    """The evaluation model of a checkpoint (eval mode: its backbone, or backbone + projection
    head for `embedding="projection"`) and what it is."""
    from trainers.checkpoint import load_backbone  # training side: imported only when needed

    backbone, meta = load_backbone(path, endpoint_url, embedding)
    return backbone.eval(), describe_checkpoint(path, meta, embedding)


def check_same_producer(expected: dict[str, Any], actual: dict[str, Any], expected_what: str, actual_what: str) -> None:
    """UsageError when two artefacts name different methods, backbones or embeddings (features
    would not compare)."""
    for field in ("method", "backbone"):
        a, b = expected.get(field), actual.get(field)
        if a and b and a != b:
            raise UsageError(f"{actual_what} is from {field} {b!r} but {expected_what} is from {field} {a!r}; "
                             f"use a checkpoint of {field} {a!r} (or rebuild {expected_what})")
    a, b = expected.get("embedding", "backbone"), actual.get("embedding", "backbone")
    if a != b:
        raise UsageError(f"{actual_what} embeds with its {b} but {expected_what} was made with the {a}; "
                         f"use --embedding {a} (or rebuild {expected_what})")


def eval_spec(image_size: int, crop_fraction: float = DEFAULT_CROP_FRACTION, views: int = 1):
    """The pipeline's eval recipe (resize + center crop), with `views` photos per group (1 or 2)."""
    from pipeline import ViewSpec

    spec = ViewSpec.eval(size=image_size, crop_fraction=crop_fraction)
    return spec if views == 1 else ViewSpec(views=[spec.views[0]] * views, mean=spec.mean, std=spec.std, recipe="eval")


def dataset_list(dataset):
    """A CLI dataset argument as roots: ``a,s3://b/c`` (comma-separated) is a list of roots."""
    if isinstance(dataset, str) and "," in dataset:
        return [part for part in dataset.split(",") if part]
    return dataset


def eval_loader(dataset, image_size: int, batch_size: int = 256, *, crop_fraction: float = DEFAULT_CROP_FRACTION,
                views: int = 1, num_threads: int = 2, endpoint_url: Optional[str] = None, device: str = "cpu"):
    """A ViewLoader over the whole dataset (one root, a list, or ``a,b`` roots) with the eval
    recipe (one rank, epoch 0): the one used by the eval commands, the online monitor and the demo;
    `device` "cuda" decodes on the GPU (DALI mixed) and hands the views over on it."""
    from pipeline import ViewLoader

    return ViewLoader(dataset_list(dataset), eval_spec(image_size, crop_fraction, views), batch_size,
                      num_threads=num_threads, endpoint_url=endpoint_url, device=device,
                      fill_holes=False)  # every sample at most once: no repeats in the features


def labelled_features(backbone: nn.Module, loader, vocabulary: Optional[list[str]] = None,
                      *, desc: str = "features", max_samples: Optional[int] = None) -> tuple[FeatureSet, list[str]]:
    """Features and labels of every labelled sample, labels indexed into `vocabulary`.

    Two splits number their labels by their own sorted label sets; mapping through one shared
    vocabulary (the train split's, extended by labels only the test split has) keeps class k the
    same class in both. Samples without a label are left out. `max_samples` stops after the
    batches that hold that many samples (a cheap, seeded subset for online monitoring).
    """
    if not loader.label_vocabulary:
        raise UsageError(f"dataset {loader.dataset!r} has no labels; kNN and linear probes need labelled shards "
                         "(shard with --label-from parent)")
    vocabulary = list(vocabulary or [])
    vocabulary += [name for name in loader.label_vocabulary if name not in vocabulary]
    remap = vocabulary_remap(loader.label_vocabulary, vocabulary)
    batches, total = loader.iter_epoch(0), loader.batches_per_epoch
    if max_samples is not None:
        total = min(total, -(-max_samples // loader.batch_size))
        batches = itertools.islice(batches, total)
    feats = extract_features(backbone, batches, progress=desc, total=total)
    labels = remap[feats.labels]  # -1 (no label) indexes the trailing -1
    keep = labels >= 0
    keys = [k for k, m in zip(feats.keys, keep.tolist()) if m]
    groups = [g for g, m in zip(feats.group_ids, keep.tolist()) if m]
    return FeatureSet(feats.features[keep], labels[keep], keys, groups), vocabulary


def retrieval_rows(batch) -> list[tuple[int, int]]:
    """The (sample, view) pairs of an eval batch that are natural-view retrieval rows, in order.

    The loader makes two eval views; the pipeline draws them from different photos when a group
    has several (`view_sources` says which), so both are rows; a group of one gives one row."""
    distinct = (batch.view_sources[:, 0] != batch.view_sources[:, 1]).tolist()
    return [(b, v) for b in range(len(batch)) for v in ((0, 1) if distinct[b] else (0,))]


def natural_view_features(backbone: nn.Module, loader) -> tuple[np.ndarray, list[str], list[str]]:
    """(vectors, groups, keys) with two different photos of every multi-photo group, one of the rest
    (`retrieval_rows`)."""
    vectors, groups, keys = [], [], []
    for batch in loader.iter_epoch(0):
        if len(batch) == 0:
            continue
        views = [next(iter_features(backbone, [batch], view=v)).features for v in (0, 1)]
        for b, v in retrieval_rows(batch):
            vectors.append(views[v][b])
            groups.append(batch.group_ids[b])
            keys.append(f"{batch.keys[b]}.{int(batch.view_sources[b, v])}")
    if not vectors:
        raise UsageError(f"dataset {loader.dataset!r} has no samples")
    return torch.stack(vectors).numpy(), groups, keys


def load_query_image(path: str, image_size: int, crop_fraction: float = DEFAULT_CROP_FRACTION
                     ) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised [1, 3, S, S] tensor, displayable SxSx3 uint8) of an image file, made by the
    pipeline's own eval recipe (`pipeline.single_image`), exactly as indexed photos were."""
    from pipeline.single_image import eval_view

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"query image {path!r} does not exist") from None
    spec = eval_spec(image_size, crop_fraction)
    try:
        x = eval_view(data, spec)
    except Exception as err:  # PIL header or DALI decoder: not an image we can read
        raise UsageError(f"query image {path!r} cannot be decoded ({err.__class__.__name__}); "
                         "expected a JPEG or PNG") from None
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    pixels = (x[0] * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return x, pixels


@functools.lru_cache(maxsize=4)
def _sample_locations(dataset: str, endpoint_url: Optional[str]) -> dict[str, tuple[str, str, list[str]]]:
    """key -> (root, shard, view extensions) of every sample: read once per dataset, not once per
    picture of a grid (a whole-dataset tool: grids are drawn from small datasets)."""
    from sharding.dataset import read_index
    from groundfloor.storage import Storage

    storage = Storage(endpoint_url)
    roots = dataset_list(dataset)
    out: dict[str, tuple[str, str, list[str]]] = {}
    for root in [roots] if isinstance(roots, str) else [r if isinstance(r, str) else r["root"] for r in roots]:
        index = read_index(root, storage).select(["key", "shard", "view_exts"])
        for key, shard, exts in zip(*(index.column(c).to_pylist() for c in ("key", "shard", "view_exts"))):
            out.setdefault(key, (root, shard, exts))
    return out


def read_sample_image(dataset: str, key: str, view: int = 0, endpoint_url: Optional[str] = None) -> np.ndarray:
    """Photo `view` of sample `key` of a dataset, as HxWx3 uint8 (for retrieval grids)."""
    from PIL import Image

    from sharding.dataset import read_sample
    from groundfloor.storage import Storage

    storage = Storage(endpoint_url)
    located = _sample_locations(str(dataset), endpoint_url).get(key)
    if located is None:
        raise UsageError(f"key {key!r} is not in dataset {dataset!r}")
    root, shard, exts = located
    ext = exts[view]
    members = read_sample(root, shard, key, storage)
    data = members[f"{view}.{ext}"] if f"{view}.{ext}" in members else members[f"{key}.{view}.{ext}"]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
