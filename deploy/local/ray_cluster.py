"""A real multi-node Ray cluster on one machine, bound to 127.0.0.1, for tests and for trying things.

Why not `ray.init()` or `ray stop`: multi-node behaviour (placement across nodes, losing a node)
only shows with separate raylets, and `ray stop` kills every Ray process on the machine, including
other people's clusters. So each node is started with `ray start`, every process it spawns carries
an environment marker naming this cluster and node, and stopping or "losing" a node kills exactly
those processes by PID.

    with LocalRayCluster(worker_nodes=1, dashboard=True) as cluster:
        subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url, "--", ...],
                       env=cluster.env, check=True)
        cluster.kill_node("worker-1")          # simulated node loss
        cluster.add_worker("worker-2")          # a replacement with the same resources

Token authentication stays on by default (RAY_AUTH_MODE=token, a fresh random token per
cluster): clients are subprocesses run with `cluster.env`. See `auth` below for in-process clients.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deploy.local.processes import MARKER_ENV, Listener, kill, listening_sockets, marked_pids, processes

LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::ffff:127.0.0.1"})
HEAD_RESOURCE = "node_head"
WORKER_RESOURCE = "node_worker"
_RAY_BIN = Path(sys.executable).parent / "ray"


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 now (all held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class RayNode:
    """One `ray start` node: its name, the custom resources that pin work to it, its PIDs."""

    name: str
    resources: dict[str, float]
    num_cpus: int
    marker: str
    processes: dict[int, psutil.Process] = field(default_factory=dict)

    node_id: str = ""

    @property
    def pids(self) -> set[int]:
        """PIDs recorded when the node came up (raylet, GCS, agents, dashboard, ...)."""
        return set(self.processes)


@dataclass
class _Launch:
    node: RayNode
    proc: subprocess.Popen
    log: Path


class RayClusterError(RuntimeError):
    """A node failed to start, or the cluster broke a promise (e.g. listened off loopback)."""


class LocalRayCluster:
    """Head plus optional worker nodes on 127.0.0.1; a context manager that stops what it started.

    head_cpus / worker_cpus: logical CPUs each node advertises (not a limit on real cores).
    worker_nodes: how many worker nodes to start with (names `worker-1`, `worker-2`, ...).
    dashboard: start the dashboard on 127.0.0.1 (needed for `ray job submit`; ~2 s slower).
    auth: token authentication (RAY_AUTH_MODE=token, a fresh random token). Ray reads the auth
        mode once per process, at `import ray`, so with auth on, clients are subprocesses run with
        `cluster.env`; auth=False (RAY_AUTH_MODE=disabled, safe only because everything is on
        127.0.0.1) lets this very process `ray.init(address=cluster.address)`.
    object_store_bytes: per node; kept small so tests don't reserve GBs of /dev/shm.
    """

    def __init__(
        self,
        *,
        head_cpus: int = 1,
        worker_nodes: int = 1,
        worker_cpus: int = 1,
        dashboard: bool = False,
        auth: bool = True,
        object_store_bytes: int = 100 * 1024**2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.head_cpus = head_cpus
        self.initial_workers = worker_nodes
        self.worker_cpus = worker_cpus
        self.dashboard = dashboard
        self.auth = auth
        self.object_store_bytes = object_store_bytes
        self.cluster_id = uuid.uuid4().hex[:12]
        self.token = secrets.token_hex(32)
        self.nodes: dict[str, RayNode] = {}
        self.temp_dir: Path | None = None
        self.gcs_port: int | None = None
        self.dashboard_port: int | None = None
        self._extra_env = dict(extra_env or {})
        self._worker_count = 0
        self._lost: list[RayNode] = []

    # ---------------------------------------------------------------- addresses and environment
    @property
    def address(self) -> str:
        """GCS address for `ray.init(address=...)` and `ray start --address`."""
        self._require_started()
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Job-submission address for `ray job submit --address ...` (needs dashboard=True)."""
        self._require_started()
        if not self.dashboard:
            raise RayClusterError("this cluster was started with dashboard=False")
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for client subprocesses: token auth, RAY_ADDRESS, this venv first on PATH."""
        env = dict(os.environ)
        env.update(self._client_vars())
        return env

    def _client_vars(self) -> dict[str, str]:
        vars_ = {
            "RAY_AUTH_MODE": "token" if self.auth else "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
            # Job entrypoints run `python` / `viewstream`: they must be this venv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **self._extra_env,
        }
        if self.auth:
            vars_["RAY_AUTH_TOKEN"] = self.token
        if self.gcs_port is not None:
            vars_["RAY_ADDRESS"] = self.address
        return vars_

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "LocalRayCluster":
        """Start the head and the initial worker nodes; on any failure stop what started.

        Workers are launched as soon as the head's GCS accepts connections, in parallel with the
        rest of the head's start-up (dashboard, raylet): that saves several seconds per cluster.
        """
        if self.temp_dir is not None:
            raise RayClusterError("cluster already started")
        # Short path: Ray's unix sockets live under it and socket paths are limited to ~107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vsray_", dir="/tmp"))
        try:
            head = self._launch_head()
            self._wait_for_port(self.gcs_port, head)
            self._check_node_ip(head.node)
            workers = [self._launch_worker() for _ in range(self.initial_workers)]
            self._finish_launch(head)
            for launch in workers:
                self._finish_worker_launch(launch)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch_head(self) -> "_Launch":
        ports = free_ports(9)
        self.gcs_port, self.dashboard_port, client_port = ports[:3]
        args = [
            "--head",
            f"--port={self.gcs_port}",
            f"--ray-client-server-port={client_port}",
            f"--include-dashboard={'true' if self.dashboard else 'false'}",
        ]
        if self.dashboard:
            args += ["--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        return self._launch_node("head", {HEAD_RESOURCE: 1}, self.head_cpus, args, ports[3:])

    def add_worker(
        self, name: str | None = None, num_cpus: int | None = None, resources: dict[str, float] | None = None
    ) -> RayNode:
        """Join one more node (default resources {"node_worker": 1}); also the replacement node."""
        self._require_started()
        return self._finish_worker_launch(self._launch_worker(name, num_cpus, resources))

    def _launch_worker(
        self, name: str | None = None, num_cpus: int | None = None, resources: dict[str, float] | None = None
    ) -> "_Launch":
        if name is None:
            self._worker_count += 1
            name = f"worker-{self._worker_count}"
            while name in self.nodes:
                self._worker_count += 1
                name = f"worker-{self._worker_count}"
        if name in self.nodes:
            raise RayClusterError(f"node name {name!r} already used in this cluster")
        return self._launch_node(
            name,
            resources if resources is not None else {WORKER_RESOURCE: 1},
            num_cpus if num_cpus is not None else self.worker_cpus,
            [f"--address={self.address}"],
            free_ports(6),
        )

    def _launch_node(
        self, name: str, resources: dict[str, float], num_cpus: int, role_args: list[str], ports: list[int]
    ) -> "_Launch":
        assert self.temp_dir is not None
        node = RayNode(name, dict(resources), num_cpus, marker=f"{self.cluster_id}/{name}")
        self.nodes[name] = node
        cmd = [
            str(_RAY_BIN), "start", *role_args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self.temp_dir}",
            # Every port explicit: defaults like 10001 / 52365 would collide with other clusters.
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[2]}",
            f"--dashboard-agent-grpc-port={ports[3]}",
            f"--runtime-env-agent-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            "--disable-usage-stats",
        ]
        env = self.env
        env[MARKER_ENV] = node.marker
        env.pop("RAY_ADDRESS", None)
        log = self.temp_dir / f"ray-start-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        return _Launch(node, proc, log)

    def _finish_launch(self, launch: "_Launch", timeout: float = 120) -> RayNode:
        try:
            code = launch.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            launch.proc.kill()
            launch.proc.wait()
            code = -1
        launch.node.processes = processes(marked_pids(launch.node.marker))
        launch.node.node_id = self._raylet_node_id(launch.node)
        if code != 0:
            tail = launch.log.read_text(errors="replace")[-3000:]
            raise RayClusterError(f"`ray start` for node {launch.node.name!r} failed ({code}):\n{tail}")
        return launch.node

    def _finish_worker_launch(self, launch: "_Launch") -> RayNode:
        """`_finish_launch`, with one fresh attempt for a worker node whose `ray start` failed.

        On a loaded 2-core box a worker started beside the head can time out "during startup"
        (the GCS answers too late); the node's processes are killed and it is started once more
        under the same name. A second failure raises, naming both.
        """
        try:
            return self._finish_launch(launch)
        except RayClusterError as first:
            node = launch.node
            kill(marked_pids(node.marker), signal.SIGKILL)
            self.nodes.pop(node.name, None)
            retry = self._launch_node(node.name, node.resources, node.num_cpus, [f"--address={self.address}"],
                                      free_ports(6))
            try:
                return self._finish_launch(retry)
            except RayClusterError as second:
                raise RayClusterError(f"{second}\n(a first attempt failed too: {str(first).splitlines()[0]})") from None

    @staticmethod
    def _raylet_node_id(node: RayNode) -> str:
        """The node's Ray NodeID (hex), read from its raylet's `--node_id=` argument."""
        for proc in node.processes.values():
            with contextlib.suppress(psutil.Error):
                if proc.name() == "raylet":
                    for arg in proc.cmdline():
                        if arg.startswith("--node_id="):
                            return arg.split("=", 1)[1]
        return ""

    def _check_node_ip(self, node: RayNode) -> None:
        """Refuse a cluster that `ray start` moved off loopback.

        `ray start --node-ip-address=127.0.0.1` replaces a loopback address by the machine's
        routable IP when there is one (ray.services.resolve_ip_for_localhost); only inside a
        loopback-only network namespace does the node really stay on 127.0.0.1.
        """
        for pid in marked_pids(node.marker):
            with contextlib.suppress(psutil.Error):
                for arg in psutil.Process(pid).cmdline():
                    if arg.startswith("--node-ip-address=") and arg.split("=", 1)[1] != "127.0.0.1":
                        raise RayClusterError(
                            f"ray start resolved 127.0.0.1 to {arg.split('=', 1)[1]}: this machine has a "
                            "routable interface, so Ray would listen on it. Run inside a loopback-only network "
                            "namespace: unshare -n bash -c 'ip link set lo up && exec ...' "
                            "(deploy/local_cluster.sh does this)"
                        )

    def node_name(self, node_id: str) -> str:
        """Which node ("head", "worker-1", ...) a Ray NodeID (e.g. from get_node_id()) belongs to.

        Also knows nodes already killed, so a test can tell where work ran before a loss.
        """
        for node in [*self.nodes.values(), *self._lost]:
            if node.node_id == node_id:
                return node.name
        raise RayClusterError(f"node id {node_id} is not a node of this cluster")

    @staticmethod
    def _wait_for_port(port: int | None, launch: "_Launch", timeout: float = 60) -> None:
        """Wait until 127.0.0.1:port accepts TCP connections (or the launching process died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            if launch.proc.poll() not in (None, 0):
                return  # _finish_launch reports the failure with the log
            time.sleep(0.1)
        raise RayClusterError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")

    def kill_node(self, name: str) -> set[int]:
        """SIGKILL every process of one node (a simulated machine loss); returns the PIDs killed."""
        node = self._node(name)
        pids = kill(marked_pids(node.marker), signal.SIGKILL, node.processes.values())
        self._lost.append(self.nodes.pop(name))
        return pids

    def stop(self) -> None:
        """Stop every process this cluster started, by PID (SIGTERM, then SIGKILL); remove temp dir."""
        recorded = [p for node in self.nodes.values() for p in node.processes.values()]
        kill(marked_pids(self.cluster_id + "/"), signal.SIGTERM, recorded, grace_s=1.0)
        self.nodes.clear()
        # Stragglers forked while we were killing (workers, job drivers) carry the marker too.
        kill(marked_pids(self.cluster_id + "/"), signal.SIGKILL)
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    # ---------------------------------------------------------------- processes and sockets
    def pids(self, name: str | None = None) -> set[int]:
        """Live PIDs of one node, or of the whole cluster (rescanned: Ray forks workers lazily)."""
        prefix = self._node(name).marker if name else self.cluster_id + "/"
        return marked_pids(prefix)

    def listening_sockets(self) -> list[Listener]:
        """Every TCP listener and bound UDP socket of the cluster's processes."""
        return listening_sockets(self.pids())

    def assert_loopback_only(self) -> list[Listener]:
        """Raise if any process of the cluster listens on anything but 127.0.0.1; return listeners."""
        sockets = self.listening_sockets()
        if not sockets:
            raise RayClusterError("no listening sockets found: is the cluster running?")
        exposed = [s for s in sockets if s.ip not in LOOPBACK_ADDRESSES]
        if exposed:
            raise RayClusterError(f"Ray processes listen beyond 127.0.0.1: {exposed}")
        return sockets

    def _node(self, name: str) -> RayNode:
        if name not in self.nodes:
            raise RayClusterError(f"no node {name!r}; nodes: {sorted(self.nodes)}")
        return self.nodes[name]

    def _require_started(self) -> None:
        if self.temp_dir is None or self.gcs_port is None:
            raise RayClusterError("cluster not started (use `with LocalRayCluster(...)` or .start())")

    # ---------------------------------------------------------------- convenience for tests
    def run_python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a Python snippet as a client of this cluster (RAY_ADDRESS and token set)."""
        return subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        """Block until `count` nodes are alive in the GCS (a joining raylet registers async)."""
        code = (
            "import ray, time, sys\n"
            "ray.init(logging_level='ERROR')\n"
            f"deadline = time.time() + {timeout}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) != {count}:\n"
            "    if time.time() > deadline: sys.exit('alive: %d' % sum(n['Alive'] for n in ray.nodes()))\n"
            "    time.sleep(0.2)\n"
        )
        result = self.run_python(code, timeout=timeout + 60)
        if result.returncode != 0:
            raise RayClusterError(f"cluster did not reach {count} alive nodes: {result.stderr[-2000:]}")
