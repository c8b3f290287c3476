"""The dense layers' CPU kernel, called through the XLA FFI: y = act(x · W + b) in float32.

The kernel (`native/dense_cpu.cc`, compiled by `make install`) packs W once per call into
panels sized for the machine's vector registers, multiplies with the microkernel the alignment
kernel uses (`aligner_jax/scoring/native/simd.h`) on up to as many threads as the machine has
cores, and adds the bias and applies the activation (the identity or the exact GELU, Hugging
Face "gelu") to the accumulators before their last store, so no pass over y follows.

`common.DenseGeneral` calls it when `dispatch.resolve` picks "native" (the CPU backend, no
multi-device mesh, the library built, float32, an activation it fuses). The backward pass
differentiates the caller's XLA path of the same function (`native.with_xla_gradients`).
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.models import native

# Activations (names of common.ACTIVATIONS) the kernel applies as it stores -> its code.
FUSED = {None: 0, "gelu": 1}


def unsupported(x: jax.Array, kernel: jax.Array, activation: str | None) -> str | None:
  """Why the kernel cannot compute this layer (None when it can).

  Args:
    x: the layer's input, in the computation dtype.
    kernel: its kernel, in the computation dtype.
    activation: the activation applied after the bias, or None.
  """
  if activation not in FUSED:
    return f"activation {activation!r} (the kernel fuses {sorted(map(str, FUSED))})"
  for a in (x, kernel):
    if a.dtype != jnp.float32:
      return f"{a.dtype} inputs (the kernel computes in float32)"
  return None


def _call(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
          activation: str | None) -> jax.Array:
  """x [M, K], kernel [K, N], bias [N] or None -> [M, N] through the kernel."""
  m, n = x.shape[0], kernel.shape[1]
  call = jax.ffi.ffi_call(native.DENSE_TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32),
                          vmap_method="sequential")
  b = bias if bias is not None else jnp.zeros((0,), jnp.float32)
  return call(x, kernel, b, activation=np.int32(FUSED[activation]))


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None,
          xla: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array], *, contract: int,
          activation: str | None) -> jax.Array:
  """act(x · kernel + bias) contracting the last `contract` axes of x, through the kernel.

  Args:
    x: [..., *in_shape] float32.
    kernel: [*in_shape, *features] float32, `len(in_shape) == contract`.
    bias: [*features] float32, or None.
    xla: the caller's XLA path of the same function, `xla(x, kernel, bias)`: the backward pass
      differentiates it.
    contract: how many trailing axes of x are contracted.
    activation: None or a name in FUSED.
  Returns:
    [..., *features] float32.
  """
  problem = unsupported(x, kernel, activation)
  if problem:
    raise ValueError(f"the CPU dense kernel does not compute {problem}")
  native.DENSE.require()
  lead, in_shape = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  features = kernel.shape[contract:]
  if kernel.shape[:contract] != in_shape:
    raise ValueError(f"kernel {kernel.shape} does not contract x's trailing axes {in_shape}")
  k, n = math.prod(in_shape), math.prod(features)

  def xla2d(x2, kernel2, bias2):
    y = xla(x2.reshape(x2.shape[:1] + in_shape), kernel2.reshape(kernel.shape),
            None if bias2 is None else bias2.reshape(features))
    return y.reshape(x2.shape[0], n)

  y = native.with_xla_gradients(functools.partial(_call, activation=activation), xla2d,
                                x.reshape(math.prod(lead), k), kernel.reshape(k, n),
                                None if bias is None else bias.reshape(n))
  return y.reshape(lead + features)
