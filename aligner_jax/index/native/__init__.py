"""The IVF scan compiled for this CPU (`ivf_scan.cc`), called through ctypes.

`make install` compiles `ivf_scan.cc` into `_ivf_scan.so` beside it (never committed);
`ivf_scan()` returns the library's scan over int8 residual codes once it loads on this CPU,
or None (the NumPy path of `index.ivf` runs then; the reason is logged once).
"""

import ctypes
import functools
import os

from absl import logging
import numpy as np

from aligner_jax.scoring.native import open_library

LIBRARY = os.path.join(os.path.dirname(__file__), "_ivf_scan.so")
BUILD_HINT = "run `make install` (it compiles aligner_jax/index/native/ivf_scan.cc)"

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


@functools.cache
def ivf_scan():
  """The compiled scan over int8 residual codes (argument types set), or None where the
  library cannot run here."""
  lib, problem = open_library(LIBRARY, "the IVF scan kernel", BUILD_HINT)
  if lib is None:
    logging.warning("%s; IVF searches use the NumPy path.", problem)
    return None
  fn = lib.aligner_ivf_scan
  fn.restype = ctypes.c_int
  fn.argtypes = [_I64, _I64, _I64, _I64, _P, _P, _P, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P,
                 _P]
  return fn


def pointer(array: np.ndarray | None) -> int | None:
  """The address of a C-contiguous array's first element (None for None), for the scan."""
  if array is None:
    return None
  if not array.flags.c_contiguous:
    raise ValueError("the IVF scan reads C-contiguous arrays only")
  return array.ctypes.data


def pointer_table(arrays) -> np.ndarray:
  """[len(arrays)] uint64: the addresses of `arrays` (kept alive by the caller)."""
  return np.array([pointer(a) for a in arrays], np.uint64)
