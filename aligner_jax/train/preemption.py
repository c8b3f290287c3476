"""Knowing when to stop early: SIGTERM (the notice a preemptible TPU VM or a scheduler sends
before it evicts the job) makes the train loop save a checkpoint at the next step and return.

Single process: a SIGTERM handler sets a flag, checked once per step.
Several processes: every host must save the *same* step, so the decision comes from JAX's
preemption service (`multihost_utils.reached_preemption_sync_point`), which propagates a
notice received by any host and agrees on the first step all hosts can still reach. Its own
SIGTERM notifier is left in place (a Python handler would replace it).
"""

import signal
import threading
from typing import Any

import jax


def _preemption_service_running() -> bool:
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None


class PreemptionWatch:
  """`should_stop(step)` is True at the step where the run must checkpoint and stop.

  Use as a context manager around the train loop: the previous SIGTERM handler is put back
  on exit. Every process must call `should_stop` at every step (multi-host agreement).
  """

  def __init__(self):
    self._received = threading.Event()
    self._previous: Any = None
    self._multihost = jax.process_count() > 1 and _preemption_service_running()
    self.stopped_at: int | None = None

  def __enter__(self) -> "PreemptionWatch":
    # Signal handlers can only be set from the main thread; elsewhere (a notebook's worker
    # thread) the run simply cannot be stopped by SIGTERM, as before.
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum: int, frame: Any) -> None:
    del signum, frame
    self._received.set()

  def should_stop(self, step: int) -> bool:
    if self._multihost:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._received.is_set()
    if stop:
      self.stopped_at = step
    return stop
