"""The compiled CPU kernels (XLA FFI) and their loading.

Each kernel library is compiled by `make install` into a `_*.so` beside its source (never
committed). A `Library` opens it once, checks that this CPU has the instruction-set extensions
it was built for (they are built with -march=native, so a copy moved to an older CPU would
fault), and registers its handlers with XLA; `available()` says whether that worked, logging
the reason once when it did not. `ALIGN` is the alignment scorers' kernel (`align_cpu.cc`); the
encoders' kernels live with the models (`aligner_jax/models/native/`). The C++ sources share
`isa.h` (the build's instruction sets), `simd.h` (vectors and the microkernel) and
`parallel.h` (work shared with XLA's thread pool).
"""

import ctypes
import os
import threading

from absl import logging
import jax

TARGET = "aligner_align_scores_cpu"


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


class Library:
  """A compiled library of XLA FFI handlers for the CPU, loaded and registered on first use.

  Attributes:
    path: the `.so`.
    what: its name in messages ("the CPU alignment kernel").
    source: the C++ file `make install` compiles into it, for the build hint.
    handlers: FFI target name -> the handler symbol the library exports.
    fallback: what runs instead when it cannot (the end of the log line).
  """

  def __init__(self, path: str, what: str, source: str, handlers: dict[str, str],
               fallback: str):
    self.path = path
    self.what = what
    self.source = source
    self.handlers = dict(handlers)
    self.fallback = fallback
    self._lock = threading.Lock()
    self._loaded = False
    self._problem: str | None = None
    self._warned = False

  def load(self) -> str | None:
    """Registers the handlers with XLA once; returns None, or why the kernel cannot run."""
    with self._lock:
      if not self._loaded:
        hint = f"run `make install` (it compiles {self.source})"
        lib, self._problem = open_library(self.path, self.what, hint)
        if lib is not None:
          for target, symbol in self.handlers.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
        self._loaded = True
      return self._problem

  def available(self) -> bool:
    """Whether the handlers are registered; logs once, when they are not, what runs instead."""
    problem = self.load()
    if problem and not self._warned:
      self._warned = True
      logging.warning("%s; %s", problem, self.fallback)
    return problem is None

  def require(self) -> None:
    """Raises a clear error when the kernel was asked for explicitly but cannot run."""
    problem = self.load()
    if problem:
      raise RuntimeError(f"method='native' asked for {problem}")


ALIGN = Library(os.path.join(os.path.dirname(__file__), "_align_cpu.so"),
                "the CPU alignment kernel", "aligner_jax/scoring/native/align_cpu.cc",
                {TARGET: "AlignScoresCpu"}, "the scorers use the XLA path on the CPU.")
