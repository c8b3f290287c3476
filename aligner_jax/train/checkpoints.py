"""Orbax checkpoints of the train state together with the data pipeline position.

Layout: `MODEL_DIR/checkpoints/<step>/{state,data}`. `state` is the train state (sharded
arrays, restored directly into the shardings of the running mesh); `data` is a JSON object
`{"num_processes": P, "hosts": [state of process 0, ..., state of process P-1]}`, every
host's pipeline state, gathered to all processes before the save because each host reads
its own shard of the data.

Saves are periodic (`period` steps), asynchronous (training continues while arrays are
written), keep the newest `keep` checkpoints, and atomic: orbax writes into a temporary
directory and renames it when complete, so a run killed at any moment leaves only whole
checkpoints, and unfinished temporary directories are removed on the next start.
"""

import json
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp


def _gather_host_states(local_state: Any) -> list[Any]:
  """Every process's JSON-serialisable pipeline state, in process order, on every process."""
  encoded = json.dumps(local_state, sort_keys=True).encode("utf-8")
  if jax.process_count() == 1:
    return [json.loads(encoded)]
  lengths = multihost_utils.process_allgather(np.array([len(encoded)], np.int32))
  longest = int(np.max(lengths))
  padded = np.zeros((longest,), np.uint8)
  padded[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  gathered = multihost_utils.process_allgather(padded)
  return [
      json.loads(bytes(gathered[i, :int(lengths[i, 0])]).decode("utf-8"))
      for i in range(jax.process_count())
  ]


class Checkpointer:
  """Periodic, asynchronous, keep-N, atomic checkpoints of (train state, pipeline states)."""

  def __init__(self, directory: str, *, period: int, keep: int | None = 3,
               async_save: bool = True):
    if period < 1:
      raise ValueError(f"CHECKPOINT_PERIOD must be >= 1, got {period}.")
    # Cloud paths (gs://...) go to orbax as they are; local ones are made absolute.
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.period = period
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
    """Saves at multiples of `period` (or always with `force`); returns whether it saved.

    Every process must call this at every step (the host states are gathered collectively).
    """
    if not (force or step % self.period == 0) or step in self._manager.all_steps():
      return False
    hosts = _gather_host_states(data_state)
    data = {"num_processes": jax.process_count(), "hosts": hosts}
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data)),
        force=True)  # the period is decided above, not by orbax's first-step rule

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """(train state in the shardings of `abstract_state`, this process's pipeline state).

    Args:
      step: the checkpoint step.
      abstract_state: `ShapeDtypeStruct`s with `.sharding` for every leaf of the state.
    """
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                data=ocp.args.JsonRestore()))
    data = restored["data"]
    if data["num_processes"] != jax.process_count():
      raise ValueError(
          f"{self.directory}/{step}: checkpoint was written by {data['num_processes']} "
          f"processes, this run has {jax.process_count()}; the data pipeline position "
          "cannot be resumed with a different number of hosts.")
    return restored["state"], data["hosts"][jax.process_index()]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
