#!/usr/bin/env bash
# Install aero-jax at the launching commit on every worker of a slice (a git archive of HEAD,
# copied to each worker, installed with the TPU build of JAX into ~/aero-venv).
#   launch/setup_workers.sh --name aero-v4-32 --zone us-central2-b [--commit REV] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
COMMIT=HEAD
while [[ $# -gt 0 ]]; do
  common_option "$@"
  if ((SHIFT)); then shift "$SHIFT"; continue; fi
  case $1 in
    --commit) COMMIT=$2; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) die "unknown option $1; accepted: --name --zone --commit --project --dry-run" ;;
  esac
done
require name "$NAME"; require zone "$ZONE"
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
SHA=$(git -C "$REPO" rev-parse "$COMMIT")
ARCHIVE=/tmp/aero-jax-$SHA.tar.gz

run git -C "$REPO" archive --format=tar.gz --prefix=aero-jax/ -o "$ARCHIVE" "$SHA"
tpu scp "$ARCHIVE" "$NAME:~/aero-jax.tar.gz" --zone "$ZONE" --worker=all
tpu ssh "$NAME" --zone "$ZONE" --worker=all --command \
  "rm -rf ~/aero-jax && tar xzf ~/aero-jax.tar.gz -C ~ && python3 -m venv ~/aero-venv && ~/aero-venv/bin/pip install -q -U pip && ~/aero-venv/bin/pip install -q -e ~/aero-jax'[tpu,gcs]' && echo $SHA > ~/aero-jax/COMMIT"
