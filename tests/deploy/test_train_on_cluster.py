"""`viewstream train` across nodes, submitted as a Ray job like production (`ray job submit`):
one worker per node, checkpoints and metrics in storage both nodes see, a checkpoint that resumes
on a one-node cluster, a run that survives losing its second node when a replacement joins, and an
elastic run (`scaling.num_workers: [min, max]`) that goes on with fewer workers after losing one."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from sharding.fashion_mnist import export_fashion_mnist
from sharding.migrate import migrate_dataset
from sharding.run import shard_dataset
from deploy.local.ray_cluster import LocalRayCluster
from tests.trainers.small_configs import small_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 6  # 192 images / batch 32

# Ray Train's worker actors and the node each ran on (task and actor events reach the GCS ~1/s).
TRAIN_WORKER_NODES = """
import json, sys, time
from ray.util.state import list_actors
deadline = time.time() + 30
while True:
    actors = list_actors(address=sys.argv[1], filters=[("class_name", "=", "RayTrainWorker")],
                         detail=True, limit=1000, raise_on_missing_output=False)
    if len(actors) >= int(sys.argv[2]) or time.time() > deadline:
        break
    time.sleep(0.5)
print("RESULT" + json.dumps([a.node_id for a in actors]))
"""


# A killed node is declared dead after 3 missed health checks of 1 s period and 2 s timeout
# (~6-9 s instead of Ray's default ~30 s). The first check waits Ray's default 5 s: with no delay
# and 0.5 s timeouts, a raylet still starting on a loaded 2-core box was declared dead and its
# `ray start` failed ("timed out during startup").
FAST_NODE_LOSS_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
                            "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "5000"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("train-data")
    export_fashion_mnist(root / "png", "train", limit_per_split=192)
    shard_dataset(str(root / "png" / "train"), str(root / "shards"), label_from="parent",
                  shard_samples=64, progress=False)
    migrate_dataset(str(root / "shards"), progress=False)  # a no-op once the sharder writes v2
    return str(root / "shards")


def write_config(path: Path, shards: str, storage: Path, name: str, **overrides) -> Path:
    config = small_config(shards, storage, name, **overrides)
    config["run"].update(checkpoint_every_steps=3)
    path.write_text(yaml.safe_dump(config))
    return path


def submit(cluster: LocalRayCluster, config: Path, job_id: str) -> None:
    """`ray job submit --no-wait -- viewstream train CONFIG --address auto`, as in production.

    A job's driver runs on the head node, and Ray Train pins its controller to the driver's
    node: so losing the worker node loses training workers only, never the controller.
    """
    cmd = ["ray", "job", "submit", "--address", cluster.dashboard_url, "--no-wait", "--submission-id", job_id,
           "--", "viewstream", "train", str(config), "--address", "auto"]
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def train(cluster: LocalRayCluster, config: Path, *extra: str) -> subprocess.CompletedProcess:
    """`viewstream train CONFIG --address GCS` as a driver on this machine; must succeed."""
    proc = subprocess.run([sys.executable, "-m", "viewstream", "train", str(config), "--address", cluster.address,
                           *extra], env=cluster.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def summary_steps(output: str) -> tuple[int, int, int]:
    """(steps done, total steps, resumed from step) from the run summary `viewstream train` prints."""
    line = next(l for l in output.splitlines() if l.startswith("steps ") and "resumed from step" in l)
    words = line.replace("(", " ").replace(")", " ").split()
    return int(words[1]), int(words[3]), int(words[-1])


def plain(proc: subprocess.CompletedProcess) -> str:
    """stdout + stderr of a `ray` CLI call without its colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)


def metrics_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        with_loss = line.strip() and json.loads(line)
        if with_loss and "loss" in with_loss:
            steps.append(with_loss["step"])
    return steps


def test_two_workers_one_per_node_and_the_checkpoint_resumes_on_one_node(
    two_node_cluster: LocalRayCluster, shards: str, tmp_path: Path
) -> None:
    storage = tmp_path / "runs"  # one folder both nodes see: the shared storage of this machine
    config = write_config(tmp_path / "train.yaml", shards, storage, "multi", epochs=1)
    run = train(two_node_cluster, config)
    assert summary_steps(run.stdout)[:2] == (STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    assert metrics_steps(storage / "multi") == list(range(1, STEPS_PER_EPOCH + 1))
    assert sorted(p.name for p in (storage / "multi").glob("checkpoint_*"))  # written by a worker, any node

    placed = subprocess.run([sys.executable, "-c", TRAIN_WORKER_NODES, two_node_cluster.dashboard_url, "2"],
                            env=two_node_cluster.env, capture_output=True, text=True, timeout=120)
    assert placed.returncode == 0, placed.stderr[-3000:]
    node_ids = json.loads(next(l for l in placed.stdout.splitlines() if l.startswith("RESULT"))[6:])
    assert sorted(two_node_cluster.node_name(n) for n in node_ids) == ["head", "worker-1"]

    # The same run, one more epoch, on a different (one-node) cluster: it resumes, not restarts.
    with LocalRayCluster(head_cpus=2, worker_nodes=0) as one_node:
        rerun = train(one_node, config, "--set", "epochs=2")
    assert summary_steps(rerun.stdout) == (2 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    assert metrics_steps(storage / "multi") == list(range(1, 2 * STEPS_PER_EPOCH + 1))


def test_losing_the_second_node_resumes_from_the_last_checkpoint_on_a_replacement(
    shards: str, tmp_path: Path
) -> None:
    fast_detection = FAST_NODE_LOSS_DETECTION
    storage = tmp_path / "runs"
    total = 2 * STEPS_PER_EPOCH
    config = write_config(tmp_path / "train.yaml", shards, storage, "node-loss", epochs=2, run__max_failures=1)
    job_id = f"node-loss-{tmp_path.name}"
    with LocalRayCluster(head_cpus=1, worker_nodes=1, dashboard=True, extra_env=fast_detection) as cluster:
        submit(cluster, config, job_id)
        deadline = time.time() + 300
        while max(metrics_steps(storage / "node-loss"), default=0) < 4:  # past the checkpoint at step 3
            assert time.time() < deadline, "training never reached step 4"
            time.sleep(0.1)
        head_daemons, lost_id = cluster.nodes["head"].pids, cluster.nodes["worker-1"].node_id
        killed = cluster.kill_node("worker-1")  # the machine is gone: raylet, agents, its train worker
        killed_at = max(metrics_steps(storage / "node-loss"))
        assert killed_at < total, "the run finished before the node was lost"
        assert killed and not [p for p in killed if _alive(p)]
        assert all(_alive(p) for p in head_daemons)  # GCS, head raylet, dashboard, agents survived

        replacement = cluster.add_worker()  # same {"node_worker": 1}, a new node id
        assert replacement.name == "worker-2" and replacement.node_id != lost_id
        assert cluster.node_name(lost_id) == "worker-1"

        logs = subprocess.run(["ray", "job", "logs", "--address", cluster.dashboard_url, "--follow", job_id],
                              env=cluster.env, capture_output=True, text=True, timeout=600)
        status = subprocess.run(["ray", "job", "status", "--address", cluster.dashboard_url, job_id],
                                env=cluster.env, capture_output=True, text=True, timeout=120)
        everything, temp_dir = cluster.pids(), cluster.temp_dir
    assert f"Job '{job_id}' succeeded" in plain(status), plain(status)[-2000:] + logs.stdout[-4000:]
    done, planned, resumed_from = summary_steps(logs.stdout)
    assert (done, planned) == (total, total)
    assert resumed_from > 0 and resumed_from % 3 == 0 and resumed_from <= killed_at  # a checkpoint step
    # Every step was trained; the steps after the checkpoint were trained again after the loss.
    assert set(metrics_steps(storage / "node-loss")) == set(range(1, total + 1))
    # Stopping the cluster left no process and no temp dir behind.
    assert not [p for p in everything if _alive(p)]
    assert temp_dir is not None and not temp_dir.exists()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_elastic_run_that_loses_a_node_continues_on_the_remaining_workers_with_exact_coverage(
    shards: str, tmp_path: Path
) -> None:
    """`scaling.num_workers: [2, 3]` on three 1-CPU nodes: Ray Train's elastic policy starts 3
    workers; after a node is lost it restarts on the 2 the cluster still holds (no replacement),
    from the last checkpoint, and every global batch holds the samples of a 1-rank epoch."""
    from pipeline import ViewLoader
    from trainers.config import TrainConfig
    from trainers.metrics import read_metrics
    from trainers.train_loop import sample_set_digest

    # When a rank's collective fails at the kill, the dead node is not declared dead yet, so Ray
    # Train's elastic policy first tries 3 workers again and waits its worker-group start timeout
    # (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default; a controller error it retries
    # without limit) before it counts 2; 30 s still leaves a 3-worker start (~11 s quiet) room.
    fast_detection = {**FAST_NODE_LOSS_DETECTION, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30"}
    storage, batch = tmp_path / "runs", 12
    config = write_config(tmp_path / "train.yaml", shards, storage, "elastic", epochs=1, batch_size=batch,
                          max_steps=8, scaling={"num_workers": [2, 3], "cpus_per_worker": 1}, run__max_failures=1)
    spec = TrainConfig.model_validate(yaml.safe_load(config.read_text())).view_spec()
    expected = [f"{sample_set_digest(b.rows.numpy()):014x}"
                for b in ViewLoader(shards, spec, batch, drop_last=True, num_threads=1).iter_epoch(0)][:8]
    job_id = f"elastic-{tmp_path.name}"
    with LocalRayCluster(head_cpus=1, worker_nodes=2, dashboard=True, extra_env=fast_detection) as cluster:
        submit(cluster, config, job_id)
        deadline = time.time() + 300
        while max(metrics_steps(storage / "elastic"), default=0) < 4:  # past the checkpoint at step 3
            assert time.time() < deadline, "training never reached step 4"
            time.sleep(0.1)
        cluster.kill_node("worker-2")
        killed_at = max(metrics_steps(storage / "elastic"))
        logs = subprocess.run(["ray", "job", "logs", "--address", cluster.dashboard_url, "--follow", job_id],
                              env=cluster.env, capture_output=True, text=True, timeout=600)
        status = subprocess.run(["ray", "job", "status", "--address", cluster.dashboard_url, job_id],
                                env=cluster.env, capture_output=True, text=True, timeout=120)
    assert f"Job '{job_id}' succeeded" in plain(status), plain(status)[-2000:] + logs.stdout[-4000:]
    done, planned, resumed_from = summary_steps(logs.stdout)
    assert done == planned == len(expected) and 0 < resumed_from <= killed_at < planned
    records = [r for r in read_metrics(storage / "elastic") if "loss" in r]
    assert [r["world_size"] for r in records] == [3] * resumed_from + [2] * (planned - resumed_from)
    assert all(len(set(r["rank_steps"])) == 1 for r in records)
    assert [r["batch_digest"] for r in records] == expected
