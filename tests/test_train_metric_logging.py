"""The metrics logger: JSONL records, resume truncation, TensorBoard events, console line."""

import glob
import json
import os

import pytest

from aligner_jax.train import metric_logging


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_writes_one_record_per_logged_step_and_a_console_line(tmp_path, capsys):
  logger = metric_logging.MetricsLogger(str(tmp_path), total_steps=4, start_step=0, is_writer=True)
  for step in range(1, 5):
    logger.log(step, {"loss": 1.0 / step, "accuracy": 0.5, "mrr": 0.6, "learning_rate": 1e-3},
               examples=8, tokens=100)
  logger.close()
  records = _read(tmp_path / metric_logging.JSONL_NAME)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert records[1]["loss"] == pytest.approx(0.5)
  assert records[0]["examples_per_sec"] > 0 and records[0]["tokens_per_sec"] > 0
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 4
  assert out[-1].startswith("step 4/4 loss 0.2500 acc 0.500 mrr 0.600 lr 1.00e-03 |")
  assert "ex/s" in out[-1] and "tok/s" in out[-1] and "ETA 0:00:00" in out[-1]
  assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))


def test_restart_cuts_the_log_back_to_the_checkpoint(tmp_path):
  path = tmp_path / metric_logging.JSONL_NAME
  lines = [json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(1, 8)]
  path.write_text("".join(lines) + '{"step": 8, "lo')  # a torn last line from a kill
  logger = metric_logging.MetricsLogger(str(tmp_path), total_steps=10, start_step=5, is_writer=True)
  assert [r["step"] for r in _read(path)] == [1, 2, 3, 4, 5]
  logger.log(6, {"loss": 0.25}, examples=1, tokens=1)
  logger.close()
  assert [r["step"] for r in _read(path)] == [1, 2, 3, 4, 5, 6]


def test_non_writing_process_writes_nothing(tmp_path, capsys):
  logger = metric_logging.MetricsLogger(str(tmp_path / "m"), total_steps=2, start_step=0,
                                 is_writer=False)
  record = logger.log(1, {"loss": 2.0}, examples=4, tokens=4)
  logger.close()
  assert record["loss"] == 2.0
  assert not os.path.exists(tmp_path / "m")
  assert capsys.readouterr().out == ""
