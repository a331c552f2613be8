# Shared by the launch scripts: argument parsing helpers and the dry-run switch.
# Every command that touches the cloud goes through `run`, which only prints it under --dry-run.
set -euo pipefail

DRY_RUN=0
PROJECT_ARGS=()

run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q' "$1"
    printf ' %q' "${@:2}"
    printf '\n'
  else
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

require() {  # require NAME VALUE: a clear error for a missing option
  [[ -n $2 ]] || die "--$1 is required (see --help)"
}

tpu() {  # gcloud's TPU VM commands with the common project argument
  run gcloud compute tpus tpu-vm "$@" "${PROJECT_ARGS[@]}"
}
