#!/usr/bin/env bash
# One jest_jax run on every worker of a Cloud TPU VM (a single host or a pod).
#
#   launch/tpu_run.sh [OPTIONS] create
#   launch/tpu_run.sh [OPTIONS] run CONFIG WORKDIR [-- OVERRIDES...]
#   launch/tpu_run.sh [OPTIONS] logs | kill | stop | delete
#
#   create   create the TPU VM (--accelerator, --version, --spot)
#   run      copy this checkout to every worker, set up its Python environment
#            there (the TPU build of jax at requirements.lock's version, then
#            the rest of the lock), start `python -m jest_jax.main
#            --distributed=on --config CONFIG OVERRIDES --workdir WORKDIR` on
#            every worker in the background, and stream worker 0's log.
#            WORKDIR must be one place all workers see (gs://BUCKET/...);
#            re-running with the same WORKDIR resumes from its checkpoint.
#   logs     stream worker 0's log again (Ctrl-C stops streaming, not the run)
#   kill     end the run on every worker
#   stop     stop the VM (keeps its disk);  delete: delete it
#
# OPTIONS
#   --tpu NAME          VM name (default $TPU_NAME)
#   --zone ZONE         (default $TPU_ZONE)
#   --project PROJECT   (default: gcloud's configured project)
#   --accelerator TYPE  create: accelerator type (default v5litepod-16)
#   --version VERSION   create: TPU software (runtime) version; default by
#                       the accelerator's family: v6e v2-alpha-tpuv6e, v5p
#                       v2-alpha-tpuv5, v5e/v5litepod v2-alpha-tpuv5-lite,
#                       v4 and older tpu-ubuntu2204-base
#   --spot              create: a spot (preemptible) VM
#   --skip-setup        run: the code and environment are already there
#   --remote-python PY  run: the workers' interpreter (default python3.11,
#                       installed with apt when missing)
#   --dry-run           print every command instead of running it
#
# Example:
#   launch/tpu_run.sh --tpu jest --zone us-west4-a create
#   launch/tpu_run.sh --tpu jest --zone us-west4-a run \
#     configs/tpu_flexi_jest.py:method=flexi_jest gs://my-bucket/runs/flexi \
#     -- --config.data.data_dir=gs://my-bucket/tfds \
#        --config.reference.cache_dir=gs://my-bucket/ref/embeddings/train
#   launch/tpu_run.sh --tpu jest --zone us-west4-a delete
set -euo pipefail

dry_run=0
skip_setup=0
spot=0
tpu="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project=""
accelerator="v5litepod-16"
version=""  # "": chosen from the accelerator's family (runtime_version).
remote_python="python3.11"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --skip-setup) skip_setup=1; shift ;;
    --spot) spot=1; shift ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --remote-python) remote_python="$2"; shift 2 ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1 (launch/tpu_run.sh --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
fail() { echo "error: $*" >&2; exit 2; }

# The TPU VM software version Cloud TPU documents for an accelerator family
# (its "TPU software versions" page, for JAX).
runtime_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5e-*|v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v2-*|v3-*|v4-*) echo "tpu-ubuntu2204-base" ;;
    *) fail "no default software version for accelerator $1; pass --version VERSION" ;;
  esac
}
[[ $# -ge 1 ]] || fail "name an action: create, run, logs, kill, stop or delete (launch/tpu_run.sh --help)"
action="$1"; shift
[[ -n "$tpu" ]] || fail "--tpu NAME (or \$TPU_NAME) is required"
[[ -n "$zone" ]] || fail "--zone ZONE (or \$TPU_ZONE) is required"

cd "$(dirname "$0")/.."

# On the workers: the checkout, its virtual environment and the run's log.
remote_dir="jest_jax"
remote_env="jest_jax_env"
remote_log="jest_jax_run.log"
remote_pid="jest_jax_run.pid"

run() {
  printf '%q ' "$@"; printf '\n'
  if [[ "$dry_run" == 0 ]]; then "$@"; fi
}

tpu_vm=(gcloud compute tpus tpu-vm)
where=("$tpu" "--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")

# Runs a shell command on every worker (or on --worker=N given first).
on_workers() {
  local worker="all"
  if [[ "$1" == --worker=* ]]; then worker="${1#--worker=}"; shift; fi
  run "${tpu_vm[@]}" ssh "${where[@]}" "--worker=$worker" --command "$1"
}

jax_version() {
  local version
  version="$(sed -n 's/^jax==//p' requirements.lock)"
  [[ -n "$version" ]] || fail "requirements.lock pins no jax version"
  echo "$version"
}

copy_code() {
  local archive="${TMPDIR:-/tmp}/jest_jax_code.tar.gz"
  run tar -czf "$archive" --exclude=.git --exclude=.venv --exclude=runs \
    --exclude=data_cache --exclude=__pycache__ --exclude=.pytest_cache .
  run "${tpu_vm[@]}" scp "${where[@]}" --worker=all "$archive" \
    "$tpu:jest_jax_code.tar.gz"
  on_workers "rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf jest_jax_code.tar.gz -C $remote_dir"
}

set_up_environment() {
  local version
  version="$(jax_version)"
  # The lock pins the CPU jaxlib; jax[tpu] at the same version brings the
  # TPU jaxlib and libtpu, and the rest of the lock installs around it.
  on_workers "(command -v $remote_python || (sudo apt-get -qq update && sudo apt-get -qq install -y $remote_python $remote_python-venv)) && $remote_python -m venv $remote_env && $remote_env/bin/pip install -q -U pip && $remote_env/bin/pip install -q 'jax[tpu]==$version' && grep -v -E '^(jax|jaxlib)==' $remote_dir/requirements.lock > lock_without_jax.txt && $remote_env/bin/pip install -q -r lock_without_jax.txt && $remote_env/bin/pip install -q --no-deps -e $remote_dir && $remote_env/bin/pip install -q gcsfs google-cloud-storage"
}

start_run() {
  local config="$1" workdir="$2"; shift 2
  local command
  command="$(printf ' %q' -m jest_jax.main --distributed=on \
    --config "$config" "$@" --workdir "$workdir")"
  # nohup: the run outlives this ssh session (streaming can stop any time).
  on_workers "cd ~/$remote_dir && nohup ~/$remote_env/bin/python$command > ~/$remote_log 2>&1 & echo \$! > ~/$remote_pid"
}

# Streams worker 0's log until its run ends (Ctrl-C: stop streaming only).
follow_log() {
  on_workers --worker=0 "tail -n +1 --pid=\$(cat ~/$remote_pid) -F ~/$remote_log"
}

case "$action" in
  create)
    extra=()
    [[ "$spot" == 1 ]] && extra+=(--spot)
    [[ -n "$version" ]] || version="$(runtime_version "$accelerator")"
    run "${tpu_vm[@]}" create "${where[@]}" "--accelerator-type=$accelerator" \
      "--version=$version" ${extra[@]+"${extra[@]}"}
    ;;
  run)
    [[ $# -ge 2 ]] || fail "run needs CONFIG and WORKDIR (launch/tpu_run.sh --help)"
    config="$1"; workdir="$2"; shift 2
    [[ "${1:-}" == "--" ]] && shift
    if [[ "$workdir" != gs://* ]]; then
      echo "warning: WORKDIR $workdir is not gs://...; on a pod every worker must see the same checkpoints" >&2
    fi
    if [[ "$skip_setup" == 0 ]]; then
      copy_code
      set_up_environment
    fi
    start_run "$config" "$workdir" "$@"
    follow_log
    ;;
  logs) follow_log ;;
  kill) on_workers "test -f ~/$remote_pid && kill \$(cat ~/$remote_pid) || true" ;;
  stop) run "${tpu_vm[@]}" stop "${where[@]}" ;;
  delete) run "${tpu_vm[@]}" delete "${where[@]}" --quiet ;;
  *) fail "unknown action $action: use create, run, logs, kill, stop or delete" ;;
esac
