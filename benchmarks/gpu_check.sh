#!/usr/bin/env bash
# One prepared GPU check of the CUDA kernels, for a lent GPU machine (NVIDIA GPU + driver, nvcc, cmake,
# a CUDA build of torch; no network: nothing is installed). Run from anywhere; works in the repo root:
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
#   1. configure + build with CUDA for the detected GPU architecture only (build/gpu-check/): the C test ABI
#      libdefmamba_cuda_kernels.so, and libdefmamba_ort_ops.so with its CUDA-EP ops when the ORT
#      headers are present (.deps/onnxruntime/include; carry it along, it is git-ignored);
#   2. tests/plugins/test_cuda_kernels.py (pytest, or the module's own `selftest` runner without pytest);
#   3. the benchmark (tests/plugins/test_cuda_kernels.py bench): SelectiveScan for DefMamba-S stage-1 and
#      stage-3 shapes at batch 1 and 32 (CUDA events after warm-up) against the memory-bandwidth bound
#      (bytes moved / measured device-to-device copy bandwidth) and against the PyTorch reference on the
#      same GPU; DeformGather and TokenSort timings too.
#
# Writes $OUT/gpu_results.json (card, driver, test summary, timings) plus build.log, tests.log and
# nvidia-smi.txt. Expected runtime ~3-4 minutes (every step has a timeout; total < 10 minutes).
# Environment: OUT (default build/gpu-check-out), PYTHON (python3), BUILD_DIR (build/gpu-check), CUDA_ARCH (override
# the detected architecture, CMake syntax, e.g. 90 or 90-real).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/build/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build/gpu-check}
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

# write a minimal result file if a step fails before the benchmark (keeps the reason)
fail_json() {
  "$PY" - "$OUT/gpu_results.json" "$1" "$OUT" <<'PYEOF'
import json, sys, pathlib
out, reason, d = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
tail = lambda f: (d / f).read_text(errors="replace")[-8000:] if (d / f).is_file() else None
data = {"error": reason, "nvidia_smi": tail("nvidia-smi.txt"), "build_log": tail("build.log"),
        "tests_log": tail("tests.log")}
try:  # the package's atomic writer; a plain write only if the package itself cannot be imported here
    from defmamba_deploy.files import write_json
except Exception:
    pathlib.Path(out).write_text(json.dumps(data, indent=2) + "\n")
else:
    write_json(out, data)
PYEOF
}

# ---- 0. the machine ----------------------------------------------------------------------------------
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .')
if [ -z "$cap" ]; then
  cap=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.major}{p.minor}')" 2>/dev/null)
fi
NVCC=${CUDACXX:-$(command -v nvcc || true)}
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -z "$NVCC" ]; then
  log "no nvcc found"; fail_json "no nvcc on PATH or in /usr/local/cuda/bin"; exit 1
fi
export CUDACXX=$NVCC
ARCH=${CUDA_ARCH:-}
if [ -z "$ARCH" ]; then
  if [ -z "$cap" ]; then
    ARCH=native
  elif "$NVCC" --list-gpu-arch 2>/dev/null | grep -qx "compute_$cap"; then
    ARCH=$cap
  else  # nvcc older than the GPU: PTX of the newest architecture it knows, JIT-compiled by the driver
    best=$("$NVCC" --list-gpu-arch 2>/dev/null | sed -n 's/^compute_\([0-9]*\)$/\1/p' | sort -n |
           awk -v c="$cap" '$1 <= c' | tail -n1)
    ARCH=${best:-native}-virtual
    [ -z "$best" ] && ARCH=native
  fi
fi
log "GPU compute capability ${cap:-?}; nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'); CUDA architecture $ARCH"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "torch cannot use the GPU (no CUDA build of torch, or no driver)"
  fail_json "torch.cuda.is_available() is False for $PY"; exit 1
fi

# ---- 1. build (one architecture) ---------------------------------------------------------------------
ORT=OFF
[ -f .deps/onnxruntime/include/onnxruntime_cxx_api.h ] && ORT=ON
targets=(--target defmamba_cuda_test_abi)
[ "$ORT" = ON ] && targets+=(--target defmamba_ort_ops)
B0=$(date +%s)
{
  timeout 120 cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DDEFMAMBA_BUILD_CUDA=ON \
    "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" -DDEFMAMBA_BUILD_ORT=$ORT -DDEFMAMBA_BUILD_TRT=OFF \
    -DDEFMAMBA_COPY_TO_PACKAGE=OFF -DDEFMAMBA_BUILD_TESTS=OFF &&
  timeout 300 cmake --build "$BUILD_DIR" -j"$(nproc)" "${targets[@]}"
} > "$OUT/build.log" 2>&1
build_rc=$?
BUILD_S=$(( $(date +%s) - B0 ))
if [ $build_rc -ne 0 ]; then
  tail -n 40 "$OUT/build.log"; log "build failed (rc $build_rc)"; fail_json "build failed (rc $build_rc)"; exit 1
fi
log "built in ${BUILD_S}s (ORT CUDA-EP ops: $ORT)"
export DEFMAMBA_CUDA_KERNELS_LIB=$ROOT/$BUILD_DIR/plugins/libdefmamba_cuda_kernels.so
[ "$ORT" = ON ] && export DEFMAMBA_ORT_LIB=$ROOT/$BUILD_DIR/plugins/libdefmamba_ort_ops.so

# ---- 2. tests ------------------------------------------------------------------------------------------
S0=$(date +%s)
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider tests/plugins/test_cuda_kernels.py \
    --junitxml="$OUT/junit.xml" > "$OUT/tests.log" 2>&1
  tests_rc=$?
else
  timeout 240 "$PY" tests/plugins/test_cuda_kernels.py selftest --out "$OUT/selftest.json" > "$OUT/tests.log" 2>&1
  tests_rc=$?
fi
TESTS_S=$(( $(date +%s) - S0 ))
tail -n 25 "$OUT/tests.log"
log "tests rc $tests_rc in ${TESTS_S}s"

# ---- 3. benchmark --------------------------------------------------------------------------------------
timeout 200 "$PY" tests/plugins/test_cuda_kernels.py bench --out "$OUT/gpu_results.json" \
  --set "cuda_arch=$ARCH" --set "build_seconds=$BUILD_S" --set "tests_rc=$tests_rc" --set "tests_seconds=$TESTS_S" \
  --set "ort_cuda_ops_built=$ORT" --extra "tests_log=$OUT/tests.log" --extra "nvidia_smi=$OUT/nvidia-smi.txt" \
  > "$OUT/bench.log" 2>&1
bench_rc=$?
tail -n 30 "$OUT/bench.log"
if [ $bench_rc -ne 0 ] || [ ! -s "$OUT/gpu_results.json" ]; then
  fail_json "benchmark failed (rc $bench_rc); tests rc $tests_rc"
fi
log "done: $OUT/gpu_results.json (tests rc $tests_rc, bench rc $bench_rc)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
