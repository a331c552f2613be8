#!/usr/bin/env bash
# Delete a slice (and its queued resource, with --queued). The gs:// workdir is kept.
#   launch/delete_tpu.sh --name aero-v4-32 --zone us-central2-b [--queued] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
QUEUED=0
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --queued) QUEUED=1; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) die "unknown option $1; accepted: --name --zone --queued --project --dry-run" ;;
  esac
done
require name "$NAME"; require zone "$ZONE"
if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" --zone "$ZONE" --force --quiet "${PROJECT_ARGS[@]}"
else
  tpu delete "$NAME" --zone "$ZONE" --quiet
fi
