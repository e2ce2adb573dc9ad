#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ API headers (no libraries) into .deps/onnxruntime/include/.
#
# Source: the npm package com.github.asus4.onnxruntime (ONNX Runtime for Unity, MIT), whose iOS
# framework carries the stock ORT headers. Version 0.4.9 ships ORT_API_VERSION 29; the custom-op
# library built against them loads in any onnxruntime >= 1.29 (checked at registration time).
#
# The npm tarball must have the SHA-256 pinned below (default_sha256), else nothing is installed.
#
# Usage: scripts/fetch_ort_headers.sh [--force | --verify FILE | --check]
#   --verify FILE  only check FILE (a downloaded tarball) against the pin; no download
#   --check        only tell (exit 0/1) whether the headers are there and from the pinned tarball
#   env ORT_NPM_PACKAGE (default com.github.asus4.onnxruntime@0.4.9) with ORT_NPM_SHA256 (the SHA-256
#       of its tarball, or "skip" to not check it; required with ORT_NPM_PACKAGE, replaces the pin),
#       DEFMAMBA_DEPS_DIR (default <repo>/.deps)
# Idempotent: does nothing when the headers are there and .deps/onnxruntime/.sha256 records the
# pinned tarball; refetches when the pin or the package changed (use --force to refetch anyway).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_pkg=com.github.asus4.onnxruntime@0.4.9
default_sha256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d  # com.github.asus4.onnxruntime-0.4.9.tgz
pkg="${ORT_NPM_PACKAGE:-$default_pkg}"
deps_dir="${DEFMAMBA_DEPS_DIR:-$repo_root/.deps}"
dest="$deps_dir/onnxruntime/include"
required=(onnxruntime_c_api.h onnxruntime_cxx_api.h onnxruntime_cxx_inline.h onnxruntime_float16.h
          onnxruntime_lite_custom_op.h)

tool=fetch_ort_headers
help_lines=2,17p
# shellcheck source=lib/fetch_common.sh
source "$repo_root/scripts/lib/fetch_common.sh"
parse_args "$@"
resolve_pin "$default_pkg" "$default_sha256" ORT_NPM_PACKAGE ORT_NPM_SHA256
verify_or_check_only

if [[ $force -eq 0 ]] && have_all; then
  if stamp_matches; then
    echo "fetch_ort_headers: headers already present in $dest (use --force to refetch)"
    exit 0
  fi
  echo "fetch_ort_headers: refetching: $(stamp_describe), the pin is $expected for $pkg"
fi

command -v tar >/dev/null || die "'tar' not found"
work="$(mktemp -d "${TMPDIR:-/tmp}/defmamba-ort-headers.XXXXXX")"
trap 'rm -rf "$work" "$dest.new.$$"' EXIT

echo "fetch_ort_headers: downloading npm package $pkg ..."
tgz=""
if command -v npm >/dev/null; then
  if (cd "$work" && npm pack "$pkg" >"$work/npm-pack.log" 2>&1); then
    tgz="$(ls "$work"/*.tgz 2>/dev/null | head -n1 || true)"
  else
    echo "fetch_ort_headers: 'npm pack' failed:" >&2; tail -n 5 "$work/npm-pack.log" >&2 || true
  fi
fi
if [[ -z "$tgz" ]]; then
  # Fallback without npm: the registry's tarball URL (npm view would give the same address).
  command -v curl >/dev/null || die "neither a working 'npm' nor 'curl' is available to download $pkg"
  name="${pkg%@*}"; ver="${pkg##*@}"
  url="https://registry.npmjs.org/$name/-/$name-$ver.tgz"
  echo "fetch_ort_headers: trying $url"
  curl -fsSL --retry 3 -o "$work/pkg.tgz" "$url" || die "could not download $url (network? registry reachable?)"
  tgz="$work/pkg.tgz"
fi
verify_sha256 "$tgz"

# The headers sit in each slice of the iOS xcframework; all slices hold the same files. Pick the
# device slice (ios-arm64/.../Headers) and extract only that folder.
hdr_dir="$(tar -tzf "$tgz" | grep -E '/ios-arm64/onnxruntime\.framework/Headers/onnxruntime_c_api\.h$' | head -n1 || true)"
[[ -n "$hdr_dir" ]] || hdr_dir="$(tar -tzf "$tgz" | grep -E '/Headers/onnxruntime_c_api\.h$' | head -n1 || true)"
[[ -n "$hdr_dir" ]] || die "onnxruntime_c_api.h not found inside $pkg (package layout changed?)"
hdr_dir="$(dirname "$hdr_dir")"
tar -xzf "$tgz" -C "$work" "$hdr_dir" || die "could not extract $hdr_dir from $tgz"

install_headers "$work/$hdr_dir"
# Keep the license next to the headers (ORT is MIT).
lic="$(tar -tzf "$tgz" | grep -E '^package/LICENSE(\.md|\.txt)?$' | head -n1 || true)"
if [[ -n "$lic" ]] && tar -xzf "$tgz" -C "$work" "$lic" 2>/dev/null; then cp "$work/$lic" "$dest/../LICENSE"; fi
echo "$pkg" > "$dest/../SOURCE"

have_all || die "extracted headers are incomplete in $dest (missing one of: ${required[*]})"
write_stamp
api="$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$dest/onnxruntime_c_api.h")"
echo "fetch_ort_headers: ONNX Runtime headers (ORT_API_VERSION ${api:-?}) installed in $dest"
echo "fetch_ort_headers: configure with: cmake -S . -B build   (or -DONNXRUNTIME_INCLUDE_DIR=$dest)"
