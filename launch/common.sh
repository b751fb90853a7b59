# Shared by the launch scripts: argument parsing helpers and dry-run.
# Source it; do not run it.

DRY_RUN=0

# Prints a command shell-quoted, so a dry run's output can be pasted.
quote() {
  local out='' arg
  for arg in "$@"; do
    out+="$(printf '%q' "$arg") "
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or prints it under --dry-run.
run() {
  if (( DRY_RUN )); then
    quote "$@"
  else
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

require() {  # require NAME VALUE FLAG
  [[ -n "$2" ]] || die "missing $3 (see --help)"
}
