"""Native stderr output goes to absl INFO, or back to the console when the block fails."""

import os
import sys

from absl import logging
import pytest

from aligner_jax import native_logs


def test_native_output_becomes_an_info_record(capfd, monkeypatch):
  records = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: records.append(fmt % args))
  with native_logs.native_stderr_to_log("writer"):
    os.write(2, b"I0000 partitioner says hello\n")
  assert capfd.readouterr().err == ""
  assert records == ["writer wrote:\nI0000 partitioner says hello"]


def test_a_failing_block_gives_its_output_back(capfd):
  with pytest.raises(RuntimeError, match="broken"):
    with native_logs.native_stderr_to_log("writer"):
      os.write(2, b"the reason it broke\n")
      raise RuntimeError("broken")
  assert "the reason it broke" in capfd.readouterr().err
  print("still", file=sys.stderr)
  assert capfd.readouterr().err == "still\n"  # fd 2 is the console again


def test_third_party_records_below_error_are_dropped():
  f = native_logs.ThirdPartyFilter()

  def record(path, level):
    return logging.logging.LogRecord("absl", level, path, 1, "m", (), None)

  assert not f.filter(record("/x/site-packages/orbax/checkpoint/checkpoint.py", 30))
  assert f.filter(record("/x/site-packages/orbax/checkpoint/checkpoint.py", 40))
  assert f.filter(record("/repo/aligner_jax/train/trainer.py", 30))
