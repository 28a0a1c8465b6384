#!/usr/bin/env bash
# The README's test command: set up (or reuse) .venv, then run the whole test suite.
# Tests that start Ray run inside a loopback-only network namespace where the machine allows
# it, so nothing can listen on or probe any address but 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/get_fashion_mnist.sh || echo "warning: Fashion-MNIST is not installed; tests that need it will fail"
export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1 TQDM_MININTERVAL=5
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider "$@")
if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
  echo "running tests in a loopback-only network namespace"
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${PYTEST[@]}"
else
  echo "no network namespace here: running tests on the host network (services bind 127.0.0.1)"
  exec "${PYTEST[@]}"
fi
