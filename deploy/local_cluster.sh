#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine for trying things by hand, in a loopback-only
# network namespace (the same harness the tests use: deploy/local/ray_cluster.py):
#   bash deploy/local_cluster.sh [--workers 1] [--head-cpus 1] [--worker-cpus 1] [--dashboard] [--no-auth] [-- COMMAND]
# Without COMMAND you get a shell whose environment points at the cluster (RAY_ADDRESS, token,
# RAY_API_SERVER_ADDRESS with --dashboard); exit the shell and every process it started is
# stopped by PID (never `ray stop`, which would kill other people's clusters).
# Why a namespace: `ray start --node-ip-address=127.0.0.1` swaps loopback for the machine's
# routable IP whenever there is one; in a namespace with only `lo` there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0
PY=("${VIEWSTREAM_VENV:-.venv}/bin/python" -m deploy.local.cli "$@")
if unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${PY[@]}"
elif unshare -rn true 2>/dev/null; then   # unprivileged: a user namespace maps us to root in it
  exec unshare -rn bash -c 'ip link set lo up && exec "$@"' _ "${PY[@]}"
else
  echo "cannot create a network namespace here (unshare -n); Ray would listen on this machine's IP" >&2
  exit 1
fi
