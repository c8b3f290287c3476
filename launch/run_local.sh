#!/usr/bin/env bash
# Run aligner_jax.main on this machine with fake CPU devices -- the local twin of run_tpu.sh.
#
#   launch/run_local.sh [--num_devices=8] [--num_processes=1] [--dry_run] \
#     [--tpu_name=... --zone=... --accelerator_type=...] -- <arguments of python -m aligner_jax.main>
#
# --num_devices fake CPU devices in total (XLA_FLAGS=--xla_force_host_platform_device_count);
# with --num_processes=P > 1, P processes each get num_devices / P devices and join through
# jax.distributed with a localhost coordinator (ALIGNER_COORDINATOR, ALIGNER_NUM_PROCESSES,
# ALIGNER_PROCESS_ID), exactly as hosts of a pod do. The TPU options of run_tpu.sh are accepted
# and ignored, so the same command line works for both. --dry_run prints the commands.
set -euo pipefail

source "$(dirname "$0")/common.sh"
usage() { usage_from_header "$0" 12; }

NUM_DEVICES=8 NUM_PROCESSES=1 DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_devices=*) NUM_DEVICES="${1#*=}" ;;
    --num_processes=*) NUM_PROCESSES="${1#*=}" ;;
    --tpu_name=*|--zone=*|--accelerator_type=*|--project=*|--runtime_version=*|--python=*|--env=*) ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "run_local.sh: unknown option $1 (main arguments go after --)" >&2; usage ;;
  esac
  shift
done
if [[ $# -eq 0 ]]; then
  echo "run_local.sh: give the main arguments after --, e.g. -- --gin_file=gin/experiments/demo.gin" >&2
  usage
fi
if ! [[ "$NUM_DEVICES" =~ ^[0-9]+$ && "$NUM_PROCESSES" =~ ^[0-9]+$ ]] || \
   [[ "$NUM_PROCESSES" -lt 1 || $((NUM_DEVICES % NUM_PROCESSES)) -ne 0 ]]; then
  echo "run_local.sh: --num_devices=$NUM_DEVICES must be a multiple of --num_processes=$NUM_PROCESSES" >&2
  exit 2
fi

# A command line; leading NAME=VALUE words stay assignments (only the value is quoted).
command_line() {
  local line="" arg assignments=1
  for arg in "$@"; do
    if [[ $assignments -eq 1 && "$arg" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
      line+="${arg%%=*}=$(shquote "${arg#*=}") "
    else
      assignments=0
      line+="$(shquote "$arg") "
    fi
  done
  printf '%s' "${line% }"
}

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
PER_PROCESS=$((NUM_DEVICES / NUM_PROCESSES))
cd "$REPO"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$PER_PROCESS"

if [[ "$NUM_PROCESSES" -eq 1 ]]; then
  echo "+ $(command_line "XLA_FLAGS=$XLA_FLAGS" "$PY" -m aligner_jax.main "$@")"
  if [[ $DRY_RUN -eq 0 ]]; then exec "$PY" -m aligner_jax.main "$@"; fi
  exit 0
fi

PORT="${ALIGNER_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
PIDS=()
trap 'for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done' INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  echo "+ $(command_line "ALIGNER_COORDINATOR=localhost:$PORT" \
    "ALIGNER_NUM_PROCESSES=$NUM_PROCESSES" "ALIGNER_PROCESS_ID=$i" "XLA_FLAGS=$XLA_FLAGS" \
    "$PY" -m aligner_jax.main "$@")"
  if [[ $DRY_RUN -eq 0 ]]; then
    ALIGNER_COORDINATOR="localhost:$PORT" ALIGNER_NUM_PROCESSES="$NUM_PROCESSES" \
      ALIGNER_PROCESS_ID="$i" "$PY" -m aligner_jax.main "$@" &
    PIDS+=($!)
  fi
done
status=0
for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" || status=$?; done
exit $status
