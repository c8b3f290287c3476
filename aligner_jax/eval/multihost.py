"""Evaluation over several processes (`jax.process_count()` > 1): each process retrieves its
own slice of the judged queries and process 0 gathers what they found.

Process p of P takes the queries [⌊p·Q/P⌋, ⌊(p+1)·Q/P⌋) of the judged list, so every query is
retrieved exactly once and the slices do not depend on anything but Q and P. Gathering is a
collective of JAX's multi-host utilities (`process_allgather` of each process's result as JSON
bytes), so the processes need no shared file system; JSON keeps every float as it was (shortest
round-trip `repr`), so gathered runs equal the runs one process would have written. Only
process 0 writes files.
"""

import json
from typing import Any

import jax
import numpy as np


def process() -> tuple[int, int]:
  """(this process's index, the number of processes)."""
  return jax.process_index(), jax.process_count()


def query_slice(num_queries: int, index: int, count: int) -> slice:
  """The judged queries of process `index` of `count` (see the module docstring)."""
  return slice(index * num_queries // count, (index + 1) * num_queries // count)


def gather_json(value: Any) -> list[Any]:
  """Every process's `value` (JSON-serialisable), in process order, on every process.

  A collective: every process must call it, in the same order as the others.
  """
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(json.dumps(value, allow_nan=False).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array(len(data), np.int64)))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(gathered[i, :int(n)].tobytes().decode("utf-8"))
          for i, n in enumerate(sizes.reshape(-1))]


def broadcast_flag(flag: bool) -> bool:
  """Process 0's `flag` on every process (a collective, like `gather_json`)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.array(flag, np.int32)))


def barrier(name: str) -> None:
  """Waits until every process arrives here (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
