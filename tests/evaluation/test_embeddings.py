"""Embeddings Parquet round-trip: rows = samples, vectors = a direct forward pass."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from evaluation.embeddings import (EmbeddingWriter, iter_embeddings, read_embeddings,
                                      read_embeddings_metadata, write_embeddings)
from evaluation.features import FeatureBatch, iter_features
from groundfloor.errors import UsageError


class FakeViewBatch:
    """Has the attributes of pipeline.ViewBatch that evaluation reads."""

    def __init__(self, views, keys, group_ids, labels):
        self.views, self.keys, self.group_ids, self.labels = views, keys, group_ids, labels


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_round_trip_equals_direct_forward_pass(tmp_path):
    backbone = _backbone().train()
    g = torch.Generator().manual_seed(1)
    batches = [FakeViewBatch([torch.randn(5, 3, 12, 12, generator=g)], [f"k{b}_{i}" for i in range(5)],
                             [f"g{b}_{i // 2}" for i in range(5)], torch.arange(5) + b) for b in range(3)]
    empty = FakeViewBatch([torch.empty(0, 3, 12, 12)], [], [], torch.empty(0, dtype=torch.long))
    path = tmp_path / "emb.parquet"
    rows = write_embeddings(path, iter_features(backbone, batches + [empty]), metadata={"method": "simclr"}, progress=False)

    assert rows == 15 and backbone.training  # mode restored after extraction
    emb = read_embeddings(path)
    assert len(emb) == 15 and pq.ParquetFile(path).metadata.num_rows == 15
    assert emb.keys == [f"k{b}_{i}" for b in range(3) for i in range(5)]
    assert emb.groups[:3] == ["g0_0", "g0_0", "g0_1"]
    assert emb.labels.tolist() == [i + b for b in range(3) for i in range(5)]
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (15, 8)

    backbone.eval()
    with torch.no_grad():
        direct = torch.nn.functional.normalize(torch.cat([backbone(b.views[0]) for b in batches]), dim=1)
    np.testing.assert_allclose(emb.vectors, direct.numpy(), atol=1e-6)
    assert read_embeddings_metadata(path) == {"dim": 8, "format": 1, "method": "simclr"}
    chunks = list(iter_embeddings(path, batch_size=4))
    assert sum(len(c) for c in chunks) == 15
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]), emb.vectors)


def test_unlabelled_unkeyed_rows_get_row_numbers_and_no_labels(tmp_path):
    path = tmp_path / "e.parquet"
    with EmbeddingWriter(path, flush_rows=3) as w:
        w.write(FeatureBatch(torch.ones(2, 4)))
        w.write(FeatureBatch(torch.zeros(2, 4)))
        w.write(FeatureBatch(torch.zeros(1, 4)))
    emb = read_embeddings(path)
    assert emb.keys == ["0", "1", "2", "3", "4"] and emb.groups == emb.keys
    assert emb.labels is None
    assert pq.ParquetFile(path).metadata.num_row_groups >= 2  # streamed, not one big write


def test_failed_write_leaves_no_file_and_bad_files_are_usage_errors(tmp_path):
    path = tmp_path / "e.parquet"
    with pytest.raises(UsageError, match="dimension changed"):
        with EmbeddingWriter(path) as w:
            w.write(FeatureBatch(torch.ones(2, 4)))
            w.write(FeatureBatch(torch.ones(2, 5)))
    assert not path.exists() and not list(tmp_path.iterdir())
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(UsageError, match="cannot read embeddings"):
        read_embeddings(tmp_path / "x.parquet")


def test_features_under_bf16_autocast_are_fp32_and_close_to_fp32_features():
    """The CUDA default (bf16 autocast) run on the CPU: the same code path, checked here."""
    import torch.nn.functional as F

    from evaluation.features import eval_precision, extract_features

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 16))
    images = [torch.randn(6, 3, 16, 16)]
    exact = extract_features(net, images, precision="fp32").features
    half = extract_features(net, images, precision="bf16").features
    assert half.dtype == torch.float32 and not torch.equal(half, exact)  # bf16 really ran
    assert F.cosine_similarity(half, exact).min() > 0.99
    assert torch.equal(extract_features(net, images).features, exact)  # auto on the CPU: fp32
    assert eval_precision(torch.device("cuda"), "auto") == "bf16"
    assert eval_precision(torch.device("cpu"), "auto") == "fp32"
    assert eval_precision(torch.device("cuda"), "fp32") == "fp32"
