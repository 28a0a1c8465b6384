"""A query image and the same photo in a dataset go through one eval transform: identical tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.sources import eval_loader, load_query_image
from sharding.run import shard_dataset


@pytest.mark.parametrize("crop_fraction", [0.875, 1.0])
def test_query_image_matches_the_dataset_eval_view(tmp_path, crop_fraction):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(45, 60, 3), dtype=np.uint8)  # not square: the crop matters
    Image.fromarray(pixels).save(photos / "only.png")
    shard_dataset(str(photos), str(tmp_path / "ds"), progress=False)
    batch = next(eval_loader(str(tmp_path / "ds"), 32, 4, crop_fraction=crop_fraction, num_threads=1).iter_epoch(0))
    query, shown = load_query_image(str(photos / "only.png"), 32, crop_fraction)
    assert query.shape == (1, 3, 32, 32) and shown.shape == (32, 32, 3) and shown.dtype == np.uint8
    torch.testing.assert_close(query, batch.views[0][:1], rtol=0, atol=0)
