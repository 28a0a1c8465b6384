#!/usr/bin/env bash
# Creates (or reuses) .venv with viewstream and its test extras. Safe to rerun.
# A reused venv is checked against a stamp (a hash of pyproject.toml and this script, written after a
# successful install): when neither changed and viewstream still imports, nothing is reinstalled,
# so a rerun of the demo or the tests starts in about a second instead of asking pip again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VIEWSTREAM_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.viewstream-install-stamp"
want=$(cat pyproject.toml scripts/setup_venv.sh | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] \
   && "$VENV/bin/python" -c "import torch, torchvision, viewstream" 2>/dev/null; then
  echo "venv ready: $VENV (unchanged since its install)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: the machine's local build (pip's cap keeps torch <= 2.14.1).
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "$want" > "$STAMP"
echo "venv ready: $VENV"
