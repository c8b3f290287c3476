"""The launch scripts' dry runs: every gcloud command of run_tpu.sh, and run_local.sh's commands."""

import shlex
import subprocess

import pytest
from train_testlib import REPO_ROOT

RUN_TPU = str(REPO_ROOT / "launch" / "run_tpu.sh")
RUN_LOCAL = str(REPO_ROOT / "launch" / "run_local.sh")
MAIN_ARGS = ["--gin_file=gin/experiments/aligner_t5_1_1_base_msmarco.gin",
             "--gin.MODEL_DIR='gs://bucket/run 1'", "--gin.TRAIN_STEPS=10"]


def _run(script, *args, check=True):
  result = subprocess.run(["bash", script, *args], capture_output=True, text=True, check=False,
                          timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(cmd):
  """The shell command a `gcloud ... ssh --command=...` runs, split into words."""
  (command,) = [a[len("--command="):] for a in cmd if a.startswith("--command=")]
  return command


def test_run_tpu_dry_run_prints_every_gcloud_command():
  out = _run(RUN_TPU, "--tpu_name=pod", "--zone=us-central2-b", "--accelerator_type=v4-32",
             "--project=proj", "--env=ALIGNER_MSMARCO_DIR=gs://bucket/msmarco", "--dry_run",
             "--", *MAIN_ARGS).stdout
  cmds = _commands(out)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert [c[:5] for c in gcloud] == [["gcloud", "compute", "tpus", "tpu-vm", verb]
                                     for verb in ("describe", "create", "scp", "ssh", "ssh",
                                                  "ssh")]
  for c in gcloud:
    assert "--zone=us-central2-b" in c and "--project=proj" in c
  describe, create, scp, unpack, setup, train = gcloud
  assert describe[5] == "pod" and create[5] == "pod"
  assert "--accelerator-type=v4-32" in create
  assert all("--worker=all" in c for c in (scp, unpack, setup, train))
  tar = next(c for c in cmds if c[0] == "tar")
  assert tar[2] == scp[5] and "--exclude=./.git" in tar and "--exclude=./.venv" in tar
  assert "jax[tpu]==0.10.2" in _remote(setup) and "requirements.lock" in _remote(setup)
  remote = shlex.split(_remote(train))
  start = remote.index("-m")
  assert remote[start - 1] == ".venv/bin/python" and remote[start + 1] == "aligner_jax.main"
  assert remote[start + 2:] == MAIN_ARGS  # the arguments arrive on the workers unchanged
  assert "ALIGNER_DISTRIBUTED=auto" in remote
  assert "ALIGNER_MSMARCO_DIR=gs://bucket/msmarco" in remote


@pytest.mark.parametrize("args,message", [
    (["--zone=z", "--accelerator_type=v4-8", "--", "--gin_file=x"], "--tpu_name is required"),
    (["--tpu_name=t", "--zone=z", "--accelerator_type=v4-8"], "give the main arguments"),
    (["--tpu_name=t", "--zone=z", "--accelerator_type=v4-8", "--bogus", "--", "x"],
     "unknown option --bogus"),
    (["--tpu_name=t", "--zone=z", "--accelerator_type=v4-8", "--env=1X=2", "--", "x"],
     "is not KEY=VALUE"),
])
def test_run_tpu_rejects_bad_arguments(args, message):
  result = _run(RUN_TPU, *args, "--dry_run", check=False)
  assert result.returncode == 2 and message in result.stderr
  assert "gcloud" not in result.stdout


def test_run_local_dry_run_one_process():
  out = _run(RUN_LOCAL, "--tpu_name=ignored", "--num_devices=8", "--dry_run", "--",
             *MAIN_ARGS).stdout
  (line,) = [x for x in out.splitlines() if x.startswith("+ ")]
  words = shlex.split(line[2:])
  assert words[0].startswith("XLA_FLAGS=")
  assert words[0].endswith("--xla_force_host_platform_device_count=8")
  assert words[-len(MAIN_ARGS) - 2:] == ["-m", "aligner_jax.main", *MAIN_ARGS]


def test_run_local_dry_run_several_processes():
  out = _run(RUN_LOCAL, "--num_devices=8", "--num_processes=2", "--dry_run", "--",
             *MAIN_ARGS).stdout
  lines = [shlex.split(x[2:]) for x in out.splitlines() if x.startswith("+ ")]
  assert len(lines) == 2
  for i, words in enumerate(lines):
    env = dict(w.split("=", 1) for w in words if w.startswith(("ALIGNER_", "XLA_FLAGS")))
    assert env["ALIGNER_NUM_PROCESSES"] == "2" and env["ALIGNER_PROCESS_ID"] == str(i)
    assert env["ALIGNER_COORDINATOR"].startswith("localhost:")
    assert env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=4")
    assert words[-len(MAIN_ARGS):] == MAIN_ARGS


def test_run_local_rejects_uneven_split():
  result = _run(RUN_LOCAL, "--num_devices=8", "--num_processes=3", "--dry_run", "--", "x",
                check=False)
  assert result.returncode == 2 and "must be a multiple" in result.stderr
