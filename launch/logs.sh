#!/usr/bin/env bash
# Show a worker's training log (worker 0 writes the metrics; the others only their own output).
#   launch/logs.sh --name aero-v4-32 --zone us-central2-b [--worker 0] [--follow] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
WORKER=0 TAIL="tail -n 100"
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --worker) WORKER=$2; shift 2 ;;
    --follow) TAIL="tail -n 100 -f"; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) die "unknown option $1; accepted: --name --zone --worker --follow --project --dry-run" ;;
  esac
done
require name "$NAME"; require zone "$ZONE"
tpu ssh "$NAME" --zone "$ZONE" --worker="$WORKER" --command "$TAIL ~/aero-train.log"
