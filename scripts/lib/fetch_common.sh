# Shared by scripts/fetch_*_headers.sh (sourced, not run). The caller sets:
#   tool      its name for messages (e.g. fetch_ort_headers)
#   dest      the include folder to fill
#   required  an array of header files that must end up in $dest
#   help_lines the `sed -n` range of its header comment to print for --help
# and then calls `parse_args "$@"`; `have_all` tells whether every required header is present.

die() { echo "$tool: error: $*" >&2; exit 1; }

parse_args() {
  force=0
  case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    -h|--help) sed -n "$help_lines" "$0"; exit 0 ;;
    *) die "unknown argument '$1' (only --force is accepted)" ;;
  esac
}

have_all() {
  local f
  for f in "${required[@]}"; do [[ -f "$dest/$f" ]] || return 1; done
}
