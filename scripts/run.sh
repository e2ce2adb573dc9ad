#!/usr/bin/env bash
# The main job on a fresh machine: set up, export DefMamba-S (custom ops and portable), run the
# parity check of PyTorch vs ONNX Runtime (with our C++ ops) vs the portable model on
# scikit-image's sample photos + random inputs, at batch 1 and 4 from one dynamic-batch file.
# Pass --weights FILE to use real weights (default: random init, which is fine for parity).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-build/demo}
mkdir -p "$OUT"
defmamba-deploy info
defmamba-deploy export --model s "$@" -o "$OUT/defmamba_s.onnx"
defmamba-deploy export --model s --portable "$@" -o "$OUT/defmamba_s_portable.onnx"
defmamba-deploy parity --model s "$@" --onnx "$OUT/defmamba_s.onnx" --portable-onnx "$OUT/defmamba_s_portable.onnx" \
  --batch 1,4 --json "$OUT/parity_s.json"
