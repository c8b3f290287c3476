"""Pallas kernel of separable LITE (LITE Eq. 3-4): both MLP updates and the readout per matrix.

One grid step scores `MATRICES_PER_STEP` similarity matrices; each [L1, L2′] matrix is updated
row-wise, then column-wise, then read out without leaving VMEM, so the [L1, m₂] and [m₁, L2′]
hidden activations and S′, S″ never go to HBM. The math is `lite.block_apply` itself, with the
weights laid out by `lite.oriented_block` (rows multiply on the right, columns on the left), so
no transpose of S is needed inside the kernel. The weights are whole blocks with a constant
index map: they are copied into VMEM once and stay there.

Written for TPU (`dispatch.LITE_BACKENDS`); on other backends it runs in interpret mode. The
backward pass is that of the XLA path (`lite.separable_apply`), recomputed.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from aligner_jax.scoring import dispatch
from aligner_jax.scoring import lite

MATRICES_PER_STEP = 8
VMEM_HEADROOM = 8 << 20  # bytes above the double-buffered blocks for the activations


def _kernel(s_ref, *refs, matrices, dtype):
  """refs: 8 row weights, 8 column weights, w [L1, L2′], then the output [matrices, 1, 1]."""
  row = tuple(r[...] for r in refs[:8])
  col = tuple(r[...] for r in refs[8:16])
  acc = jnp.promote_types(dtype, jnp.float32)
  w = refs[16][...].astype(dtype).astype(acc)
  out_ref = refs[17]

  def one(t, carry):
    s1 = lite.block_apply(row, s_ref[t], axis=-1, dtype=dtype, constrain=False)
    s2 = lite.block_apply(col, s1, axis=-2, dtype=dtype, constrain=False)
    # LITE §3: wᵀ vec(S″), products of dtype values accumulated in float32 as `lite.readout`.
    total = jnp.sum(s2.astype(acc) * w, axis=(0, 1), keepdims=True)
    out_ref[t] = total.astype(out_ref.dtype)
    return carry

  lax.fori_loop(0, matrices, one, 0)


def _compiler_params(footprint: int):
  if jax.default_backend() != "tpu":
    return None
  from jax.experimental.pallas import tpu as pltpu
  return pltpu.CompilerParams(dimension_semantics=("parallel",),
                              vmem_limit_bytes=2 * footprint + VMEM_HEADROOM)


def _forward(row, col, w, S, dtype):
  lead, (l1, l2) = S.shape[:-2], S.shape[-2:]
  flat = S.reshape(-1, l1, l2).astype(dtype)
  num = flat.shape[0]
  tb = min(MATRICES_PER_STEP, num)
  padded = -(-num // tb) * tb
  flat = jnp.pad(flat, ((0, padded - num), (0, 0), (0, 0)))
  weights = list(lite.oriented_block(row, -1)) + list(lite.oriented_block(col, -2))
  weights.append(w.reshape(l1, l2))
  footprint = sum(x.size * x.dtype.itemsize for x in weights) + tb * l1 * l2 * flat.itemsize
  whole = lambda x: pl.BlockSpec(x.shape, lambda i: (0, 0))  # noqa: E731
  out = pl.pallas_call(
      functools.partial(_kernel, matrices=tb, dtype=dtype), grid=(padded // tb,),
      in_specs=[pl.BlockSpec((tb, l1, l2), lambda i: (i, 0, 0))] + [whole(x) for x in weights],
      out_specs=pl.BlockSpec((tb, 1, 1), lambda i: (i, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((padded, 1, 1), dtype),
      compiler_params=_compiler_params(footprint),
      interpret=dispatch.interpret(dispatch.LITE_BACKENDS))(flat, *weights)
  return out[:num, 0, 0].reshape(lead)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _scores(row, col, w, S, dtype):
  return _forward(row, col, w, S, dtype)


def _scores_fwd(row, col, w, S, dtype):
  return _forward(row, col, w, S, dtype), (row, col, w, S)


def _scores_bwd(dtype, residuals, grad):
  _, vjp = jax.vjp(lambda *args: lite.separable_apply(*args, dtype=dtype), *residuals)
  return vjp(grad)


_scores.defvjp(_scores_fwd, _scores_bwd)


def separable_scores(row: dict, col: dict, w: jax.Array, S: jax.Array, *, dtype) -> jax.Array:
  """`lite.separable_apply` through the kernel.

  Args:
    row: the row block's parameters ({dense_a, norm_a, dense_b, norm_b}, L2′ features).
    col: the column block's parameters (L1 features).
    w: [L1 · L2′] readout weights.
    S: [..., L1, L2′] zero-padded similarities.
    dtype: computation dtype.
  Returns:
    [...] scores in dtype.
  """
  return _scores(row, col, w, S, jnp.dtype(dtype))
