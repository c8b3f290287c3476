"""The one switch between the kernels and the XLA paths of the scorers and the encoders.

`method="auto"` (every scorer's and dense layer's default) resolves here, when no multi-device
mesh is active (the kernels are not wrapped for sharded inputs, so under a mesh the XLA path
keeps its partitioning); the scorers resolve once outside any jit, the dense layers when they
are traced:
  * the Pallas kernels (`pallas_align.py`, `pallas_lite.py`) when the default backend is one they
    are written for;
  * a compiled CPU kernel ("native") on the CPU backend, for the calls it computes, when
    `make install` built it (its `native.Library` is available; otherwise the XLA path runs and
    the log says so once): the alignment scorers' (`cpu_align.py`), the encoders' dense
    layers' (`aligner_jax/models/cpu_dense.py`) and self-attention's (`models/cpu_attention.py`);
  * the XLA path otherwise.
An explicit method always runs that method. Asking for "pallas" on a backend without Pallas
lowering (this project's CPU tests) runs the kernels in Pallas interpret mode, which is how they
are tested against the NumPy references; asking for "native" without the built kernel, or for a
call it does not compute, is an error.
"""

import jax

from aligner_jax import sharding
from aligner_jax.scoring import native

AUTO = "auto"
PALLAS = "pallas"
NATIVE = "native"
# Backends each kernel is written for: the alignment kernel lowers through Mosaic (TPU) and
# Triton (GPU); separable LITE's hidden widths (e.g. 2400) are not powers of two, which Triton
# blocks must be, so it is TPU only.
ALIGN_BACKENDS = ("tpu", "gpu")
LITE_BACKENDS = ("tpu",)


def resolve(method: str, *, xla: str, allowed: tuple[str, ...], backends: tuple[str, ...],
            name: str, cpu_kernel: native.Library | None = None) -> str:
  """The concrete method for `method`: "auto" becomes "pallas", "native" or `xla` (see the
  docstring).

  Args:
    method: what the caller asked for.
    xla: the XLA method "auto" falls back to.
    allowed: the concrete methods the scorer has (including "pallas").
    backends: default backends the scorer's Pallas kernel is written for.
    name: the scorer's name, for the error message.
    cpu_kernel: the library of the CPU kernel that computes this call (None when the caller has
      none, or it does not compute the call's alignment, shapes or dtypes).
  Returns:
    One of `allowed`.
  """
  if method == AUTO:
    if sharding.active_mesh_size() > 1:
      return xla
    backend = jax.default_backend()
    if backend in backends:
      return PALLAS
    if (backend == "cpu" and cpu_kernel is not None and NATIVE in allowed
        and cpu_kernel.available()):
      return NATIVE
    return xla
  if method not in allowed:
    raise ValueError(f"{name}: method must be one of {(AUTO,) + allowed}, got {method!r}")
  return method


def interpret(backends: tuple[str, ...]) -> bool:
  """Whether a Pallas kernel must run in interpret mode on the current default backend."""
  return jax.default_backend() not in backends
