"""Token similarity and the sparse-alignment score of ALIGNER §2.2 (Eq. 1) and §3 (Eq. 2).

Conventions: `S[..., i, j] = q_i · d_j` (query tokens on the second-to-last axis, document tokens
on the last); alignment matrices `A` have the shape of `S`. Products are accumulated in at least
float32 (`score_dtype`), so bfloat16 token vectors give float32 scores and float64 stays float64.
"""

import jax
import jax.numpy as jnp


def score_dtype(*arrays) -> jnp.dtype:
  """The dtype scores are computed in: the inputs' common float type, at least float32."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def similarity_matrix(q: jax.Array, d: jax.Array) -> jax.Array:
  """All token-pair inner products of one query and one document (batched over leading axes).

  Args:
    q: [..., n, h] query token vectors.
    d: [..., m, h] document token vectors (leading axes broadcast against `q`'s).
  Returns:
    S: [..., n, m] in `score_dtype(q, d)`.
  """
  return jnp.einsum("...nh,...mh->...nm", q, d, preferred_element_type=score_dtype(q, d))


def factorized_alignment(a_tilde: jax.Array, u_q: jax.Array, u_d: jax.Array) -> jax.Array:
  """A from the pairwise alignment and the unary saliences.

  Args:
    a_tilde: [..., n, m] pairwise alignment Ã in [0, 1].
    u_q: [..., n] query token saliences (the query mask as 0/1 when there is no salience).
    u_d: [..., m] document token saliences (likewise).
  Returns:
    A: [..., n, m].
  """
  # ALIGNER Eq. (2): A = Ã ⊙ (u^q ⊗ u^d).
  return a_tilde * (u_q[..., :, None] * u_d[..., None, :])


@jax.custom_jvp
def safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den > 0 and 0 elsewhere, with finite gradients on both branches."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


@safe_ratio.defjvp
def _safe_ratio_jvp(primals, tangents):
  # d(n/d) = (dn - r dd) / d with r = n/d. The quotient rule's -n dd / d² squares d, which
  # underflows to 0 when d is tiny but positive (LP saliences at ε = 0.002 reach Σ A ~ 1e-22)
  # and turns the gradient into inf/NaN; dividing once keeps it finite down to d ~ 1e-38.
  num, den = primals
  d_num, d_den = tangents
  ratio = safe_ratio(num, den)
  ok = den > 0
  inv_den = jnp.where(ok, 1.0 / jnp.where(ok, den, 1.0), 0.0)
  return ratio, (d_num - ratio * d_den) * inv_den


def sparse_alignment_score(s: jax.Array, a: jax.Array) -> jax.Array:
  """sim(Q, D) = Σ S ⊙ A / Σ A, and 0 when Σ A = 0 (a fully pruned document), never NaN.

  Args:
    s: [..., n, m] similarities.
    a: [..., n, m] alignment weights (≥ 0).
  Returns:
    [...] in `score_dtype(s, a)`.
  """
  # ALIGNER Eq. (1): sim(Q, D) = (1/Z) Σ_ij S_ij A_ij with Z = Σ_ij A_ij.
  a = a.astype(score_dtype(s, a))
  return safe_ratio(jnp.sum(s * a, axis=(-2, -1)), jnp.sum(a, axis=(-2, -1)))
