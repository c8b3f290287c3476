"""The encoders' compiled CPU kernels (XLA FFI) and how they are differentiated.

`dense_cpu.cc` and `attention_cpu.cc` are built by `make install` into `_dense_cpu.so` and
`_attention_cpu.so` beside them (never committed) and loaded through
`aligner_jax.scoring.native.Library`. The kernels compute forward passes only:
`with_xla_gradients` differentiates the caller's XLA path of the same function instead, so
gradients (and training) are those of the XLA path.
"""

import functools
import os
from typing import Callable

import jax

from aligner_jax.scoring import native

DENSE_TARGET = "aligner_dense_cpu"
ATTENTION_TARGET = "aligner_attention_cpu"
_HERE = os.path.dirname(__file__)
_FALLBACK = "the encoders use the XLA path for it."

DENSE = native.Library(os.path.join(_HERE, "_dense_cpu.so"), "the CPU dense-layer kernel",
                       "aligner_jax/models/native/dense_cpu.cc", {DENSE_TARGET: "DenseCpu"},
                       _FALLBACK)
ATTENTION = native.Library(os.path.join(_HERE, "_attention_cpu.so"),
                           "the CPU self-attention kernel",
                           "aligner_jax/models/native/attention_cpu.cc",
                           {ATTENTION_TARGET: "AttentionCpu"}, _FALLBACK)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def with_xla_gradients(kernel: Callable[..., jax.Array], xla: Callable[..., jax.Array],
                       *args) -> jax.Array:
  """kernel(*args), differentiated as xla(*args): the same function on the XLA path."""
  del xla
  return kernel(*args)


def _forward(kernel, xla, *args):
  del xla
  return kernel(*args), args


def _backward(kernel, xla, args, grad):
  del kernel
  return jax.vjp(xla, *args)[1](grad)


with_xla_gradients.defvjp(_forward, _backward)
