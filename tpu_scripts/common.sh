#!/usr/bin/env bash
# Shared by the tpu_scripts: flag parsing helpers and a runner that honours --dry-run.
# Sourced, not run.

DRY_RUN=${DRY_RUN:-0}

# Prints a command (shell-quoted); runs it unless --dry-run was given.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

need() {
  # need NAME VALUE: fails with a clear message when a required flag is empty.
  [ -n "$2" ] || die "missing required flag --$1 (see --help)"
}

# Default runtime version for an accelerator type.
runtime_for() {
  case "$1" in
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# gcloud calls `v5e-8` `v5litepod-8`.
normalise_type() {
  case "$1" in
    v5e-*) echo "v5litepod-${1#v5e-}" ;;
    *) echo "$1" ;;
  esac
}

ssh_all() {
  # ssh_all NAME ZONE PROJECT COMMAND: runs COMMAND on every worker of the TPU VM.
  local name=$1 zone=$2 project=$3 cmd=$4
  local extra=()
  [ -n "$project" ] && extra=(--project "$project")
  run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${extra[@]}" --worker=all \
    --command "$cmd"
}
