#!/usr/bin/env bash
# The README's demo command: set up (or reuse) .venv, then run the whole spine on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/get_fashion_mnist.sh || true
export RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/viewstream demo "$@"
