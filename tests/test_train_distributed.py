"""Multi-host configuration from the ALIGNER_* environment variables."""

import pytest

from aligner_jax.train import distributed


def test_no_coordinator_means_single_process(monkeypatch):
  monkeypatch.delenv("ALIGNER_COORDINATOR", raising=False)
  assert distributed.explicit_config() is None


def test_explicit_config_is_parsed(monkeypatch):
  monkeypatch.setenv("ALIGNER_COORDINATOR", "localhost:1234")
  monkeypatch.setenv("ALIGNER_NUM_PROCESSES", "2")
  monkeypatch.setenv("ALIGNER_PROCESS_ID", "1")
  assert distributed.explicit_config() == ("localhost:1234", 2, 1)


@pytest.mark.parametrize("coordinator,num,pid,message", [
    ("localhost", "2", "0", "host:port"),
    ("localhost:1", None, "0", "ALIGNER_NUM_PROCESSES must be set"),
    ("localhost:1", "two", "0", "is not an integer"),
    ("localhost:1", "2", "2", r"must be in \[0, 2\)"),
])
def test_bad_explicit_config_is_a_clear_error(monkeypatch, coordinator, num, pid, message):
  monkeypatch.setenv("ALIGNER_COORDINATOR", coordinator)
  for name, value in (("ALIGNER_NUM_PROCESSES", num), ("ALIGNER_PROCESS_ID", pid)):
    if value is None:
      monkeypatch.delenv(name, raising=False)
    else:
      monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=message):
    distributed.explicit_config()


def test_auto_discovery(monkeypatch):
  monkeypatch.delenv("ALIGNER_DISTRIBUTED", raising=False)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert distributed.auto_discovery()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  assert not distributed.auto_discovery()
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  assert not distributed.auto_discovery()
  monkeypatch.setenv("ALIGNER_DISTRIBUTED", "auto")
  assert distributed.auto_discovery()
  monkeypatch.setenv("ALIGNER_DISTRIBUTED", "yes")
  with pytest.raises(ValueError, match="only value is 'auto'"):
    distributed.auto_discovery()
