#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU VM and installs it there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/setup.sh --name NAME --zone ZONE [options]

Puts the project on every worker (~/rest_jax) and runs tpu_scripts/install.sh there
(virtual environment, rest_jax with its [tpu] extra: libtpu pinned by the installed jax, so
jax stays in the supported range; bubblewrap for the code sandbox).

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --project PROJECT  Google Cloud project (default: gcloud's)
  --git URL          clone this repository URL instead of copying the local checkout
  --ref REF          git ref to check out with --git (default: main)
  --dry-run          print the commands without running them
  -h, --help         this help
USAGE
}

name="" zone="" project="" git_url="" ref="main"
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --project) project=$2; shift ;;
    --git) git_url=$2; shift ;;
    --ref) ref=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"
extra=()
[ -n "$project" ] && extra+=(--project "$project")

if [ -n "$git_url" ]; then
  ssh_all "$name" "$zone" "$project" \
    "rm -rf ~/rest_jax && git clone --quiet $git_url ~/rest_jax && git -C ~/rest_jax checkout --quiet $ref"
else
  repo="$(cd "$here/.." && pwd)"
  archive="/tmp/rest_jax-$$.tar.gz"
  run tar -C "$repo" --exclude=.venv --exclude=.git -czf "$archive" .
  run gcloud compute tpus tpu-vm scp "$archive" "$name:/tmp/rest_jax.tar.gz" --zone "$zone" \
    "${extra[@]}" --worker=all
  ssh_all "$name" "$zone" "$project" \
    "rm -rf ~/rest_jax && mkdir -p ~/rest_jax && tar -C ~/rest_jax -xzf /tmp/rest_jax.tar.gz"
fi
ssh_all "$name" "$zone" "$project" \
  "cd ~/rest_jax && bash tpu_scripts/install.sh --tpu"
