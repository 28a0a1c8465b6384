"""FAISS's GPU call pattern, checked on the CPU with its GPU entry points substituted: one
resources object per GPU per process, reused across indexes, and shards spread over the GPUs."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

import evaluation.faiss_gpu as fg
from evaluation.sharded_index import ShardedIndex


class FakeGpuFaiss:
    """Records what would have run on the GPUs; the 'GPU copy' is the CPU index itself."""

    def __init__(self, monkeypatch, num_gpus: int):
        self.resources, self.single, self.multiple = [], [], []
        monkeypatch.setattr(fg, "_resources", {})
        monkeypatch.setattr(faiss, "StandardGpuResources", self.make_resources, raising=False)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: num_gpus)
        monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: type("Options", (), {})(), raising=False)
        monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Options", (), {"shard": False})(),
                            raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.to_gpu, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu_multiple_py", self.to_gpus, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", self.forbidden, raising=False)

    def make_resources(self):
        self.resources.append(object())
        return self.resources[-1]

    def to_gpu(self, resources, device, index, options):
        assert resources is fg._resources[device]
        self.single.append((device, index))
        return index

    def to_gpus(self, resources, index, options, devices):
        assert options.shard is True
        assert [fg._resources[d] for d in devices] == resources
        self.multiple.append((list(devices), index))
        return index

    @staticmethod
    def forbidden(*args, **kwargs):
        raise AssertionError("index_cpu_to_all_gpus makes fresh resources and replicates the index")


def sharded(num_shards: int) -> ShardedIndex:
    rng = np.random.default_rng(0)
    shards = []
    for _ in range(num_shards):
        index = faiss.IndexFlatIP(8)
        index.add(rng.standard_normal((10, 8)).astype(np.float32))
        shards.append(index)
    keys = [f"k{i}" for i in range(10 * num_shards)]
    return ShardedIndex(shards, [10 * i for i in range(num_shards)], keys, keys, {"factory": "Flat"})


@pytest.mark.parametrize("num_shards,num_gpus", [(4, 2), (3, 3), (8, 3)])
def test_each_shard_goes_to_one_gpu_round_robin(monkeypatch, num_shards, num_gpus):
    fake = FakeGpuFaiss(monkeypatch, num_gpus)
    index = sharded(num_shards)
    assert index.to_gpu()
    assert [d for d, _ in fake.single] == [i % num_gpus for i in range(num_shards)]
    assert not fake.multiple and len(fake.resources) == num_gpus


def test_one_shard_is_split_over_every_gpu(monkeypatch):
    fake = FakeGpuFaiss(monkeypatch, 4)
    assert sharded(1).to_gpu()
    assert fake.multiple and fake.multiple[0][0] == [0, 1, 2, 3] and not fake.single


def test_resources_are_made_once_per_gpu_and_reused(monkeypatch):
    fake = FakeGpuFaiss(monkeypatch, 2)
    for _ in range(3):
        sharded(4).to_gpu()
    fg.flat_index_on_gpus(8)
    assert len(fake.resources) == 2


def test_every_gpu_holds_a_shard_and_every_shard_a_gpu():
    for shards in range(1, 7):
        for gpus in range(1, 7):
            placed = [fg.devices_of(i, shards, gpus) for i in range(shards)]
            assert all(placed) and sorted({g for p in placed for g in p}) == list(range(gpus))


def _small_embeddings(tmp_path):
    from evaluation.synthetic_vectors import write_clustered_embeddings

    return write_clustered_embeddings(tmp_path / "emb", 600, 8, rows_per_file=300, clusters=8)


def test_build_index_on_cuda_without_a_gpu_builds_on_the_cpu(tmp_path, capsys):
    from evaluation.index_build import BuildConfig, build_index

    report = build_index(_small_embeddings(tmp_path), tmp_path / "index",
                         BuildConfig(factory="IVF4,Flat", train_size=400, add_batch=200, gpu=True), progress=False)
    assert not report.gpu_used and report.count == 600
    assert "building on the CPU" in capsys.readouterr().out


def test_build_index_trains_its_k_means_on_the_gpus_through_the_shared_resources(tmp_path, monkeypatch):
    from evaluation.index_build import BuildConfig, build_index

    fake = FakeGpuFaiss(monkeypatch, 2)
    report = build_index(_small_embeddings(tmp_path), tmp_path / "index",
                         BuildConfig(factory="IVF4,Flat", train_size=400, add_batch=200, gpu=True), progress=False)
    assert report.gpu_used and report.count == 600
    assert fake.multiple and fake.multiple[0][0] == [0, 1] and len(fake.resources) == 2
