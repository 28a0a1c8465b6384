"""`deploy/local_cluster.sh`: a local multi-node Ray cluster for trying things by hand."""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

from deploy.local.ray_cluster import LocalRayCluster


def main(argv: list[str] | None = None) -> int:
    """Start a local cluster, run COMMAND (default: an interactive shell) as its client, stop it.

    Meant to run inside a loopback-only network namespace (deploy/local_cluster.sh does that):
    there, 127.0.0.1 is the only address, so nothing can be exposed. The command gets the client
    environment (RAY_ADDRESS, the token, RAY_API_SERVER_ADDRESS with --dashboard).
    """
    parser = argparse.ArgumentParser(prog="deploy/local_cluster.sh", description=main.__doc__)
    parser.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--dashboard", action="store_true", help="dashboard + job submission on 127.0.0.1")
    parser.add_argument("--no-auth", action="store_true", help="RAY_AUTH_MODE=disabled (loopback only anyway)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS (default: $SHELL -i)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or [os.environ.get("SHELL", "bash"), "-i"]

    with LocalRayCluster(head_cpus=args.head_cpus, worker_nodes=args.workers, worker_cpus=args.worker_cpus,
                         dashboard=args.dashboard, auth=not args.no_auth) as cluster:
        listeners = cluster.assert_loopback_only()
        env = cluster.env
        if cluster.dashboard:
            env["RAY_API_SERVER_ADDRESS"] = cluster.dashboard_url
        print(f"Ray cluster up: nodes {', '.join(cluster.nodes)}; GCS {cluster.address}; "
              f"{len(listeners)} listening sockets, all on 127.0.0.1", flush=True)
        if cluster.dashboard:
            print(f"  jobs: ray job submit -- python ...   (dashboard {cluster.dashboard_url})", flush=True)
        print(f"  running {' '.join(command)} with the client environment; when it exits, the cluster stops",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            return subprocess.call(command, env=env)
    return 130


if __name__ == "__main__":
    sys.exit(main())
