"""The entry point's command line: T5X-style --gin.NAME=VALUE, gin look-up, clear errors."""

import subprocess
import sys

from absl import app
import gin
import pytest
from train_testlib import REPO_ROOT

from aligner_jax import main


def test_gin_shorthand_becomes_bindings():
  argv = ["prog", "--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/x y'", "--gin.train.seed=3",
          "--gin.TASK_FEATURE_LENGTHS={'query_tokens': 8}"]
  assert main.rewrite_gin_args(argv) == [
      "prog", "--gin_file=a.gin", "--gin_bindings=MODEL_DIR = '/tmp/x y'",
      "--gin_bindings=train.seed = 3",
      "--gin_bindings=TASK_FEATURE_LENGTHS = {'query_tokens': 8}"]
  with pytest.raises(app.UsageError, match="expected --gin.NAME=VALUE"):
    main.rewrite_gin_args(["prog", "--gin.MODEL_DIR"])


def test_gin_files_resolve_from_the_repository(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # not the repository: includes still resolve
  gin.clear_config()
  try:
    main.parse_gin(["gin/experiments/demo.gin"], ["TRAIN_STEPS = 7"])
    assert gin.query_parameter("%TRAIN_STEPS") == 7
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "demo_train"
  finally:
    gin.clear_config()


@pytest.mark.parametrize("args,message", [
    ([], "at least one --gin_file is required"),
    (["--gin_file=gin/experiments/no_such.gin"], "Unable to open file"),
    pytest.param(["--gin_file=gin/experiments/aligner_salience.gin"],
                 "MODEL_DIR/macro.value set to `%gin.REQUIRED` but not subsequently overridden",
                 marks=pytest.mark.slow),  # imports every task and model: ~10 s
    (["--gin_file=gin/experiments/demo.gin", "--gin.TRAIN_STEPS"], "expected --gin.NAME=VALUE"),
])
def test_bad_command_lines_fail_with_a_message(args, message):
  result = subprocess.run([sys.executable, "-m", "aligner_jax.main", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
