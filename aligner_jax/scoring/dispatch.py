"""The one switch between the Pallas kernels and the XLA paths of the scorers.

`method="auto"` (every scorer's default) resolves here, once, outside any jit: the Pallas kernels
(`pallas_align.py`, `pallas_lite.py`) run when the default backend is one they are written for
and no multi-device mesh is active (the kernels are not wrapped for sharded inputs, so under a
mesh the XLA path keeps its partitioning); otherwise the XLA path runs. Asking for "pallas" on
a backend without Pallas lowering (this project's CPU tests) runs the kernels in Pallas
interpret mode, which is how they are tested against the NumPy references.
"""

import jax

from aligner_jax import sharding

AUTO = "auto"
PALLAS = "pallas"
# Backends each kernel is written for: the alignment kernel lowers through Mosaic (TPU) and
# Triton (GPU); separable LITE's hidden widths (e.g. 2400) are not powers of two, which Triton
# blocks must be, so it is TPU only.
ALIGN_BACKENDS = ("tpu", "gpu")
LITE_BACKENDS = ("tpu",)


def resolve(method: str, *, xla: str, allowed: tuple[str, ...], backends: tuple[str, ...],
            name: str) -> str:
  """The concrete method for `method`: "auto" becomes "pallas" or `xla` (see the docstring).

  Args:
    method: what the caller asked for.
    xla: the XLA method "auto" falls back to.
    allowed: the concrete methods the scorer has (including "pallas").
    backends: default backends the scorer's kernel is written for.
    name: the scorer's name, for the error message.
  Returns:
    One of `allowed`.
  """
  if method == AUTO:
    if jax.default_backend() in backends and sharding.active_mesh_size() <= 1:
      return PALLAS
    return xla
  if method not in allowed:
    raise ValueError(f"{name}: method must be one of {(AUTO,) + allowed}, got {method!r}")
  return method


def interpret(backends: tuple[str, ...]) -> bool:
  """Whether a Pallas kernel must run in interpret mode on the current default backend."""
  return jax.default_backend() not in backends
