#!/usr/bin/env bash
# Build the plugin libraries with the top-level CMakeLists.txt and copy them to defmamba_deploy/lib/.
# ONNX Runtime headers: $ONNXRUNTIME_INCLUDE_DIR if set, else fetched from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
args=(-S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release)
# TensorRT headers (for libdefmamba_trt_plugins.so; no libnvinfer needed to build it)
if [ -n "${TENSORRT_ROOT:-}" ]; then
  args+=("-DTENSORRT_ROOT=$TENSORRT_ROOT")
else
  bash scripts/fetch_trt_headers.sh || echo "warning: TensorRT headers unavailable; the TensorRT plugins will be skipped"
fi
if [ -n "${ONNXRUNTIME_INCLUDE_DIR:-}" ]; then
  args+=("-DONNXRUNTIME_INCLUDE_DIR=$ONNXRUNTIME_INCLUDE_DIR")
else
  bash scripts/fetch_ort_headers.sh
fi
cmake "${args[@]}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "plugin libraries: $(ls defmamba_deploy/lib/*.so 2>/dev/null | tr '\n' ' ')"
