#!/usr/bin/env bash
# Set up a fresh machine: Python deps (torch CPU 2.13 first, so no multi-GB CUDA build is pulled),
# the package in editable mode, and the plugin libraries. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install --quiet "torch==2.13.0"
fi
# The package in editable mode. A plain `pip install .` / `pip wheel .` builds the op libraries
# inside the Python build (scikit-build-core); for a checkout they are built by build_plugins.sh
# into build/ (where the C++ tests run from) and copied into defmamba_deploy/lib/, so pip's own
# CMake run is told to build nothing here.
$PY -m pip install --quiet -e ".[dev]" -Cbuild-dir=build/editable -Ccmake.define.DEFMAMBA_BUILD_ORT=OFF \
  -Ccmake.define.DEFMAMBA_BUILD_CUDA=OFF -Ccmake.define.DEFMAMBA_BUILD_TRT=OFF
bash scripts/build_plugins.sh
