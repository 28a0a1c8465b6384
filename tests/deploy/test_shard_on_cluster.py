"""`viewstream shard --ray` on the two-node cluster: shards are built on both nodes, and the
dataset is byte-identical to a local single-process run of the same command."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sharding.synthetic import generate_view_corpus
from deploy.local.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARD_ARGS = ["--group-by", "dir", "--label-from", "parent", "--shard-samples", "3", "--no-progress"]

# Task events reach the GCS asynchronously (about once a second): poll until all are in.
NODES_OF_SHARD_TASKS = """
import json, sys, time
from ray.util.state import list_tasks
expected, deadline = int(sys.argv[1]), time.time() + 30
while True:
    tasks = list_tasks(address=sys.argv[2], filters=[("name", "=", "_call")], limit=10000,
                       raise_on_missing_output=False)
    finished = [t for t in tasks if t.state == "FINISHED"]
    if len(finished) >= expected or time.time() > deadline:
        break
    time.sleep(0.5)
print("RESULT" + json.dumps(sorted(t.node_id for t in finished)))
"""


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def viewstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "viewstream", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_shard_on_two_nodes_is_byte_identical_to_local(two_node_cluster: LocalRayCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate_view_corpus(corpus, num_groups=24, seed=11, size=32)
    local, on_ray = tmp_path / "local", tmp_path / "ray"

    viewstream("shard", str(corpus), str(local), *SHARD_ARGS)
    viewstream("shard", str(corpus), str(on_ray), *SHARD_ARGS, "--ray", "--address",
               two_node_cluster.address, env=two_node_cluster.env)

    local_files, ray_files = tree_digest(local), tree_digest(on_ray)
    shards = [name for name in local_files if name.endswith(".tar")]
    assert len(shards) == 8  # 24 groups, 3 per shard
    assert ray_files == local_files

    placed = subprocess.run(
        [sys.executable, "-c", NODES_OF_SHARD_TASKS, str(len(shards)), two_node_cluster.dashboard_url],
        env=two_node_cluster.env, capture_output=True, text=True, timeout=120,
    )
    assert placed.returncode == 0, placed.stderr[-3000:]
    node_ids = json.loads(next(l for l in placed.stdout.splitlines() if l.startswith("RESULT"))[6:])
    assert len(node_ids) == len(shards)
    assert {two_node_cluster.node_name(n) for n in node_ids} == {"head", "worker-1"}
