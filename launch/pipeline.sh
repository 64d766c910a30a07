#!/usr/bin/env bash
# The JEST pipeline as three CLI commands: train the reference on the
# curated split, cache its embeddings of the training split, train a learner
# that reads them. Each command resumes if re-run.
#
#   launch/pipeline.sh [--dry-run] [--python PY] WORKDIR [CONFIG_ARG] [-- OVERRIDES...]
#
#   WORKDIR      runs land in WORKDIR/reference and WORKDIR/learner
#   CONFIG_ARG   configs/jest.py argument (default method=jest,filter_ratio=0.8)
#   OVERRIDES    --config.x=y flags passed to both training commands
#
# Example:
#   launch/pipeline.sh runs/mine method=jest,steps=3000 -- --config.selection.gain=10
set -euo pipefail

dry_run=0
python="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "error: WORKDIR is required (launch/pipeline.sh --help)" >&2
  exit 2
fi
workdir="$1"; shift
config_arg="method=jest,filter_ratio=0.8"
if [[ $# -gt 0 && "$1" != "--" ]]; then
  config_arg="$1"; shift
fi
[[ "${1:-}" == "--" ]] && shift
overrides=("$@")

run() {
  printf '%q ' "$@"; printf '\n'
  if [[ "$dry_run" == 0 ]]; then "$@"; fi
}

cd "$(dirname "$0")/.."
run "$python" -m jest_jax.main --config configs/reference.py \
  ${overrides[@]+"${overrides[@]}"} --workdir "$workdir/reference"
run "$python" -m jest_jax.cache_reference --workdir "$workdir/reference"
run "$python" -m jest_jax.main --config "configs/jest.py:$config_arg" \
  "--config.reference.cache_dir=$workdir/reference/embeddings/train" \
  "--config.reference.workdir=$workdir/reference" \
  ${overrides[@]+"${overrides[@]}"} --workdir "$workdir/learner"
