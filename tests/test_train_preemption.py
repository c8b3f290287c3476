"""`PreemptionWatch`: SIGTERM inside the watch asks the loop to stop; outside it, the
previous handler is back."""

import os
import signal

from aligner_jax.train import preemption


def test_sigterm_sets_the_stop_step_and_the_handler_is_restored():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("outer"))
  try:
    with preemption.PreemptionWatch() as watch:
      assert not watch.should_stop(1)
      os.kill(os.getpid(), signal.SIGTERM)
      assert watch.should_stop(2)
      assert watch.stopped_at == 2
    assert not seen  # the watch took the signal, not the outer handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ["outer"]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_without_a_signal_the_run_never_stops():
  with preemption.PreemptionWatch() as watch:
    assert not any(watch.should_stop(step) for step in range(1, 50))
    assert watch.stopped_at is None
