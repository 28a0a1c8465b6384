#!/usr/bin/env bash
# Creates (or reuses) .venv with viewstream and its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VIEWSTREAM_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: the machine's local build (pip's cap keeps torch <= 2.14.1).
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "venv ready: $VENV"
