"""The plain-JAX peer: a short flat-GEMM scorer per variant, jitted, and the JAX GEMM.

Per query: S = (K·m, h) @ (h, n) reshaped [K, m, n]; MaxSim is a masked max over m; top_k /
top_p use `lax.top_k` over full rows of S transposed to [K, n, m] (the straightforward way the
project's fast path is meant to beat); salience uses argmax + gather. Inputs are put on the
device during set-up; every call blocks until its result is ready.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bench.impls import scorer_inputs as si


def _scores(variant: str, top_c: int | None, q, q_mask, d, d_mask, count, q_sal, d_sal):
  """One query: q [n, h], d [K, m, h], count [K] -> [K]."""
  K, m, h = d.shape
  s = (d.reshape(K * m, h) @ q.T).reshape(K, m, -1)
  s = jnp.where(d_mask[:, :, None], s, -jnp.inf)
  qf = q_mask.astype(s.dtype)
  if variant == "top_k:1":
    return jnp.max(s, axis=1) @ qf / qf.sum()
  if variant == "salience":
    j = jnp.argmax(s, axis=1)  # [K, n]
    top = jnp.take_along_axis(s, j[:, None, :], 1)[:, 0]
    w = jnp.take_along_axis(d_sal, j, 1) * q_sal[None, :]
    num, den = (w * top).sum(1), w.sum(1)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
  vals = jax.lax.top_k(jnp.swapaxes(s, 1, 2), top_c)[0]  # [K, n, top_c]
  keep = (jnp.arange(top_c)[None, None, :] < count[:, None, None]) & jnp.isfinite(vals)
  vals = jnp.where(keep, vals, 0.0)
  return vals.sum(-1) @ qf / (qf.sum() * count)


def flat_gemm(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  variant = params["variant"]
  if variant in ("lite", "knrm"):
    raise ValueError("the plain-JAX peer implements the alignment variants only")
  k = si.alignment_k(variant)
  top_c = k if k is not None else si.max_count(variant, params["m"])
  count = si.counts(variant, inputs["d_mask"].sum(-1)).astype(np.float32)  # [B, K]
  B, K, m = inputs["d_mask"].shape
  q_sal = inputs.get("q_sal", np.ones(inputs["q_mask"].shape, np.float32))
  d_sal = inputs.get("d_sal", np.ones((B, K, m), np.float32))
  args = [jax.device_put(x) for x in (inputs["q"], inputs["q_mask"], inputs["d"],
                                      inputs["d_mask"], count, q_sal, d_sal)]
  fn = jax.jit(jax.vmap(lambda *xs: _scores(variant, top_c, *xs)))
  return lambda: fn(*args).block_until_ready()


def gemm(params, inputs):
  a, b = jax.device_put(inputs["a"]), jax.device_put(inputs["b"])
  fn = jax.jit(jnp.dot)
  return lambda: fn(a, b).block_until_ready()
