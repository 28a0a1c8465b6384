"""`viewstream train` on a real local Ray (127.0.0.1, 2 CPUs) with 2 gloo workers.

One Ray instance serves the whole module. The uninterrupted SimCLR run is the reference for
the fault-and-resume test (in-run restarts after a raise and a SIGKILL, and a stopped job run
again): it must end with the same weights and see the same batches.
"""
from __future__ import annotations

import re

import pytest
import torch

from tests.trainers.small_configs import small_config
from trainers.checkpoint import load_state, resolve_checkpoint
from trainers.config import TrainConfig
from trainers.metrics import read_metrics
from trainers.runner import run_training
from groundfloor.errors import UsageError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference_run(ray_local, fmnist_shards, storage):
    config = TrainConfig.model_validate(small_config(fmnist_shards["train"], storage, "reference"))
    return config, run_training(config)


def _mean(values):
    return sum(values) / len(values)


def _final_state(result) -> dict[str, torch.Tensor]:
    return load_state(resolve_checkpoint(result.checkpoint))["method"]


def _trained_batches(out_dir) -> list[tuple]:
    return [(r["step"], r["epoch"], r["batch"], r["batch_digest"]) for r in read_metrics(out_dir) if "loss" in r]


def test_simclr_trains_and_writes_metrics_and_checkpoint(reference_run):
    config, result = reference_run
    records = [r for r in read_metrics(result.out_dir) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 25))  # 384 // 32 = 12 steps x 2 epochs
    losses = [r["loss"] for r in records]
    assert _mean(losses[-4:]) < _mean(losses[:4]) - 0.05, losses
    assert result.metrics["step"] == 24 and result.checkpoint
    assert (result.out_dir / "tensorboard").is_dir()
    state = _final_state(result)
    assert any(k.startswith("backbone.") for k in state)


def test_dino_multicrop_trains(ray_local, fmnist_shards, storage):
    cfg = small_config(fmnist_shards["train"], storage, "dino", method="dino",
                       optimizer={"name": "adamw", "base_lr": 0.004, "warmup_steps": 3, "weight_decay": 0.04})
    result = run_training(TrainConfig.model_validate(cfg))
    losses = [r["loss"] for r in read_metrics(result.out_dir) if "loss" in r]
    assert len(losses) == 24
    assert _mean(losses[-4:]) < _mean(losses[:4]), losses
    state = _final_state(result)
    assert "center" in "".join(state) and any(k.startswith("teacher_backbone.") for k in state)


def test_failed_workers_restart_and_a_stopped_job_reruns_to_identical_result(reference_run, fmnist_shards, storage,
                                                                             tmp_path):
    """Three failures in two trainings (separate tests for each took four). Rank 1 raises at step
    9: Ray Train restarts the workers from the checkpoint at 6 (max_failures=1). Rank 0 raises at
    15, past the budget: the job stops. The same command again resumes from 12; there rank 1
    SIGKILLs itself at 21 and the workers restart from 18. The run ends with the reference run's
    batches and weights."""
    _, ref = reference_run
    markers = [tmp_path / "raise-fired", tmp_path / "stop-fired", tmp_path / "sigkill-fired"]
    cfg = small_config(fmnist_shards["train"], storage, "faults", run__max_failures=1,
                       run__fault=[{"step": 9, "rank": 1, "kind": "raise", "marker": str(markers[0])},
                                   {"step": 15, "rank": 0, "kind": "raise", "marker": str(markers[1])},
                                   {"step": 21, "rank": 1, "kind": "sigkill", "marker": str(markers[2])}])
    with pytest.raises(Exception):
        run_training(TrainConfig.model_validate(cfg))  # the second failure is over max_failures: the job stops
    assert [m.exists() for m in markers] == [True, True, False]
    result = run_training(TrainConfig.model_validate(cfg))  # the same command again
    assert result.metrics["resumed_from_step"] == 18  # the rerun's workers restarted from the checkpoint at 18
    # Each drill's marker names the step its attempt had resumed from: the raise at 9 fired in the
    # first attempt, the stop at 15 after the restart from 6, the SIGKILL at 21 in the rerun (from 12).
    fired = [re.fullmatch(r"fault drill fired at step (\d+) on rank (\d) in an attempt resumed from step (\d+)\n",
                          m.read_text()) for m in markers]
    assert [tuple(map(int, f.groups())) for f in fired] == [(9, 1, 0), (15, 0, 6), (21, 1, 12)]
    assert _trained_batches(result.out_dir) == _trained_batches(ref.out_dir)
    expected, got = _final_state(ref), _final_state(result)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_more_workers_than_the_cluster_can_place_fails_before_start(ray_local, fmnist_shards, storage):
    # a fixed cluster: fail at once (an autoscaling one waits: tests/trainers/test_gpu_cluster.py)
    cfg = small_config(fmnist_shards["train"], storage, "too-big", scaling={"num_workers": 4, "cpus_per_worker": 1,
                                                                          "wait_for_resources_s": 0},
                       batch_size=32)
    with pytest.raises(UsageError, match="scaling.num_workers=4"):
        run_training(TrainConfig.model_validate(cfg))
