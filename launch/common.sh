# Shared by the launch scripts: argument parsing helpers and the dry-run switch.
# Every command that touches the cloud goes through `run`, which only prints it under --dry-run.
set -euo pipefail

DRY_RUN=0
PROJECT_ARGS=()
NAME=
ZONE=
SHIFT=0

common_option() {  # --name, --zone, --project, --dry-run; sets SHIFT to the words taken (0: none)
  case $1 in
    --name) NAME=${2:-}; SHIFT=2 ;;
    --zone) ZONE=${2:-}; SHIFT=2 ;;
    --project) PROJECT_ARGS=(--project "${2:-}"); SHIFT=2 ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    *) SHIFT=0 ;;
  esac
}

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
