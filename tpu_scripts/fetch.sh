#!/usr/bin/env bash
# Copies a run's results (reports, metrics, samples; checkpoints optional) from gs:// here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/fetch.sh --workdir gs://... --out DIR [--checkpoints] [--dry-run]

  --workdir DIR   the run's WORKDIR
  --out DIR       local destination
  --checkpoints   also copy checkpoints/ (large)
  --dry-run       print the commands without running them
  -h, --help      this help
USAGE
}

workdir="" out="" ckpt=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) workdir=$2; shift ;;
    --out) out=$2; shift ;;
    --checkpoints) ckpt=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need workdir "$workdir"; need out "$out"
run mkdir -p "$out"
if [ "$ckpt" = 1 ]; then
  run gcloud storage rsync --recursive "$workdir" "$out"
else
  run gcloud storage rsync --recursive --exclude='^checkpoints/' "$workdir" "$out"
fi
