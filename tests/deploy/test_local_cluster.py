"""The local multi-node Ray cluster: loopback only, token auth on, placement across nodes, job
submission. (Node loss, replacement and a stop that leaves nothing behind are checked by
test_train_on_cluster.py, which loses a node under a training run.)"""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import psutil
import pytest

from deploy.local.ray_cluster import HEAD_RESOURCE, WORKER_RESOURCE, LocalRayCluster

pytestmark = pytest.mark.integration

NODE_OF_EACH_RESOURCE = f"""
import json, ray
ray.init(logging_level="ERROR")
@ray.remote(num_cpus=0)
def node_id():
    return ray.get_runtime_context().get_node_id()
out = {{r: ray.get(node_id.options(resources={{r: 0.01}}).remote())
       for r in ({HEAD_RESOURCE!r}, {WORKER_RESOURCE!r})}}
print("RESULT" + json.dumps(out))
"""


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_every_process_listens_on_loopback_only(two_node_cluster: LocalRayCluster) -> None:
    listeners = two_node_cluster.assert_loopback_only()
    ports = {port for _, _, _, port in listeners}
    assert int(two_node_cluster.address.rsplit(":", 1)[1]) in ports  # the GCS
    assert int(two_node_cluster.dashboard_url.rsplit(":", 1)[1]) in ports
    # Both raylets are among the listeners, so the check covered both nodes.
    assert sum(name == "raylet" for _, name, _, _ in listeners) >= 2


def test_recorded_pids_belong_to_each_node(two_node_cluster: LocalRayCluster) -> None:
    head, worker = two_node_cluster.nodes["head"], two_node_cluster.nodes["worker-1"]
    assert head.pids and worker.pids and not head.pids & worker.pids
    names = {psutil.Process(p).name() for p in head.pids}
    assert {"gcs_server", "raylet"} <= names
    assert "raylet" in {psutil.Process(p).name() for p in worker.pids}


def test_custom_resources_force_tasks_onto_distinct_nodes(two_node_cluster: LocalRayCluster) -> None:
    placed = _result(two_node_cluster.run_python(NODE_OF_EACH_RESOURCE))
    assert two_node_cluster.node_name(placed[HEAD_RESOURCE]) == "head"
    assert two_node_cluster.node_name(placed[WORKER_RESOURCE]) == "worker-1"


def test_clients_without_the_token_are_refused(two_node_cluster: LocalRayCluster) -> None:
    request = urllib.request.Request(f"{two_node_cluster.dashboard_url}/api/jobs/")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (401, 403)
    request.add_header("Authorization", f"Bearer {two_node_cluster.token}")
    with urllib.request.urlopen(request, timeout=10) as ok:
        assert ok.status == 200


def test_ray_job_submit_runs_an_entrypoint_that_sees_both_nodes(two_node_cluster: LocalRayCluster) -> None:
    entry = "import ray; ray.init(); print('ALIVE', sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", two_node_cluster.dashboard_url, "--", "python", "-c", entry],
        env=two_node_cluster.env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ALIVE 2" in proc.stdout


class _FirstWorkerStartFails(LocalRayCluster):
    """The first `ray start` of worker-1 gets an option that does not exist, so it exits 2."""

    attempts = 0

    def _launch_node(self, name, resources, num_cpus, role_args, ports):
        if name == "worker-1":
            self.attempts += 1
            if self.attempts == 1:
                role_args = [*role_args, "--no-such-option"]
        return super()._launch_node(name, resources, num_cpus, role_args, ports)


def test_a_worker_whose_start_fails_is_started_once_more() -> None:
    with _FirstWorkerStartFails(head_cpus=1, worker_nodes=1) as cluster:
        assert cluster.attempts == 2
        assert sorted(cluster.nodes) == ["head", "worker-1"] and cluster.nodes["worker-1"].node_id
        cluster.wait_for_nodes(2)
