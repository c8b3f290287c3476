"""Hard top-k selection and exact ratio counts, shared by the alignment scorers and salience gates.

Conventions:
  * The selection axis is the last axis; `mask` (bool) is broadcastable to the scores and masked
    positions are never selected.
  * Ties are broken towards the lower index, so every selection is deterministic and the fast
    scorers can reproduce it exactly.
  * Ratios (ALIGNER's α, β and top-p's p) are Python floats read as the nearest fraction with a
    denominator of at most `MAX_RATIO_DENOMINATOR`, so ⌈0.4 · 10⌉ is 4 and not 5 even though
    0.4 · 10 rounds to 4.000000000000001 in binary floating point.
"""

import fractions

import jax
import jax.numpy as jnp

MAX_RATIO_DENOMINATOR = 10_000


def ratio_fraction(ratio: float, *, name: str = "ratio") -> fractions.Fraction:
  """`ratio` in [0, 1] as an exact fraction (see the module docstring)."""
  if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
    raise ValueError(f"{name} must be a Python number in [0, 1], got {ratio!r}")
  if not 0.0 <= float(ratio) <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {ratio!r}")
  return fractions.Fraction(float(ratio)).limit_denominator(MAX_RATIO_DENOMINATOR)


def ceil_ratio_count(length: jax.Array, ratio: float, *, name: str = "ratio") -> jax.Array:
  """⌈ratio · length⌉ in exact integer arithmetic.

  Args:
    length: [...] int, number of valid tokens per row.
    ratio: Python float in [0, 1].
  Returns:
    [...] int32.
  """
  frac = ratio_fraction(ratio, name=name)
  length = jnp.asarray(length, jnp.int32)
  return (frac.numerator * length + frac.denominator - 1) // frac.denominator


def floor_ratio_count(length: jax.Array, ratio: float, *, name: str = "ratio") -> jax.Array:
  """⌊ratio · length⌋ in exact integer arithmetic; shapes as in `ceil_ratio_count`."""
  frac = ratio_fraction(ratio, name=name)
  length = jnp.asarray(length, jnp.int32)
  return (frac.numerator * length) // frac.denominator


def descending_rank(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Rank of every position among the valid ones, 0 = largest; ties go to the lower index.

  Args:
    scores: [..., L] float.
    mask: bool, broadcastable to `scores`.
  Returns:
    [..., L] int32; masked positions rank after every valid one.
  """
  mask = jnp.broadcast_to(mask, scores.shape)
  # Adding 0.0 folds -0.0 into 0.0 so that the two never count as different values.
  key = jnp.where(mask, -(scores + 0.0), jnp.inf)
  order = jnp.argsort(key, axis=-1, stable=True)
  positions = jnp.broadcast_to(jnp.arange(scores.shape[-1], dtype=jnp.int32), scores.shape)
  return jnp.put_along_axis(
      jnp.zeros(scores.shape, jnp.int32), order, positions, axis=-1, inplace=False)


def topk_mask(scores: jax.Array, mask: jax.Array, k: jax.Array | int) -> jax.Array:
  """The k largest valid entries of every row (ties to the lower index).

  Args:
    scores: [..., L] float.
    mask: bool, broadcastable to `scores`.
    k: int or [...] int per row; rows with fewer than k valid entries select all of them.
  Returns:
    [..., L] bool.
  """
  mask = jnp.broadcast_to(mask, scores.shape)
  k = jnp.asarray(k)[..., None]
  return mask & (descending_rank(scores, mask) < k)
