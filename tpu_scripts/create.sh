#!/usr/bin/env bash
# Creates a TPU VM (or a queued resource) for rest_jax.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/create.sh --name NAME --zone ZONE --type TYPE [options]

Creates a TPU VM, or with --queued a queued resource that waits for capacity.

  --name NAME        TPU VM (and queued resource) name
  --zone ZONE        e.g. us-west4-a (v5e), us-central2-b (v4)
  --type TYPE        accelerator type, e.g. v5e-8 (one host), v4-32 (a 4-host pod)
  --version VERSION  TPU runtime (default: chosen for the type)
  --project PROJECT  Google Cloud project (default: gcloud's)
  --spot             spot capacity (cheaper, preemptible)
  --queued           create a queued resource instead of a VM directly
  --dry-run          print the gcloud commands without running them
  -h, --help         this help

Examples:
  tpu_scripts/create.sh --name rest --zone us-west4-a --type v5e-8 --spot --dry-run
  tpu_scripts/create.sh --name rest-pod --zone us-central2-b --type v4-32 --queued
USAGE
}

name="" zone="" type="" version="" project="" spot=0 queued=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --type) type=$2; shift ;;
    --version) version=$2; shift ;;
    --project) project=$2; shift ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"; need type "$type"
type=$(normalise_type "$type")
version=${version:-$(runtime_for "$type")}
extra=()
[ -n "$project" ] && extra+=(--project "$project")

if [ "$queued" = 1 ]; then
  [ "$spot" = 1 ] && extra+=(--spot)
  run gcloud compute tpus queued-resources create "$name" --zone "$zone" "${extra[@]}" \
    --node-id "$name" --accelerator-type "$type" --runtime-version "$version"
else
  [ "$spot" = 1 ] && extra+=(--spot)
  run gcloud compute tpus tpu-vm create "$name" --zone "$zone" "${extra[@]}" \
    --accelerator-type "$type" --version "$version"
fi
