"""The compiled CPU kernels (XLA FFI) and their loading.

`align_cpu.cc` is compiled by `make install` into `_align_cpu.so` beside it (never committed).
`load()` opens the library once, checks that this CPU has the instruction-set extensions it was
built for (it is built with -march=native, so a copy moved to an older CPU would fault), and
registers its handler with XLA; `available()` says whether that worked, logging the reason once
when it did not.
"""

import ctypes
import functools
import os

from absl import logging
import jax

LIBRARY = os.path.join(os.path.dirname(__file__), "_align_cpu.so")
TARGET = "aligner_align_scores_cpu"
BUILD_HINT = "run `make install` (it compiles aligner_jax/scoring/native/align_cpu.cc)"


def _cpu_flags() -> set[str]:
  """The running CPU's feature flags (/proc/cpuinfo), empty where that file does not exist."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def open_library(path: str, what: str, hint: str) -> tuple[ctypes.CDLL | None, str | None]:
  """(the library at `path`, None) once it loads and this CPU has every instruction-set
  extension it was built for (its `aligner_required_isa()`, isa.h), else (None, why not);
  `what` names it and `hint` says how to build it in that message."""
  if not os.path.exists(path):
    return None, f"{what} {path} is not built; {hint}"
  try:
    lib = ctypes.cdll.LoadLibrary(path)
  except OSError as err:
    return None, f"{what} {path} does not load ({err}); {hint}"
  lib.aligner_required_isa.restype = ctypes.c_char_p
  needed = set(lib.aligner_required_isa().decode().split())
  flags = _cpu_flags()
  missing = sorted(needed - flags) if flags else []
  if missing:
    return None, (f"{what} {path} was built for CPU features this CPU lacks "
                  f"({', '.join(missing)}); {hint} on this machine")
  return lib, None


@functools.cache
def load() -> str | None:
  """Registers the kernel with XLA once; returns None, or why the kernel cannot run here."""
  lib, problem = open_library(LIBRARY, "the CPU alignment kernel", BUILD_HINT)
  if lib is None:
    return problem
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.AlignScoresCpu), platform="cpu")
  return None


@functools.cache
def available() -> bool:
  """Whether the kernel is registered; logs once, when it is not, that the XLA path runs."""
  problem = load()
  if problem:
    logging.warning("%s; the scorers use the XLA path on the CPU.", problem)
  return problem is None


def require() -> None:
  """Raises a clear error when the kernel was asked for explicitly but cannot run."""
  problem = load()
  if problem:
    raise RuntimeError(f"method='native' asked for {problem}")
