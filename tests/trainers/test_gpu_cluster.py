"""The driver side of GPU runs: the process-group backend Ray Train gets, and an autoscaling
cluster (no worker resources at submit time) that grows after `viewstream train` starts."""
from __future__ import annotations

import subprocess
import sys
import time

import yaml

import pytest
import ray

from deploy.local.ray_cluster import LocalRayCluster

from tests.trainers.small_configs import small_config
from trainers import runner
from trainers.config import TrainConfig
from groundfloor.errors import UsageError


class _Captured(Exception):
    pass


def test_torch_trainer_is_built_with_the_mixed_backend_and_the_monitor_budget(monkeypatch, tmp_path):
    import ray.train.torch

    seen = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise _Captured

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Recorder)
    config = TrainConfig.model_validate(small_config("unused", tmp_path, "gpu", scaling__use_gpu=True))
    with pytest.raises(_Captured):
        runner._fit(config)
    assert seen["torch_config"].backend == "cpu:gloo,cuda:nccl"
    assert seen["torch_config"].timeout_s == 1800
    monitored = TrainConfig.model_validate(
        {**config.model_dump(), "monitor": {"train_dataset": "a", "test_dataset": "b", "budget_s": 600}})
    assert runner.torch_config(monitored).timeout_s == 2400
    cpu = TrainConfig.model_validate(small_config("unused", tmp_path, "cpu"))
    assert runner.torch_config(cpu).backend == "gloo"


@pytest.fixture
def empty_cluster():
    """A `ray start` head on 127.0.0.1 with no CPUs: every worker needs a node that joins later
    (what an autoscaling cluster with min_workers 0 looks like at submit time)."""
    with LocalRayCluster(head_cpus=0, worker_nodes=0, auth=False) as cluster:
        try:
            yield cluster
        finally:
            ray.shutdown()


@pytest.mark.integration
def test_train_waits_for_a_node_that_joins_after_submission(empty_cluster, fmnist_shards, tmp_path):
    """`viewstream train` (its own process, as `ray job submit` runs it) on a cluster with no
    worker resources; a node joins once the driver says it waits; the run trains instead of failing at submit."""
    config = small_config(fmnist_shards["train"], tmp_path / "runs", "autoscaled", epochs=1, max_steps=4,
                          scaling__wait_for_resources_s=300, run__checkpoint_every_steps=4)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    driver = subprocess.Popen([sys.executable, "-m", "viewstream", "train", str(path), "--address",
                               empty_cluster.address], env=empty_cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        # The node joins only once the driver says it waits (a fixed sleep raced a slow start-up:
        # the node was there before the driver looked, and it never waited).
        deadline = time.monotonic() + 180
        while not any("waiting up to 300 s for the cluster to scale up" in line for line in lines):
            line = driver.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)[-3000:]  # exited or never waited
            lines.append(line)
        assert driver.poll() is None, "".join(lines)[-3000:]  # still waiting, not refused
        empty_cluster.add_worker(num_cpus=3)
        rest, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = "".join(lines) + rest
    assert driver.returncode == 0, out[-3000:]
    assert "waiting up to 300 s for the cluster to scale up" in out and "needs 2 CPUs" in out
    assert "steps            4 of 4" in out


@pytest.mark.integration
def test_a_cluster_that_does_not_grow_fails_with_a_clear_message(empty_cluster, tmp_path):
    ray.init(address=empty_cluster.address)
    config = TrainConfig.model_validate(small_config("unused", tmp_path, "x", scaling__wait_for_resources_s=1))
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"needs 2 CPUs; the Ray cluster has 0 after waiting 1 s"):
        runner.check_cluster(config, poll_s=0.2)
    assert time.monotonic() - started < 30
    fixed = TrainConfig.model_validate(small_config("unused", tmp_path, "x", scaling__wait_for_resources_s=0))
    with pytest.raises(UsageError, match=r"needs 2 CPUs; the Ray cluster has 0$"):
        runner.check_cluster(fixed)
