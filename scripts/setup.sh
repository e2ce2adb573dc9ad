#!/usr/bin/env bash
# Set up a fresh machine: Python deps (torch CPU 2.13 first, so no multi-GB CUDA build is pulled),
# the package in editable mode, and the plugin libraries. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install --quiet "torch==2.13.0"
fi
$PY -m pip install --quiet -e ".[dev]"
bash scripts/build_plugins.sh
