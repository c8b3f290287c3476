"""The one entry point: `python -m aligner_jax.main --gin_file=FILE [...] [--gin.NAME=VALUE ...]`.

A run file in `gin/runs/` chooses what runs by binding `run.job` (e.g. `run.job = @train`
in `gin/runs/train.gin`); any module that registers a job with gin (imported by the run file
with a gin `import` line) can be selected that way. Gin files are looked up relative to the
current directory and to the repository root, so `--gin_file=gin/experiments/demo.gin` works
from anywhere. `--gin.NAME=VALUE` is T5X's shorthand for the binding `NAME = VALUE`.

Before anything touches JAX, the distributed runtime is started when the run spans several
processes (`aligner_jax.train.distributed`). Process 0 writes the full config to
`MODEL_DIR/config.gin` (when the config defines MODEL_DIR); the train job adds the operative
config.
"""

from collections.abc import Callable, Sequence
import os
import pathlib
from typing import Any

from absl import app
from absl import flags
from absl import logging
import gin

from aligner_jax import native_logs
from aligner_jax.io import atomic_write

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_GIN_FILE = flags.DEFINE_multi_string(
    "gin_file", [], "Gin config file(s), applied in order; later files override earlier ones.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings `NAME = VALUE`; `--gin.NAME=VALUE` is the shorthand.")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", [], "Extra directories in which gin files and includes are looked up.")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (a bare `--gin.NAME` is an error)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin."):
      name, sep, value = arg[len("--gin."):].partition("=")
      if not sep or not name:
        raise app.UsageError(f"{arg!r}: expected --gin.NAME=VALUE")
      arg = f"--gin_bindings={name} = {value}"
    out.append(arg)
  return out


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(rewrite_gin_args(argv))
  except (app.UsageError, flags.Error) as e:
    raise SystemExit(f"{argv[0]}: {e}") from None
  _quiet_console()
  return rest


def _quiet_console() -> None:
  """The console shows progress lines, results, the project's warnings and errors.

  Runs after flag parsing and before absl's start-up callbacks, one of which (imported with
  TensorFlow) probes for GPUs. Without an explicit --verbosity, library INFO logs (orbax
  writes several lines per checkpoint) and other libraries' warnings are dropped, and native
  code's INFO output (ScaNN, TensorFlow's CUDA probe) goes to absl INFO; --verbosity=0 brings
  them all back.
  """
  if not flags.FLAGS["verbosity"].present:
    # TensorFlow's own INFO lines at import (CPU features, oneDNN); read when it loads.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(native_logs.ThirdPartyFilter())
  native_logs.hide_gpus_from_tensorflow()


@gin.configurable
def run(job: Callable[[], Any] = gin.REQUIRED) -> Any:
  """Runs the job a run file selected (`run.job = @train`)."""
  return job()


def parse_gin(files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings (files relative to cwd, the search paths, or the repo)."""
  for path in dict.fromkeys([*search_paths, os.getcwd(), str(REPO_ROOT)]):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)


def _write_config(name: str, text: str) -> None:
  try:
    model_dir = gin.query_parameter("%MODEL_DIR")
  except ValueError:
    return  # this config has no MODEL_DIR (e.g. a job that writes nothing)
  if not isinstance(model_dir, str):
    return
  atomic_write(os.path.join(model_dir, name), text)  # parents created; gs:// works as well


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _GIN_FILE.value:
    raise app.UsageError("at least one --gin_file is required (e.g. gin/experiments/demo.gin)")
  from aligner_jax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  try:
    parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
  except (OSError, SyntaxError, ValueError) as e:  # missing file, bad binding, unset macro
    raise SystemExit(f"aligner_jax.main: {e}") from None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    _write_config("config.gin", gin.config_str())
  run()


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
