"""The index job on Apache Beam (DirectRunner, 2 worker processes) through `aligner_jax.main`
and gin/runs/index.gin: the same bytes as the single-process build, and a build killed with
SIGKILL at a random moment continues to the same bytes."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

from index_build_testlib import tree
from index_build_testlib import write_encoded
import pytest

from aligner_jax.eval.index_build import build_index_from_shards
from aligner_jax.index import IndexConfig
from aligner_jax.index import load_index
from aligner_jax.index.index_staging import staging_dir

pytest.importorskip("apache_beam", reason="the 'beam' extra of setup.py is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ScaNN shards of a few hundred tokens each: several tasks per worker.
# Both builds name every setting they share: gin's REFINE_TOKENS default ("all") is not the
# library's IndexConfig default ("kept").
SETTINGS = {"RETRIEVER": "'scann'", "PRUNE_DOC_RATIO": "0.5", "REFINE_TOKENS": "'all'",
            "MAX_SHARD_TOKENS": "400", "index/IndexConfig.expected_k": "50"}
CONFIG = IndexConfig(backend="scann", prune_doc_ratio=0.5, refine_tokens="all",
                     max_shard_tokens=400, expected_k=50)
SIZES = (300, 300, 200)


def index_command(encoded: pathlib.Path, index: pathlib.Path, runner: str) -> list[str]:
  flags = {**SETTINGS, "ENCODED_DIR": f"'{encoded}'", "INDEX_DIR": f"'{index}'",
           "INDEX_RUNNER": f"'{runner}'"}
  return [sys.executable, "-m", "aligner_jax.main", "--gin_file=gin/runs/index.gin",
          *[f"--gin.{k}={v}" for k, v in flags.items()]]


def start(command: list[str], log: pathlib.Path) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  with open(log, "wb") as out:
    # Its own process group, so the Beam worker processes are killed with the driver.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(process: subprocess.Popen, log: pathlib.Path) -> None:
  assert process.wait(timeout=600) == 0, log.read_text()[-4000:]


def kill_group(process: subprocess.Popen) -> None:
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The encoded corpus and its index built in this process, one task after the other."""
  root = tmp_path_factory.mktemp("beam")
  write_encoded(root / "enc", SIZES)
  build_index_from_shards(root / "enc", root / "local", CONFIG, log=lambda m: None)
  return root, tree(root / "local")


@pytest.mark.slow
def test_beam_writes_the_single_process_bytes(reference, tmp_path):
  root, expected = reference
  assert len([n for n in expected if n.endswith("manifest.json")]) >= 6
  log = tmp_path / "beam.log"
  finish(start(index_command(root / "enc", tmp_path / "index", "beam"), log), log)
  assert tree(tmp_path / "index") == expected
  assert load_index(tmp_path / "index").num_docs == sum(SIZES)
  assert "built shard-00000" in log.read_text()


@pytest.mark.slow
def test_killed_beam_build_continues_to_the_same_bytes(reference, tmp_path):
  root, expected = reference
  index = tmp_path / "index"
  staging = staging_dir(index)
  process = start(index_command(root / "enc", index, "beam"), tmp_path / "first.log")
  try:
    deadline = time.time() + 300
    while not any((staging / n / "manifest.json").is_file() for n in ("shard-00000",
                                                                      "shard-00001",
                                                                      "shard-00002")):
      assert process.poll() is None and time.time() < deadline, (
          (tmp_path / "first.log").read_text()[-4000:])
      time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere among the other shards (or publishing)
  finally:
    kill_group(process)
  assert not (index / "index.json").exists(), "the build finished before it could be killed"
  done = sorted(p.name for p in staging.iterdir() if p.name.startswith("shard-"))
  log = tmp_path / "second.log"
  finish(start(index_command(root / "enc", index, "beam"), log), log)
  assert tree(index) == expected
  assert not staging.exists()
  shards = len([n for n in expected if n.endswith("/manifest.json")])
  assert 1 <= len(done) <= shards
  assert log.read_text().count("built shard-") == shards - len(done)  # finished ones kept
