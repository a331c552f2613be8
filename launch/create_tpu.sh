#!/usr/bin/env bash
# Create a Cloud TPU VM slice: on-demand, spot, or through a queued resource.
#   launch/create_tpu.sh --name aero-v4-32 --zone us-central2-b --accelerator-type v4-32 \
#       [--runtime-version tpu-ubuntu2204-base] [--spot] [--queued] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
TYPE= RUNTIME=tpu-ubuntu2204-base SPOT=() QUEUED=0
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --accelerator-type) TYPE=$2; shift 2 ;;
    --runtime-version) RUNTIME=$2; shift 2 ;;
    --spot) SPOT=(--spot); shift ;;
    --queued) QUEUED=1; shift ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) die "unknown option $1; accepted: --name --zone --accelerator-type --runtime-version --spot --queued --project --dry-run" ;;
  esac
done
require name "$NAME"; require zone "$ZONE"; require accelerator-type "$TYPE"

if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${SPOT[@]}" "${PROJECT_ARGS[@]}"
  echo "queued; watch it with: gcloud compute tpus queued-resources describe $NAME --zone $ZONE" >&2
else
  tpu create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$RUNTIME" "${SPOT[@]}"
fi
