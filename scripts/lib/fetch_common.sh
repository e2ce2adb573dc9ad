# Shared by scripts/fetch_*_headers.sh (sourced, not run). The caller sets:
#   tool       its name for messages (e.g. fetch_ort_headers)
#   dest       the include folder to fill; the record of the archive it came from is $dest/../.sha256
#   required   an array of header files that must end up in $dest
#   help_lines the `sed -n` range of its header comment to print for --help
#   pkg        the package it downloads (its default, or the override from $pkg_var)
# and then calls `parse_args "$@"` and `resolve_pin DEFAULT_PKG DEFAULT_SHA256 PKG_VAR SHA_VAR`.
# `have_all` tells whether every required header is present, `verify_sha256 FILE` checks a download
# against the pin, `stamp_matches` whether $dest came from the pinned archive.

die() { echo "$tool: error: $*" >&2; exit 1; }

parse_args() {
  force=0; verify_file=""; check_only=0
  case "${1:-}" in
    --force) force=1; shift ;;
    --verify) [[ -n "${2:-}" ]] || die "--verify needs a FILE"; verify_file="$2"; shift 2 ;;
    --check) check_only=1; shift ;;
    -h|--help) sed -n "$help_lines" "$0"; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (accepted: --force, --verify FILE, --check, --help)" ;;
  esac
  [[ $# -eq 0 ]] || die "unexpected argument '$1' (one of --force, --verify FILE, --check at a time)"
}

have_all() {
  local f
  for f in "${required[@]}"; do [[ -f "$dest/$f" ]] || return 1; done
}

# resolve_pin DEFAULT_PKG DEFAULT_SHA256 PKG_VAR SHA_VAR: sets `expected` (64 lowercase hex digits, or
# "skip") and `sha_var`. $SHA_VAR, when set, replaces the pin; an overridden package must come with it.
resolve_pin() {
  local default_pkg="$1" default_sha="$2" pkg_var="$3" given
  sha_var="$4"; given="${!sha_var:-}"
  stamp="$(dirname "$dest")/.sha256"
  if [[ -n "$given" ]]; then
    expected="$given"
  elif [[ "$pkg" == "$default_pkg" ]]; then
    expected="$default_sha"
  else
    die "$pkg_var=$pkg needs its own pin: set $sha_var=<SHA-256 of its archive> (or $sha_var=skip to not check it)"
  fi
  if [[ "$expected" != skip ]]; then
    expected="$(printf '%s' "$expected" | tr '[:upper:]' '[:lower:]')"
    [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || die "the pin '$expected' for $pkg is neither a SHA-256 (64 hex digits) nor 'skip' (check $sha_var)"
  fi
}

sha256_of() {
  if command -v sha256sum >/dev/null; then sha256sum -- "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null; then shasum -a 256 -- "$1" | cut -d' ' -f1
  else die "neither 'sha256sum' nor 'shasum' is available to check $1"
  fi
}

# verify_sha256 FILE: FILE's SHA-256 must be the pin (one line on stderr and exit 1 if not); sets archive_sha.
verify_sha256() {
  local file="$1" actual
  [[ -f "$file" ]] || die "$file: no such file"
  actual="$(sha256_of "$file")"
  [[ "$actual" =~ ^[0-9a-f]{64}$ ]] || die "could not compute the SHA-256 of $file"
  if [[ "$expected" == skip ]]; then
    echo "$tool: warning: $file is not checked against a pin ($sha_var=skip); its SHA-256 is $actual" >&2
  elif [[ "$actual" != "$expected" ]]; then
    die "$file has SHA-256 $actual, expected $expected (pinned for $pkg): the download is corrupt or the package changed; delete it and retry, or pin the new hash with $sha_var=..."
  fi
  archive_sha="$actual"
}

# The record in $stamp is "<SHA-256 of the archive>  <package>"; it matches when both are the current ones.
stamp_matches() {
  local s_sha="" s_pkg=""
  [[ -f "$stamp" ]] && read -r s_sha s_pkg <"$stamp" || return 1
  [[ "$s_pkg" == "$pkg" && ( "$expected" == skip || "$s_sha" == "$expected" ) ]]
}

stamp_describe() {
  if [[ -s "$stamp" ]]; then echo "they came from $(head -n1 "$stamp")"; else echo "no record of the archive they came from ($stamp)"; fi
}

# --verify FILE and --check: no download. --check exits 0 when $dest is complete and from the pinned archive.
verify_or_check_only() {
  if [[ -n "$verify_file" ]]; then
    verify_sha256 "$verify_file"
    if [[ "$expected" == skip ]]; then echo "$tool: $verify_file: SHA-256 $archive_sha (not checked)"
    else echo "$tool: $verify_file: SHA-256 $archive_sha, the pin for $pkg"; fi
    exit 0
  fi
  if [[ $check_only -eq 1 ]]; then
    if have_all && stamp_matches; then echo "$tool: $dest is up to date ($pkg, SHA-256 $expected)"; exit 0; fi
    if have_all; then echo "$tool: $dest needs a refetch: $(stamp_describe), the pin is $expected for $pkg"
    else echo "$tool: $dest needs a fetch: one of ${required[*]} is missing"; fi
    exit 1
  fi
}

# install_headers SRC_DIR: replace $dest by the *.h of SRC_DIR (staged beside it, then swapped in), dropping
# the old record first so that an interrupted install is refetched next time.
install_headers() {
  local new="$dest.new.$$" old="$dest.old.$$"
  rm -f "$stamp"
  rm -rf "$new"; mkdir -p "$new"
  cp "$1"/*.h "$new/"
  if [[ -d "$dest" ]]; then mv "$dest" "$old"; fi
  mv "$new" "$dest"
  rm -rf "$old"
}

write_stamp() { echo "$archive_sha  $pkg" >"$stamp"; }
