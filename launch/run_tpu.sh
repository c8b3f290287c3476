#!/usr/bin/env bash
# Train (or run any aligner_jax.main job) on a Cloud TPU VM or pod slice.
#
#   launch/run_tpu.sh --tpu_name=NAME --zone=ZONE --accelerator_type=v4-32 \
#     [--project=PROJECT] [--runtime_version=tpu-ubuntu2204-base] [--python=python3.11] \
#     [--env=KEY=VALUE ...] [--dry_run] -- <arguments of python -m aligner_jax.main>
#
# 1. creates the TPU VM, or reuses it when `describe` finds it;
# 2. copies this repository (without .git, .venv, runs/) to every worker;
# 3. sets up a virtualenv with the pinned dependencies and the TPU build of jax on every
#    worker (idempotent: skipped when the same setup.py/requirements.lock are installed);
# 4. runs `python -m aligner_jax.main <arguments>` on --worker=all; jax.distributed discovers
#    the pod's hosts itself (ALIGNER_DISTRIBUTED=auto), each host reads its own data shard.
# --dry_run prints every command (gcloud and local) instead of running it.
# MODEL_DIR must be shared by all workers on a pod (e.g. gs://bucket/run); --env passes
# variables such as ALIGNER_MSMARCO_DIR or ALIGNER_T5_VOCAB to the job.
set -euo pipefail

source "$(dirname "$0")/common.sh"
usage() { usage_from_header "$0" 16; }

TPU_NAME="" ZONE="" ACCELERATOR_TYPE="" PROJECT="" DRY_RUN=0
RUNTIME_VERSION="tpu-ubuntu2204-base"
PYTHON="python3.11"
JAX_VERSION="0.10.2"
ENVS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu_name=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --runtime_version=*) RUNTIME_VERSION="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --env=*) ENVS+=("${1#*=}") ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "run_tpu.sh: unknown option $1 (main arguments go after --)" >&2; usage ;;
  esac
  shift
done
MAIN_ARGS=("$@")
for required in TPU_NAME ZONE ACCELERATOR_TYPE; do
  if [[ -z "${!required}" ]]; then
    echo "run_tpu.sh: --$(echo "$required" | tr 'A-Z' 'a-z') is required" >&2
    usage
  fi
done
if [[ ${#MAIN_ARGS[@]} -eq 0 ]]; then
  echo "run_tpu.sh: give the main arguments after --, e.g. -- --gin_file=gin/experiments/demo.gin" >&2
  usage
fi
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  if [[ ! "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    echo "run_tpu.sh: --env=$kv is not KEY=VALUE" >&2
    exit 2
  fi
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR="aligner_jax"
TARBALL="${TMPDIR:-/tmp}/aligner_jax-${TPU_NAME}.tar.gz"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then WHERE+=(--project="$PROJECT"); fi

# Prints a command as one shell-quoted line; runs it unless --dry_run.
run() {
  local line="+" arg
  for arg in "$@"; do line+=" $(shquote "$arg")"; done
  echo "$line"
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

ssh_all() {
  run "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"
}

# 1. Create or reuse the TPU VM.
if [[ $DRY_RUN -eq 1 ]]; then
  run "${GCLOUD_TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" '--format=value(state)' 
  echo "# only when describe finds no TPU VM:"
  run "${GCLOUD_TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
elif state="$("${GCLOUD_TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null)"; then
  echo "reusing TPU VM $TPU_NAME (state $state)"
else
  run "${GCLOUD_TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi

# 2. Copy the repository to every worker.
run tar -czf "$TARBALL" -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./runs \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis .
run "${GCLOUD_TPU[@]}" scp "$TARBALL" "$TPU_NAME:~/$REMOTE_DIR.tar.gz" "${WHERE[@]}" --worker=all
ssh_all "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$REMOTE_DIR.tar.gz -C ~/$REMOTE_DIR"

# 3. The environment: pinned dependencies, then the TPU build of jax (libtpu).
SETUP="set -e; cd ~/$REMOTE_DIR; \
command -v $PYTHON >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q $PYTHON $PYTHON-venv); \
stamp=\$(cat setup.py requirements.lock | sha256sum | cut -c1-16); \
if [ \"\$(cat .venv/.tpu-installed 2>/dev/null)\" != \"\$stamp\" ]; then \
$PYTHON -m venv .venv && .venv/bin/pip install -q -c requirements.lock -e . && \
.venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html && \
echo \$stamp > .venv/.tpu-installed; fi"
ssh_all "$SETUP"

# 4. Run the same command on every worker.
QUOTED_ARGS=""
for arg in "${MAIN_ARGS[@]}"; do QUOTED_ARGS+="$(shquote "$arg") "; done
ENV_PREFIX="ALIGNER_DISTRIBUTED=auto"
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  ENV_PREFIX+=" ${kv%%=*}=$(shquote "${kv#*=}")"
done
ssh_all "cd ~/$REMOTE_DIR && $ENV_PREFIX .venv/bin/python -m aligner_jax.main ${QUOTED_ARGS% }"
