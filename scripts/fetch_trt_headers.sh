#!/usr/bin/env bash
# Fetch TensorRT's public C++ headers (no libraries) into .deps/tensorrt/include/.
#
# Source: the PyPI wheel kernel-lens (MIT), which carries the stock TensorRT headers (Apache-2.0,
# see the SPDX lines in each header) under kernel_lens/include/tensorrt/. Version 2.0.1 ships
# TensorRT 10.14.1. The plugin library needs only these headers: it does not link libnvinfer.
# (The pip `tensorrt` wheels ship no headers, NVIDIA/TensorRT#4310; with a TensorRT SDK installed,
# configure with -DTENSORRT_ROOT=<sdk> instead and skip this script.)
#
# The wheel must have the SHA-256 pinned below (default_sha256), else nothing is installed.
#
# Usage: scripts/fetch_trt_headers.sh [--force | --verify FILE | --check]
#   --verify FILE  only check FILE (a downloaded wheel) against the pin; no download
#   --check        only tell (exit 0/1) whether the headers are there and from the pinned wheel
#   env TRT_HEADERS_PIP_SPEC (default kernel-lens==2.0.1) with TRT_HEADERS_SHA256 (the SHA-256 of
#       the wheel, or "skip" to not check it; required with TRT_HEADERS_PIP_SPEC, replaces the pin),
#       DEFMAMBA_DEPS_DIR (default <repo>/.deps), PYTHON (default python3)
# Idempotent: does nothing when the headers are there and .deps/tensorrt/.sha256 records the pinned
# wheel; refetches when the pin or the package changed (use --force to refetch anyway).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_spec=kernel-lens==2.0.1
default_sha256=07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0  # kernel_lens-2.0.1-py3-none-any.whl
spec="${TRT_HEADERS_PIP_SPEC:-$default_spec}"
pkg="$spec"
deps_dir="${DEFMAMBA_DEPS_DIR:-$repo_root/.deps}"
dest="$deps_dir/tensorrt/include"
py="${PYTHON:-python3}"
# What the plugins include (NvInferRuntime.h pulls in the rest) plus the version header.
required=(NvInfer.h NvInferRuntime.h NvInferRuntimeBase.h NvInferRuntimeCommon.h NvInferRuntimePlugin.h
          NvInferPluginBase.h NvInferImpl.h NvInferLegacyDims.h NvInferVersion.h)

tool=fetch_trt_headers
help_lines=2,20p
# shellcheck source=lib/fetch_common.sh
source "$repo_root/scripts/lib/fetch_common.sh"
parse_args "$@"
resolve_pin "$default_spec" "$default_sha256" TRT_HEADERS_PIP_SPEC TRT_HEADERS_SHA256
verify_or_check_only

trt_version() {
  local h="$1/NvInferVersion.h" major minor patch
  major="$(sed -n 's/^#define TRT_MAJOR_ENTERPRISE \([0-9]*\).*/\1/p' "$h")"
  [[ -n "$major" ]] || major="$(sed -n 's/^#define NV_TENSORRT_MAJOR \([0-9]*\).*/\1/p' "$h")"
  minor="$(sed -n 's/^#define TRT_MINOR_ENTERPRISE \([0-9]*\).*/\1/p' "$h")"
  [[ -n "$minor" ]] || minor="$(sed -n 's/^#define NV_TENSORRT_MINOR \([0-9]*\).*/\1/p' "$h")"
  patch="$(sed -n 's/^#define TRT_PATCH_ENTERPRISE \([0-9]*\).*/\1/p' "$h")"
  [[ -n "$patch" ]] || patch="$(sed -n 's/^#define NV_TENSORRT_PATCH \([0-9]*\).*/\1/p' "$h")"
  echo "${major:-?}.${minor:-?}.${patch:-?}"
}

if [[ $force -eq 0 ]] && have_all; then
  if stamp_matches; then
    echo "fetch_trt_headers: TensorRT $(trt_version "$dest") headers already present in $dest (use --force to refetch)"
    exit 0
  fi
  echo "fetch_trt_headers: refetching: $(stamp_describe), the pin is $expected for $spec"
fi

command -v "$py" >/dev/null || die "'$py' not found (set PYTHON=<python with pip>)"
"$py" -m pip --version >/dev/null 2>&1 || die "'$py -m pip' does not work; pip is needed to download $spec"

work="$(mktemp -d "${TMPDIR:-/tmp}/defmamba-trt-headers.XXXXXX")"
trap 'rm -rf "$work" "$dest.new.$$"' EXIT

echo "fetch_trt_headers: downloading $spec from PyPI (no dependencies) ..."
if ! "$py" -m pip download --no-deps --only-binary=:all: --dest "$work" "$spec" >"$work/pip.log" 2>&1; then
  tail -n 5 "$work/pip.log" >&2 || true
  die "'pip download $spec' failed (network? PyPI reachable? set TRT_HEADERS_PIP_SPEC to another version)"
fi
whl="$(ls "$work"/*.whl 2>/dev/null | head -n1 || true)"
[[ -n "$whl" ]] || die "pip downloaded no wheel for $spec"
verify_sha256 "$whl"

# Extract only kernel_lens/include/tensorrt/*.h (a wheel is a zip; Python's zipfile avoids needing unzip).
"$py" - "$whl" "$work/hdr" <<'EOF' || die "could not extract the TensorRT headers from $(basename "$whl")"
import os, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
prefix = "kernel_lens/include/tensorrt/"
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and n.endswith(".h") and "/" not in n[len(prefix):]]
    if not names:
        sys.exit("no %s*.h in %s (package layout changed?)" % (prefix, os.path.basename(whl)))
    os.makedirs(out, exist_ok=True)
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            dst.write(src.read())
EOF

install_headers "$work/hdr"
echo "$spec ($(basename "$whl")): kernel_lens/include/tensorrt/*.h, TensorRT headers under Apache-2.0" \
  > "$deps_dir/tensorrt/SOURCE"

have_all || die "extracted headers are incomplete in $dest (missing one of: ${required[*]})"
ver="$(trt_version "$dest")"
[[ "${ver%%.*}" =~ ^[0-9]+$ && "${ver%%.*}" -ge 10 ]] || die "need TensorRT >= 10 headers (IPluginV3), got $ver"
write_stamp
echo "fetch_trt_headers: TensorRT $ver headers installed in $dest"
echo "fetch_trt_headers: configure with: cmake -S . -B build   (or -DTENSORRT_ROOT=<dir containing include/>)"
