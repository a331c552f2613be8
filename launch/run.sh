#!/usr/bin/env bash
# Run the same aero-train command on every worker of a slice, in the background, logging to
# ~/aero-train.log. Rerun it after a preemption: the gs:// workdir resumes from its checkpoint.
#   launch/run.sh --name aero-v4-32 --zone us-central2-b --config configs/gpt2_codeparrot.py:ereg_sm_t_scfuffn \
#       --workdir gs://BUCKET/runs/x [--project P] [--dry-run] [-- --config.train.num_steps=1000 ...]
source "$(dirname "$0")/common.sh"
CONFIG= WORKDIR= EXTRA=()
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --config) CONFIG=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown option $1; accepted: --name --zone --config --workdir --project --dry-run, then -- overrides" ;;
  esac
done
require name "$NAME"; require zone "$ZONE"; require config "$CONFIG"; require workdir "$WORKDIR"
[[ $WORKDIR == gs://* ]] || die "--workdir=$WORKDIR is invalid; accepted: a gs:// path every worker can reach"
ARGS=$(printf ' %q' "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
tpu ssh "$NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/aero-jax && nohup ~/aero-venv/bin/aero-train$ARGS > ~/aero-train.log 2>&1 &"
