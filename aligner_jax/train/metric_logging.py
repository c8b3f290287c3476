"""Training metrics: a console line with throughput and ETA, TensorBoard, and a JSONL log.

Every logged step writes
  - one JSON object to `MODEL_DIR/train_metrics.jsonl` (`step`, `loss`, the model's
    metrics such as `accuracy`/`mrr`, `learning_rate`, `grad_norm`, `examples_per_sec`,
    `tokens_per_sec`), flushed at once;
  - the same scalars as TensorBoard summaries (CLU `SummaryWriter`, `MODEL_DIR/train`);
  - a console line `step 40/200 loss 1.234 acc 0.81 mrr 0.88 lr 1e-3 | 512 ex/s 9.1k tok/s |
    ETA 0:01:05`.
Only the process with index 0 writes anything. Logged values are means over the steps
since the previous log (with `log_period=1`: exactly that step's values).

On restart from a checkpoint at step s the JSONL log is cut back to steps <= s (dropping
lines a killed run wrote after its last checkpoint, and a torn last line), so the file
always describes one consistent run.

MODEL_DIR may be a local directory or a cloud path (gs://...): local logs are appended to,
cloud objects (which cannot be appended to) are rewritten whole at each log.
"""

from collections.abc import Mapping
import datetime
import json
import math
import os
import time

from clu import metric_writers
from etils import epath
import numpy as np

from aligner_jax.io import atomic_write
from aligner_jax.io import is_local

JSONL_NAME = "train_metrics.jsonl"


def _kept_lines(path: str, last_step: int) -> list[str]:
  """The complete lines of a JSONL log with `step <= last_step`."""
  p = epath.Path(path)
  if not p.exists():
    return []
  kept = []
  for line in p.read_text(encoding="utf-8").splitlines(keepends=True):
    if not line.endswith("\n"):
      break  # torn write of a killed run
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      break
    if record.get("step", math.inf) <= last_step:
      kept.append(line)
  return kept


def _format_count(x: float) -> str:
  for unit, scale in (("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


class MetricsLogger:
  """Writes the metrics of logged steps (see the module docstring)."""

  def __init__(self, model_dir: str, *, total_steps: int, start_step: int,
               is_writer: bool):
    self.total_steps = total_steps
    self.is_writer = is_writer
    self.path = os.path.join(model_dir, JSONL_NAME)
    self._writer = None
    self._lines: list[str] = []  # the whole log, kept for cloud paths only
    if is_writer:
      epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
      kept = _kept_lines(self.path, start_step)
      atomic_write(self.path, "".join(kept))
      if not is_local(self.path):
        self._lines = kept
      self._writer = metric_writers.AsyncMultiWriter(
          [metric_writers.SummaryWriter(os.path.join(model_dir, "train"))])
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def log(self, step: int, metrics: Mapping[str, float], *, examples: int,
          tokens: int) -> dict[str, float]:
    """Records the metrics of `step`; `examples`/`tokens` were processed since the last log.

    Returns the record written (also on non-writing processes, for callers that want it).
    """
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    steps = max(step - self._last_step, 1)
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in sorted(metrics.items())})
    record["examples_per_sec"] = examples / elapsed
    record["tokens_per_sec"] = tokens / elapsed
    eta = datetime.timedelta(seconds=round(elapsed / steps * (self.total_steps - step)))
    self._last_step, self._last_time = step, now
    if not self.is_writer:
      return record
    line = json.dumps(record) + "\n"
    if is_local(self.path):
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line)
    else:
      self._lines.append(line)
      atomic_write(self.path, "".join(self._lines))
    self._writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
    parts = [f"step {step}/{self.total_steps}", f"loss {record['loss']:.4f}"]
    for key, short in (("accuracy", "acc"), ("mrr", "mrr")):
      if key in record:
        parts.append(f"{short} {record[key]:.3f}")
    if "learning_rate" in record:
      parts.append(f"lr {record['learning_rate']:.2e}")
    print(" ".join(parts)
          + f" | {_format_count(record['examples_per_sec'])} ex/s "
          + f"{_format_count(record['tokens_per_sec'])} tok/s | ETA {eta}", flush=True)
    return record

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()
