#!/usr/bin/env bash
# Deletes a TPU VM (and its queued resource, if it has one).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/delete.sh --name NAME --zone ZONE [--project P] [--queued] [--dry-run]
USAGE
}

name="" zone="" project="" queued=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --project) project=$2; shift ;;
    --queued) queued=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"
extra=()
[ -n "$project" ] && extra=(--project "$project")
if [ "$queued" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$name" --zone "$zone" "${extra[@]}" \
    --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$name" --zone "$zone" "${extra[@]}" --quiet
fi
