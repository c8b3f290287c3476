"""Unary token saliences of ALIGNER §3.2: the entropic LP gate (Eq. 3-5), its baselines, pruning.

Conventions:
  * Token axis last: `scores [..., L]`, `mask [..., L]` bool (False = padding). Every output is 0 on
    padding, and padding never takes part in a budget.
  * Budgets `k` are a scalar or `[...]` (one per row) and are clipped to the row's number of valid
    tokens, so a budget larger than the row keeps every valid token.
  * The LP is solved in float32 (float64 for float64 input) and cast back to the input dtype, so
    bfloat16 inputs stay finite at ε = 0.002 with |s| up to 50.
  * Gates map the pre-activation logits z = W d + b to the salience u (zeros on padding):
    `lp_gate` (ALIGNER Eq. 3 with the Eq. 4 gate), `relu_gate` and `hard_topk_gate` (the "ReLU" and
    "Hard" baselines of ALIGNER Fig. 6).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from aligner_jax import sharding
from aligner_jax.scoring import selection

GATES = ("lp", "relu", "hard_topk")
NUM_BISECTIONS = 40  # halvings of the bracket of a: past float32 resolution for |s| ≤ 1e3


def salience_budget(mask: jax.Array, ratio: float) -> jax.Array:
  """k = ⌈ratio · number of valid tokens⌉ per row (ALIGNER §3.2, k = ⌈α · m⌉).

  A row with at least one valid token and ratio > 0 gets k ≥ 1; a row with no valid token gets 0.

  Args:
    mask: [..., L] bool.
    ratio: Python float α in [0, 1].
  Returns:
    [...] int32.
  """
  return selection.ceil_ratio_count(jnp.sum(mask, axis=-1), ratio, name="salience ratio")


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """log Σ_{mask} exp(x) over the last axis; -inf for an empty row; finite gradients."""
  top = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, x, top) - top), 0.0), axis=-1)
  safe = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, jnp.log(safe) + top[..., 0], -jnp.inf)


def _prepare(scores, mask, k):
  """Scores in at least float32, the broadcast bool mask, and the clipped budget [..., 1]."""
  s = scores.astype(jnp.promote_types(scores.dtype, jnp.float32))
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), s.shape)
  n_valid = jnp.sum(mask, axis=-1).astype(s.dtype)
  k = jnp.broadcast_to(jnp.asarray(k, s.dtype), s.shape[:-1])
  k = jnp.clip(k, 0.0, n_valid)
  return s, mask, k[..., None]


def lp_exact_primal(s, mask, k, eps):
  """λ_i = min(1, exp((s_i + a)/ε)) on valid i with a such that Σλ = k (no custom derivative).

  s [..., L] float, mask [..., L] bool, k [..., 1] (already clipped to the valid count), eps a
  Python float; only elementwise passes and last-axis reductions, so kernels reuse it on a tile.

  Σλ is increasing in a, so bisection on a (elementwise passes only; a sort is far slower on
  CPU) brackets the optimum and tells which entries are saturated (λ = 1). Given that set R,
  a has a closed form, a = ε log(k - |R|) - ε log Σ_{i∉R} exp(s_i/ε), evaluated with the largest
  unsaturated score as pivot so that two numbers of size |s|/ε (~2.5e4 at ε = 0.002) never
  cancel in float32. An entry within rounding of the saturation point has λ ≈ 1 either way.
  """
  n_valid = jnp.sum(mask, axis=-1, keepdims=True).astype(s.dtype)
  top = jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1, keepdims=True)
  bottom = jnp.min(jnp.where(mask, s, jnp.inf), axis=-1, keepdims=True)
  ok = (k > 0) & (n_valid > 0)
  top, bottom = jnp.where(ok, top, 0.0), jnp.where(ok, bottom, 0.0)
  # At a = -max s + ε log(k/n) every λ ≤ k/n (Σλ ≤ k); at a = -min s every λ = 1 (Σλ = n ≥ k).
  lo = -top + eps * jnp.log(jnp.where(ok, k / jnp.maximum(n_valid, 1.0), 1.0))
  hi = -bottom

  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    total = jnp.sum(jnp.where(mask, jnp.exp(jnp.minimum((s + mid) / eps, 0.0)), 0.0), axis=-1,
                    keepdims=True)
    short = total < k
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  _, hi = lax.fori_loop(0, NUM_BISECTIONS, halve, (lo, hi))
  saturated = mask & (s + hi >= 0)
  tail = mask & ~saturated
  pivot = jnp.max(jnp.where(tail, s, -jnp.inf), axis=-1, keepdims=True)
  pivot = jnp.where(jnp.isfinite(pivot), pivot, 0.0)
  log_tail = _masked_logsumexp((s - pivot) / eps, tail)[..., None]
  rest = k - jnp.sum(saturated, axis=-1, keepdims=True).astype(s.dtype)
  offset = eps * (jnp.log(jnp.where(rest > 0, rest, 1.0)) - log_tail)  # a + pivot
  lam = jnp.exp(jnp.minimum((s - pivot + offset) / eps, 0.0))
  # Rounding can saturate all k entries (the ε → 0 limit); the tail then has no mass left.
  lam = jnp.where(saturated, 1.0, jnp.where(rest > 0, lam, 0.0))
  return jnp.where(mask & ok, lam, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _lp_exact(s, mask, k, eps):
  return lp_exact_primal(s, mask, k, eps)


@_lp_exact.defjvp
def _lp_exact_jvp(eps, primals, tangents):
  # Implicit differentiation of the optimum: on the free set F (0 < λ < 1) dλ_i = λ_i/ε (ds_i + da),
  # saturated entries stay at 1, and Σ_F dλ = dk fixes da. Bisection has no useful derivative.
  s, mask, k = primals
  ds, _, dk = tangents
  lam = _lp_exact(s, mask, k, eps)
  w = jnp.where(mask & (lam < 1.0), lam, 0.0)
  total = jnp.sum(w, axis=-1, keepdims=True)
  inv_total = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
  mean_ds = jnp.sum(w * ds, axis=-1, keepdims=True) * inv_total
  return lam, w / eps * (ds - mean_ds) + w * inv_total * dk


@functools.partial(jax.jit, static_argnames=("eps",))
def lp_exact(scores: jax.Array, mask: jax.Array, k, *, eps: float = 0.002) -> jax.Array:
  """Exact optimum of the entropy-regularised LP (computed in at least float32).

  Args:
    scores: [..., L] float scores s.
    mask: [..., L] bool.
    k: scalar or [...] budget.
    eps: ε > 0.
  Returns:
    λ: [..., L] float (≥ float32) in [0, 1] with Σ λ = min(k, valid count), 0 on padding.
  """
  # ALIGNER Eq. (4): λ = argmax s·λ + εH(λ) s.t. Σλ = k, 0 ≤ λ ≤ 1.
  s, mask, k = _prepare(scores, mask, k)
  return _lp_exact(s, mask, k, float(eps))


@functools.partial(jax.jit, static_argnames=("eps", "num_iters"))
def lp_coordinate_ascent(scores: jax.Array, mask: jax.Array, k, *, eps: float = 0.002,
                         num_iters: int = 10) -> jax.Array:
  """The paper's iterative solver, in log-space, from a = 0, b = 0 (a-update, then b-update).

  Shapes as in `lp_exact`. Converges slowly at small ε; `lp_exact` is the default.
  """
  s, mask, k = _prepare(scores, mask, k)
  has_budget = k > 0
  log_k = jnp.log(jnp.where(has_budget, k, 1.0))

  def body(_, carry):
    a, b = carry
    # ALIGNER Eq. (5): a' = ε ln k − ε ln Σ_i exp((s_i + b_i)/ε),  b'_i = min(−s_i − a', 0).
    a = eps * log_k - eps * _masked_logsumexp((s + b) / eps, mask)[..., None]
    b = jnp.minimum(-s - a, 0.0)
    return a, b

  a0 = jnp.zeros(k.shape, s.dtype)
  a, b = lax.fori_loop(0, int(num_iters), body, (a0, jnp.zeros_like(s)))
  lam = jnp.exp(jnp.minimum((s + b + a) / eps, 0.0))  # s + b + a ≤ 0 after a b-update
  return jnp.where(mask & has_budget, lam, 0.0)


@functools.partial(jax.jit, static_argnames=("eps", "num_iters"))
def salience_lp(scores: jax.Array, mask: jax.Array, k, *, eps: float = 0.002,
                num_iters: int | None = None) -> jax.Array:
  """Sparse gate λ of ALIGNER Eq. (4): max s·λ + εH(λ) s.t. Σλ = k, 0 ≤ λ ≤ 1 over valid tokens.

  Compiled once per shape, ε and iteration count (`jax.jit`, both static), as are `lp_exact`,
  `lp_coordinate_ascent`, `lp_gate`, `hard_topk_gate` and `prune_tokens`.

  Args:
    scores: [..., L] float (any float dtype; solved in at least float32).
    mask: [..., L] bool; λ = 0 on padding.
    k: scalar or [...] budget per row (clipped to the valid count).
    eps: entropy weight ε > 0.
    num_iters: None for the exact optimum (differentiated implicitly); an int runs that many
      Eq. (5) iterations from a = 0, b = 0 (differentiated by autodiff).
  Returns:
    λ: [..., L] in `scores.dtype`.
  """
  if not eps > 0:
    raise ValueError(f"salience_lp: eps must be > 0, got {eps!r}")
  if num_iters is None:
    lam = lp_exact(scores, mask, k, eps=eps)
  else:
    if int(num_iters) < 1:
      raise ValueError(f"salience_lp: num_iters must be None or >= 1, got {num_iters!r}")
    lam = lp_coordinate_ascent(scores, mask, k, eps=eps, num_iters=num_iters)
  return lam.astype(scores.dtype)


def relu_gate(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """The "ReLU" baseline of ALIGNER Fig. 6: u = ReLU(z), no sparsity constraint.

  Args:
    logits: [..., L] pre-activation z = W d + b.
    mask: [..., L] bool.
  Returns:
    u: [..., L], 0 on padding.
  """
  return jnp.where(mask, jax.nn.relu(logits), 0.0).astype(logits.dtype)


@jax.jit
def hard_topk_gate(logits: jax.Array, mask: jax.Array, k) -> jax.Array:
  """The "Hard" baseline of ALIGNER Fig. 6: keep ReLU(z) on its k largest valid tokens (ε = 0).

  Gradients reach the kept tokens' logits only. Shapes as in `relu_gate`; k scalar or [...].
  """
  s = relu_gate(logits, mask)
  return jnp.where(selection.topk_mask(s, mask, k), s, 0.0).astype(logits.dtype)


@functools.partial(jax.jit, static_argnames=("eps", "num_iters"))
def lp_gate(logits: jax.Array, mask: jax.Array, k, *, eps: float = 0.002,
            num_iters: int | None = None) -> jax.Array:
  """ALIGNER's salience u = λ · ReLU(z) with λ the LP gate on s = ReLU(z).

  As in §3.2, the LP scores are the activated token scores s_i = f(W d_i + b). Shapes as in
  `relu_gate`.
  """
  s = relu_gate(logits, mask)
  lam = salience_lp(s, mask, k, eps=eps, num_iters=num_iters)
  # ALIGNER Eq. (3): u_i = λ_i · f(W d_i + b).
  return lam * s


@functools.partial(jax.jit, static_argnames=("ratio",))
def prune_tokens(mask: jax.Array, salience: jax.Array, ratio: float) -> jax.Array:
  """The tokens kept by pruning ratio β (ALIGNER §3.2): the ⌈β · valid⌉ most salient valid tokens.

  Ties go to the earlier token. Used for β^q (query tokens searched) and β^d (document tokens
  indexed).

  Args:
    mask: [..., L] bool.
    salience: [..., L] float.
    ratio: Python float β in [0, 1].
  Returns:
    kept: [..., L] bool, a subset of `mask`.
  """
  budget = selection.ceil_ratio_count(jnp.sum(mask, axis=-1), ratio, name="pruning ratio")
  return selection.topk_mask(salience, mask, budget)


class SalienceHead(nn.Module):
  """Unary salience u = gate(W d + b) of ALIGNER Eq. (3), one head per side (query/document).

  Attributes:
    ratio: sparsity ratio α; the budget is k = ⌈α · valid length⌉ per row ("lp", "hard_topk").
    eps: entropy weight ε of the LP gate.
    gate: "lp" (ALIGNER), "relu" or "hard_topk" (ALIGNER Fig. 6 baselines).
    num_iters: None for the exact LP, or the number of Eq. (5) iterations.
    in_axis: logical axis name of the token vectors' feature axis.
    dtype: computation dtype of the projection; the gate runs in float32.
  """
  ratio: float
  eps: float = 0.002
  gate: str = "lp"
  num_iters: int | None = None
  in_axis: str = sharding.EMBED
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """tokens [B, L, h], mask [B, L] bool -> u [B, L] float32 (zeros on padding)."""
    if self.gate not in GATES:
      raise ValueError(f"SalienceHead: gate must be one of {GATES}, got {self.gate!r}")
    selection.ratio_fraction(self.ratio, name="SalienceHead ratio")
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, (self.in_axis, None)),
        (tokens.shape[-1], 1), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (None,)), (1,),
                      self.param_dtype)
    tokens, kernel, bias = nn.dtypes.promote_dtype(tokens, kernel, bias, dtype=self.dtype)
    logits = (jnp.einsum("...lh,ho->...lo", tokens, kernel, preferred_element_type=jnp.float32)
              + bias.astype(jnp.float32))[..., 0]
    logits = sharding.constrain(logits, (sharding.BATCH, sharding.LENGTH))
    if self.gate == "relu":
      u = relu_gate(logits, mask)
    else:
      k = salience_budget(mask, self.ratio)
      if self.gate == "hard_topk":
        u = hard_topk_gate(logits, mask, k)
      else:
        u = lp_gate(logits, mask, k, eps=self.eps, num_iters=self.num_iters)
    return sharding.constrain(u, (sharding.BATCH, sharding.LENGTH))
