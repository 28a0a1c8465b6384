"""Training that survives what clusters do (issue 22), on a real local Ray with 2 and 3 gloo workers.

The dataset has one one-photo group whose JPEG has flipped bytes (its sha256 fails: the sample
is skipped) and a shard cut short (its last members are missing). Each test is one run that a
fault drill stops (run.max_failures 0) and the same command resumes on ANOTHER number of workers
(`scaling.num_workers` changed): it trains to the end, every rank runs every step, the worker
logs name the skipped samples, and every global batch, before and after the resume, holds the
same samples as a 1-rank pass over the epoch (the logged `batch_digest`). SimCLR goes 2 -> 3
workers, MoCo v2 (a queue) 3 -> 2, DINO 2 -> 3. The fast checks of each promise are in
tests/trainers/test_elastic.py.
"""
from __future__ import annotations

import glob
import os
import tarfile

import pytest

from pipeline import ViewLoader
from sharding.dataset import read_index, shard_uri
from tests.pipeline.conftest import build_dataset
from tests.trainers.small_configs import small_config
from trainers.checkpoint import load_meta, resolve_checkpoint
from trainers.config import TrainConfig
from trainers.metrics import read_metrics
from trainers.runner import run_training
from trainers.train_loop import sample_set_digest

pytestmark = pytest.mark.integration

BATCH, GROUPS, STOP_AT = 12, 96, 5  # 8 global batches; the drill stops the first attempt at step 5


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=3, _node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    yield ray._private.worker._global_node.get_session_dir_path()
    ray.shutdown()


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """96 groups of 1-2 JPEGs in shards of 16: one lone photo with 16 flipped bytes, and the
    last shard cut at 85% (its last members gone). Returns (root, the flipped group's key)."""
    root = build_dataset(tmp_path_factory, "elastic", num_groups=GROUPS, shard_samples=16, min_views=1,
                         max_views=2, size=32, seed=3, formats=("jpg",))
    index = read_index(root)
    shards, keys, views = (index.column(c).to_pylist() for c in ("shard", "key", "num_views"))
    shard, key = next((s, k) for s, k, n in zip(shards, keys, views) if n == 1 and s != shards[-1])
    path = shard_uri(root, shard)
    with tarfile.open(path) as tar:
        member = next(m for m in tar if m.name.startswith(f"{key}.0."))
    with open(path, "r+b") as f:  # in place: the .idx offsets stay right, the sha256 does not
        f.seek(member.offset_data + member.size // 2)
        data = f.read(16)
        f.seek(member.offset_data + member.size // 2)
        f.write(bytes(b ^ 0xFF for b in data))
    with open(shard_uri(root, shards[-1]), "r+b") as f:
        f.truncate(f.seek(0, 2) * 85 // 100)
    return root, key


@pytest.fixture(scope="module")
def one_rank_digests(damaged):
    """Each global batch's sample-set digest, read by one rank: what every run must log."""
    spec = TrainConfig.model_validate(small_config(damaged[0], "unused", "x")).view_spec()
    loader = ViewLoader(damaged[0], spec, BATCH, seed=0, drop_last=True, num_threads=1)
    digests = [f"{sample_set_digest(b.rows.numpy()):014x}" for b in loader.iter_epoch(0)]
    assert loader.stats.skipped_samples >= 2 and len(digests) == GROUPS // BATCH
    return digests


def _run(name, damaged, storage, tmp_path, method, workers, **overrides):
    """The run stopped by a drill on `workers[0]` workers, then resumed on `workers[1]`."""
    def config(n):
        return TrainConfig.model_validate(small_config(
            damaged[0], storage, name, method=method, batch_size=BATCH, epochs=1,
            scaling={"num_workers": n, "cpus_per_worker": 1},
            run__checkpoint_every_steps=2, run__max_failures=0,
            run__fault={"step": STOP_AT, "rank": n - 1, "kind": "raise", "marker": str(tmp_path / "fired")},
            **overrides))

    with pytest.raises(Exception):
        run_training(config(workers[0]))
    assert load_meta(resolve_checkpoint(str(storage / name)))["progress"]["world_size"] == workers[0]
    return run_training(config(workers[1]))


def _check(result, workers, session_dir, damaged, one_rank_digests):
    records = [r for r in read_metrics(result.out_dir) if "loss" in r]
    assert result.metrics["step"] == len(one_rank_digests) and result.metrics["resumed_from_step"] == 4
    assert [r["step"] for r in records] == list(range(1, len(one_rank_digests) + 1))
    assert [r["world_size"] for r in records] == [workers[0]] * 4 + [workers[1]] * 4
    for r in records:  # every rank ran every step of its attempt
        assert r["rank_steps"] == [r["step"] - (0 if r["step"] <= 4 else 4)] * r["world_size"]
    assert [r["batch_digest"] for r in records] == one_rank_digests
    assert records[-1]["skipped_samples"] >= 1 and records[-1]["filled_samples"] >= 1
    meta = load_meta(resolve_checkpoint(result.checkpoint))
    assert meta["progress"]["world_size"] == workers[1]
    worker_logs = "".join(open(p, errors="replace").read() for p in glob.glob(os.path.join(session_dir, "logs", "*")) if os.path.isfile(p))
    assert f"skipping sample {damaged[1]}" in worker_logs


@pytest.mark.parametrize("method, workers, overrides", [
    ("simclr", (2, 3), {}),
    ("moco_v2", (3, 2), {"method__projection_hidden_dim": 64, "method__projection_dim": 32,
                         "method__queue_size": 3 * BATCH}),
    ("dino", (2, 3), {"optimizer": {"name": "adamw", "base_lr": 0.004, "warmup_steps": 3, "weight_decay": 0.04}}),
])
def test_a_damaged_dataset_trains_to_the_end_and_a_resume_on_another_worker_count_sees_the_same_batches(
        ray_local, damaged, one_rank_digests, tmp_path, method, workers, overrides):
    result = _run(f"{method}-elastic", damaged, tmp_path / "runs", tmp_path, method, workers, **overrides)
    _check(result, workers, ray_local, damaged, one_rank_digests)
