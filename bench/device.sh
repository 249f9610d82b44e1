#!/usr/bin/env bash
# The accelerator benchmark (bench/device.py) in one command, for a lent GPU machine (H100/H200).
# Takes at most ~8 minutes, so a short booking can run it twice. Prints every figure and the
# BENCHMARKS.md rows, which also go to bench/device_results.md (and $OUT, if set).
#
# That machine has Python 3.12 with jax, flax, optax and orbax, and no internet. What it lacks
# travels as wheels in .whl/ (ignored by git): fetch them here once with
#   bash bench/device.sh --fetch_wheels
# then run there (device tool: carry [".whl"]):
#   bash bench/device.sh
# --dry_run runs every section at toy sizes on the CPU (checks the script; figures meaningless).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pure-Python packages the GPU image lacks (pinned to what this checkout is tested with).
WHEELS=(gin-config==0.5.0 tensorboardX==2.6.5 math-verify==0.9.0
        latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)

case "${1:-}" in
  --fetch_wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0 ;;
  --dry_run) dry=(--dry_run) ;;
  "") dry=() ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "device.sh: unknown argument $1 (expected --fetch_wheels, --dry_run or nothing)" >&2
     exit 2 ;;
esac

py=python3
[ -x .venv/bin/python ] && [ "${#dry[@]}" -gt 0 ] && py=.venv/bin/python
if ! "$py" -c "import gin, tensorboardX, math_verify" 2>/dev/null; then
  [ -d .whl ] || { echo "device.sh: missing packages and no .whl/ (run --fetch_wheels here first)" >&2; exit 2; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/rest_jax_site .whl/*.whl
  export PYTHONPATH="/tmp/rest_jax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=bench/device_results.md
timeout 480 "$py" bench/device.py "${dry[@]}" --out "$out"
if [ -n "${OUT:-}" ]; then cp "$out" "$OUT/"; fi
