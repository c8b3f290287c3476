"""Keeps third-party chatter off the console: what native code prints to file descriptor 2
(ScaNN's abseil INFO lines, TensorFlow's CUDA probe) and Python warnings of other libraries.

`native_stderr_to_log()` runs a block with fd 2 pointed at a private temporary file; what the
native code wrote there is handed to absl logging at INFO afterwards (shown with
`--verbosity=0`), or written back to the console when the block raises, so a failure keeps its
explanation. `hide_gpus_from_tensorflow()` makes TensorFlow, which only feeds data here, see
no GPU (it must not take accelerator memory that JAX uses); on a machine without CUDA its
probe's `failed call to cuInit` line goes to the INFO log instead of the console.
`ThirdPartyFilter` is an absl-handler filter: records below ERROR from modules outside the
project are dropped.
"""

from collections.abc import Iterator
import contextlib
import logging as std_logging
import os
import sys
import tempfile

from absl import logging

_PROJECT_DIRS = ("aligner_jax", "tasks", "repro", "bench")


@contextlib.contextmanager
def native_stderr_to_log(what: str) -> Iterator[None]:
  """Sends what native code writes to fd 2 inside the block to absl INFO (`what` names it).

  On an exception the captured text goes back to stderr before the exception propagates.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", "replace").strip()
      if text and failed:
        print(text, file=sys.stderr, flush=True)
      elif text:
        logging.info("%s wrote:\n%s", what, text)


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (tf.data, summaries) sees no GPU; its CUDA probe's output goes to absl INFO."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  with native_stderr_to_log("TensorFlow's device probe"):
    tf.config.set_visible_devices([], "GPU")


class ThirdPartyFilter(std_logging.Filter):
  """Passes the project's records at any level and other libraries' from ERROR up."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR:
      return True
    parts = os.path.normpath(record.pathname).split(os.sep)
    return any(p in _PROJECT_DIRS for p in parts[-4:-1])
