#!/usr/bin/env bash
# Watches a run; after a preemption recreates the VM, sets it up and relaunches (it resumes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/watch.sh --name NAME --zone ZONE --type TYPE --gin_file FILE --workdir gs://... [options]

Every --interval seconds: if WORKDIR/state.json says finished, stop; if the TPU VM is gone
or PREEMPTED, delete it, create it again (create.sh), set it up (setup.sh) and launch the
same run (launch.sh), which resumes from WORKDIR.

  --name, --zone, --type, --gin_file, --workdir, --gin, --project, --spot, --queued: as in
                     create.sh / launch.sh (give every --gin of the first launch: the
                     relaunch must run the same config, or the run refuses to resume)
  --interval S       seconds between checks (default 300)
  --once             check once and act, then exit
  --dry-run          print the commands without running them
  -h, --help         this help
USAGE
}

name="" zone="" type="" gin_file="" workdir="" project="" interval=300 once=0
create_flags=()
delete_flags=()
gin_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift ;;
    --zone) zone=$2; shift ;;
    --type) type=$2; shift ;;
    --gin_file) gin_file=$2; shift ;;
    --workdir) workdir=$2; shift ;;
    --gin) gin_flags+=(--gin "$2"); shift ;;
    --project) project=$2; create_flags+=(--project "$2"); shift ;;
    --spot) create_flags+=(--spot) ;;
    --queued) create_flags+=(--queued); delete_flags+=(--queued) ;;
    --interval) interval=$2; shift ;;
    --once) once=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
need name "$name"; need zone "$zone"; need type "$type"; need gin_file "$gin_file"
need workdir "$workdir"
dry=()
[ "$DRY_RUN" = 1 ] && dry=(--dry-run)
extra=()
[ -n "$project" ] && extra=(--project "$project")

while true; do
  if [ "$DRY_RUN" = 0 ] && gcloud storage cat "$workdir/state.json" 2>/dev/null \
      | grep -q '"finished": true'; then
    echo "run in $workdir finished"
    exit 0
  fi
  state="UNKNOWN"
  if [ "$DRY_RUN" = 0 ]; then
    state=$(gcloud compute tpus tpu-vm describe "$name" --zone "$zone" "${extra[@]}" \
      --format='value(state)' 2>/dev/null || echo "GONE")
  else
    run gcloud compute tpus tpu-vm describe "$name" --zone "$zone" "${extra[@]}" \
      --format='value(state)'
    state="PREEMPTED"  # show the recovery commands
  fi
  echo "$(date -u +%FT%TZ) $name: $state"
  case "$state" in
    PREEMPTED|GONE|TERMINATED)
      if [ "$state" != "GONE" ]; then
        # A queued resource is deleted with its VM, so create.sh can queue it again.
        bash "$here/delete.sh" --name "$name" --zone "$zone" "${extra[@]}" \
          "${delete_flags[@]+"${delete_flags[@]}"}" "${dry[@]+"${dry[@]}"}"
      fi
      bash "$here/create.sh" --name "$name" --zone "$zone" --type "$type" \
        "${create_flags[@]+"${create_flags[@]}"}" "${dry[@]+"${dry[@]}"}"
      bash "$here/setup.sh" --name "$name" --zone "$zone" "${extra[@]}" "${dry[@]+"${dry[@]}"}"
      bash "$here/launch.sh" --name "$name" --zone "$zone" "${extra[@]}" --gin_file "$gin_file" \
        --workdir "$workdir" "${gin_flags[@]+"${gin_flags[@]}"}" "${dry[@]+"${dry[@]}"}"
      ;;
  esac
  [ "$once" = 1 ] && exit 0
  sleep "$interval"
done
