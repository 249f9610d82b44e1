#!/usr/bin/env bash
# Launches `rest-jax run` with a gin config on every worker, logging per worker.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/launch.sh --name NAME --zone ZONE --gin_file FILE --workdir gs://... [options]

Starts the same command on every worker (each host joins one JAX job). Output goes to
~/rest_jax/logs/worker-<hostname>.log on each worker. A rerun with the same --workdir
resumes the run where it stopped.

  --name NAME        TPU VM name
  --zone ZONE        its zone
  --gin_file FILE    run config, relative to configs/ (e.g. runs/rest_em_math.gin)
  --workdir DIR      WORKDIR, on gs:// so it outlives the VM
  --gin X=V          an extra gin binding (repeatable)
  --project PROJECT  Google Cloud project (default: gcloud's)
  --dry-run          print the commands without running them
  -h, --help         this help
USAGE
}

name="" zone="" gin_file="" workdir="" project=""
bindings=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --gin_file) gin_file=$2; shift ;;
    --workdir) workdir=$2; shift ;;
    --gin) bindings+=("--gin.$2"); shift ;;
    --project) project=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"; need gin_file "$gin_file"; need workdir "$workdir"

flags=""
for b in "${bindings[@]+"${bindings[@]}"}"; do
  flags+=" $(printf '%q' "$b")"
done
cmd="cd ~/rest_jax && mkdir -p logs && nohup .venv/bin/rest-jax run --gin_file=$gin_file"
cmd+=" --gin.WORKDIR=\"'$workdir'\"$flags > logs/worker-\$(hostname).log 2>&1 &"
ssh_all "$name" "$zone" "$project" "$cmd"
