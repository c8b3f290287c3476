"""Multi-host start-up: `jax.distributed.initialize` when the run spans several processes.

These cases start the distributed runtime (before any other JAX call):
  - explicit: `ALIGNER_COORDINATOR=host:port`, `ALIGNER_NUM_PROCESSES=P` and
    `ALIGNER_PROCESS_ID=i` are set (any machine, e.g. several CPU processes on localhost);
  - `ALIGNER_DISTRIBUTED=auto` (what `launch/run_tpu.sh` sets on Cloud TPU VMs): JAX
    discovers the coordinator and the process ids itself (Cloud TPU metadata, GKE, SLURM);
  - a TPU pod on GKE: `TPU_WORKER_HOSTNAMES` names more than one worker (auto-discovery).
Otherwise the run is a single process and nothing happens.

Only process 0 writes logs, summaries and the operative config (`is_logging_process`);
every process takes part in checkpointing (orbax coordinates the writes).
"""

import os

import jax

_ENV_COORDINATOR = "ALIGNER_COORDINATOR"
_ENV_NUM_PROCESSES = "ALIGNER_NUM_PROCESSES"
_ENV_PROCESS_ID = "ALIGNER_PROCESS_ID"
_ENV_DISTRIBUTED = "ALIGNER_DISTRIBUTED"

_initialized = False


def _env_int(name: str) -> int:
  value = os.environ.get(name)
  if value is None:
    raise ValueError(f"{_ENV_COORDINATOR} is set, so {name} must be set too.")
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer.") from None


def explicit_config() -> tuple[str, int, int] | None:
  """(coordinator, num_processes, process_id) from the ALIGNER_* variables, or None."""
  coordinator = os.environ.get(_ENV_COORDINATOR)
  if not coordinator:
    return None
  if ":" not in coordinator:
    raise ValueError(f"{_ENV_COORDINATOR}={coordinator!r} must be host:port.")
  num_processes = _env_int(_ENV_NUM_PROCESSES)
  process_id = _env_int(_ENV_PROCESS_ID)
  if not 0 <= process_id < num_processes:
    raise ValueError(f"{_ENV_PROCESS_ID}={process_id} must be in [0, {num_processes}).")
  return coordinator, num_processes, process_id


def auto_discovery() -> bool:
  """Whether JAX should discover the cluster itself (ALIGNER_DISTRIBUTED=auto or a GKE pod)."""
  mode = os.environ.get(_ENV_DISTRIBUTED, "")
  if mode not in ("", "auto"):
    raise ValueError(f"{_ENV_DISTRIBUTED}={mode!r}: the only value is 'auto'.")
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  return mode == "auto" or len(hosts) > 1


def initialize() -> None:
  """Starts the distributed runtime if this run spans several processes (idempotent)."""
  global _initialized
  if _initialized:
    return
  config = explicit_config()
  if config is not None:
    coordinator, num_processes, process_id = config
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  elif auto_discovery():
    jax.distributed.initialize()
  _initialized = True


def is_logging_process() -> bool:
  return jax.process_index() == 0
