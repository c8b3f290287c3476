"""End-to-end training through the entry point on the demo task with the tiny T5 ALIGNER.

  * NUM_PARTITIONS=1 and =2 (8 fake devices: 8x1 and 4x2 meshes) give the same losses.
  * A run killed with SIGKILL after a checkpoint and restarted with the same command ends
    with the losses and parameters of an uninterrupted run (to float32 rounding); SIGTERM instead
    makes the run save the step it is at and exit cleanly, and the same command resumes it.
  * Two processes on localhost (4 fake devices each, jax.distributed with a localhost
    coordinator) give the losses of one process with 8 devices.
"""

import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
import train_testlib as lib

from aligner_jax import models
from aligner_jax import partitioning
from aligner_jax.train import model_fns
from aligner_jax.train import optim
from aligner_jax.train import train_job
from aligner_jax.train import trainer as trainer_lib

DEMO = "gin/experiments/demo.gin"


def _bindings(model_dir, *extra):
  return [f"MODEL_DIR = '{model_dir}'", *lib.TINY_DEMO_BINDINGS, *extra]


def _losses(model_dir):
  return np.array([r["loss"] for r in lib.read_metrics(model_dir)])


def _demo_batches(n):
  pipe = train_job.train_pipeline("demo_train", {"query_tokens": 16, "doc_tokens": (2, 32)},
                            batch_size=8, shard_index=0, num_shards=1, seed=0)
  try:
    return [next(pipe) for _ in range(n)]
  finally:
    pipe.close()


@pytest.mark.slow
def test_model_parallel_run_matches_data_parallel_run():
  """The tiny T5 ALIGNER on demo batches: a 8x1 and a 4x2 (data x model) mesh agree."""
  batches = _demo_batches(3)
  module = models.DualEncoder(models.t5_config("tiny", dropout_rate=0.0), projection_dim=16)
  losses, params = {}, {}
  for partitions in (1, 2):
    lr = optim.warmup_rsqrt_decay(peak_value=0.01, warmup_steps=2)
    trainer = trainer_lib.Trainer(
        model_fns.RetrievalModel(module, alignment="top_k:1", loss="softmax_ce"),
        partitioner=partitioning.Partitioner(partitions),
        optimizer=optim.make_optimizer("adafactor", learning_rate=lr), learning_rate_fn=lr)
    state = trainer.init_state(batches[0])
    if partitions == 2:
      kernel = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
      assert "model" in kernel.sharding.spec  # the model axis really splits parameters
    history = []
    for batch in batches:
      state, metrics = trainer.train_step(state, batch)
      history.append(float(metrics["loss"]))
    losses[partitions], params[partitions] = np.array(history), jax.device_get(state.params)
  np.testing.assert_allclose(losses[2], losses[1], rtol=2e-5)
  assert losses[1][-1] < losses[1][0]  # it trains
  for a, b in zip(jax.tree.leaves(params[1]), jax.tree.leaves(params[2]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


_RESUME_STEPS = ("TRAIN_STEPS = 24", "CHECKPOINT_PERIOD = 4", "T5Config.dropout_rate = 0.1")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  """The 24-step run that interrupted and resumed runs must reproduce exactly."""
  full_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
  lib.run_subprocess(lib.main_command([DEMO], _bindings(full_dir, *_RESUME_STEPS)),
                     lib.subprocess_env(8))
  return full_dir


def _interrupt_after_first_checkpoint(model_dir, sig):
  """Starts the 24-step run, sends `sig` once its step-4 checkpoint exists; returns the
  process's exit code."""
  cmd = lib.main_command([DEMO], _bindings(model_dir, *_RESUME_STEPS))
  proc = subprocess.Popen(cmd, cwd=lib.REPO_ROOT, env=lib.subprocess_env(8),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = model_dir / "checkpoints" / "4"
  try:
    while not first.is_dir() and proc.poll() is None:
      time.sleep(0.02)
    proc.send_signal(sig)
  finally:
    proc.wait()
  return proc.returncode


def _assert_resumes_exactly(model_dir, full_dir):
  """The resumed run logs every step once and matches the uninterrupted run step by step.

  Float32 last-bit differences (≈ 7e-7 relative) have been seen between two uninterrupted
  runs of this 8-fake-device job on a heavily loaded machine, even at steps before any
  interruption, so losses and parameters are compared at rtol 1e-5: far below what one wrong
  batch, a repeated step or a lost optimizer state would change (≥ 1e-2).
  """
  lib.run_subprocess(lib.main_command([DEMO], _bindings(model_dir, *_RESUME_STEPS)),
                     lib.subprocess_env(8))  # the same command resumes
  records = lib.read_metrics(model_dir)
  assert [r["step"] for r in records] == list(range(1, 25))
  np.testing.assert_allclose(_losses(model_dir), _losses(full_dir), rtol=1e-5)
  a, b = lib.final_params(full_dir, 24), lib.final_params(model_dir, 24)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_sigkill_and_restart_resumes_exactly(tmp_path, uninterrupted_run):
  killed_dir = tmp_path / "killed"
  code = _interrupt_after_first_checkpoint(killed_dir, signal.SIGKILL)
  assert code == -signal.SIGKILL, "the run finished before it could be killed"
  logged = [r["step"] for r in lib.read_metrics(killed_dir)]
  assert 4 <= max(logged) < 24
  _assert_resumes_exactly(killed_dir, uninterrupted_run)


@pytest.mark.slow
def test_sigterm_checkpoints_where_it_stops_and_resumes_exactly(tmp_path, uninterrupted_run):
  stopped_dir = tmp_path / "stopped"
  code = _interrupt_after_first_checkpoint(stopped_dir, signal.SIGTERM)
  assert code == 0, "SIGTERM must end the run cleanly, after a checkpoint"
  stopped_at = max(r["step"] for r in lib.read_metrics(stopped_dir))
  assert 4 <= stopped_at < 24, "the run finished before it could be stopped"
  saved = sorted(int(p.name) for p in (stopped_dir / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved[-1] == stopped_at  # the step it stopped at is saved, not only the period's
  _assert_resumes_exactly(stopped_dir, uninterrupted_run)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  extra = ("TRAIN_STEPS = 3", "T5Config.dropout_rate = 0.1")
  lib.run_subprocess(lib.main_command([DEMO], _bindings(tmp_path / "one", *extra)),
                     lib.subprocess_env(8))
  port = _free_port()
  cmd = lib.main_command([DEMO], _bindings(tmp_path / "two", *extra))
  procs = [
      subprocess.Popen(cmd, cwd=lib.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=lib.subprocess_env(
                           4, ALIGNER_COORDINATOR=f"localhost:{port}",
                           ALIGNER_NUM_PROCESSES="2", ALIGNER_PROCESS_ID=str(i)))
      for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  assert "step 3/3" in outputs[0][0] and "step" not in outputs[1][0]  # only process 0 logs
  np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=2e-5)
