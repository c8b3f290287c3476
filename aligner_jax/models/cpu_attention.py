"""The encoders' self-attention CPU kernel, called through the XLA FFI, fused: the softmax
weights of a (batch, head) pair never leave the core's caches.

The kernel (`native/attention_cpu.cc`, compiled by `make install`) reads q, k, v as the
projections leave them ([B, L, heads, kv], no transposes) and writes the output in that layout
for the output projection. It computes what `common.attention_weights` followed by
`common.attend` compute for a key-only bias ([B, 1, 1, L], `common.attention_bias`), in
float32, without dropout on the weights.

`common.dot_product_attention` calls it when `dispatch.resolve` picks "native" (the CPU
backend, no multi-device mesh, the library built, a call it computes). The backward pass
differentiates the caller's XLA path (`native.with_xla_gradients`).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from aligner_jax.models import native


def unsupported(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> str | None:
  """Why the kernel cannot compute this attention (None when it can).

  Args:
    q, k, v: [B, L, heads, kv] (self-attention: one shape).
    bias: the additive bias the logits [B, heads, L, L] get.
  """
  for a in (q, k, v, bias):
    if a.dtype != jnp.float32:
      return f"{a.dtype} inputs (the kernel computes in float32)"
  if q.ndim != 4 or not q.shape == k.shape == v.shape:
    return f"q, k, v of shapes {q.shape}, {k.shape}, {v.shape} (it takes one [B, L, heads, kv])"
  if bias.shape != (q.shape[0], 1, 1, q.shape[1]):
    return f"a bias of shape {bias.shape} (it takes a key bias [B, 1, 1, L])"
  return None


def _call(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
  call = jax.ffi.ffi_call(native.ATTENTION_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32),
                          vmap_method="sequential")
  return call(q, k, v, bias.reshape(bias.shape[0], bias.shape[-1]))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
              xla: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
              ) -> jax.Array:
  """softmax(q·kᵀ + bias)·v per head through the kernel.

  Args:
    q, k, v: [B, L, heads, kv] float32 (any 1/sqrt(kv) scaling already applied to q).
    bias: [B, 1, 1, L] float32 key bias.
    xla: the caller's XLA path of the same function, `xla(q, k, v, bias)`: the backward pass
      differentiates it.
  Returns:
    [B, L, heads, kv] float32.
  """
  problem = unsupported(q, k, v, bias)
  if problem:
    raise ValueError(f"the CPU attention kernel does not compute {problem}")
  native.ATTENTION.require()
  return native.with_xla_gradients(_call, xla, q, k, v, bias)
