#!/usr/bin/env bash
# The README's test command: set up (or reuse) .venv, then run the whole test suite in two phases:
# the fast unit tests on every core (pytest-xdist: they are independent and CPU-bound), then the
# integration tests (`-m integration`: Ray clusters, servers, multi-process training, which use
# the cores themselves) one at a time (VIEWSTREAM_INTEGRATION_WORKERS=N: N at a time, a whole
# file on one worker, for its module fixtures: clusters).
# Extra arguments go to both phases (e.g. -q --durations=30); arguments that pick tests (-m, -k,
# or a test path) make it one plain pytest run of that subset.
# Tests that start Ray run inside a loopback-only network namespace where the machine allows
# it, so nothing can listen on or probe any address but 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/get_fashion_mnist.sh || echo "warning: Fashion-MNIST is not installed; tests that need it will fail"
export RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_DOCKER_CPU_WARNING=1 TQDM_MININTERVAL=5
# A crash after pytest's own fault handler is gone (the interpreter's teardown, once seen in CI
# as a bare "Segmentation fault" after all tests passed) prints every thread's Python stack.
export PYTHONFAULTHANDLER=1
WORKERS="${VIEWSTREAM_TEST_WORKERS:-$(nproc)}"
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider)
if unshare -n true 2>/dev/null && command -v ip >/dev/null; then
  echo "running tests in a loopback-only network namespace"
  run() { unshare -n bash -c 'ip link set lo up && exec "$@"' _ "$@"; }
else
  echo "no network namespace here: running tests on the host network (services bind 127.0.0.1)"
  run() { "$@"; }
fi
# pytest exits 5 when a phase selects no test (a subset of only one kind): not a failure.
phase() { local rc=0; run "$@" || rc=$?; [[ $rc -eq 0 || $rc -eq 5 ]] || return "$rc"; }
for arg in "$@"; do
  if [[ $arg == -m || $arg == -k || -e ${arg%%::*} ]]; then
    phase "${PYTEST[@]}" "$@"
    exit
  fi
done
failed=0
echo "phase 1/2: unit tests on $WORKERS workers"
phase "${PYTEST[@]}" -m "not integration" -n "$WORKERS" "$@" || failed=1
# One at a time by default: on CI's 2-core box two at a time made the whole run slower, not
# faster (the tests' clusters and trainings contend for the cores; README, "Tests"); a box with
# cores to spare gains from more (the longest files go first: tests/conftest.py).
SLOW_WORKERS="${VIEWSTREAM_INTEGRATION_WORKERS:-1}"
if [[ $SLOW_WORKERS -gt 1 ]]; then
  echo "phase 2/2: integration tests on $SLOW_WORKERS workers, a file at a time each"
  phase "${PYTEST[@]}" -m integration -n "$SLOW_WORKERS" --dist loadfile "$@" || failed=1
else
  echo "phase 2/2: integration tests, one at a time"
  phase "${PYTEST[@]}" -m integration "$@" || failed=1
fi
exit "$failed"
