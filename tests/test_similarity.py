"""`safe_ratio`, the Σ S⊙A / Σ A quotient of ALIGNER Eq. (1): values and gradients at tiny Σ A."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np

from aligner_jax.scoring import salience as salience_lib
from aligner_jax.scoring import similarity


def test_safe_ratio_values_and_gradients_match_the_quotient_rule():
  num = np.array([1.0, 2.0, 0.5, -3.0])
  den = np.array([2.0, 0.0, 3.0, 0.25])
  ratio = similarity.safe_ratio(jnp.asarray(num), jnp.asarray(den))
  np.testing.assert_allclose(ratio, [0.5, 0.0, 0.5 / 3.0, -12.0], rtol=1e-6)
  g_num, g_den = jax.grad(lambda n, d: jnp.sum(similarity.safe_ratio(n, d)), argnums=(0, 1))(
      jnp.asarray(num), jnp.asarray(den))
  ok = den > 0
  np.testing.assert_allclose(g_num, np.where(ok, 1.0 / np.where(ok, den, 1.0), 0.0), rtol=1e-6)
  np.testing.assert_allclose(
      g_den, np.where(ok, -num / np.where(ok, den, 1.0) ** 2, 0.0), rtol=1e-6)
  check_grads(similarity.safe_ratio, (jnp.asarray(num), jnp.asarray(den) + 1.0), order=2,
              modes=["fwd", "rev"], atol=1e-2, rtol=1e-2)


def test_tiny_positive_denominator_keeps_gradients_finite():
  # Σ A ~ 1e-22: the plain quotient rule squares it to 0 in float32 and returns inf/NaN.
  num = jnp.array([3e-22], jnp.float32)
  den = jnp.array([4e-22], jnp.float32)
  g_num, g_den = jax.grad(lambda n, d: jnp.sum(similarity.safe_ratio(n, d)), argnums=(0, 1))(
      num, den)
  assert np.isfinite(g_num).all() and np.isfinite(g_den).all()
  np.testing.assert_allclose(g_num, [2.5e21], rtol=1e-5)
  np.testing.assert_allclose(g_den, [-0.75 / 4e-22], rtol=1e-5)


def test_score_with_near_zero_lp_saliences_has_finite_gradients():
  """The failure seen in training: LP saliences at ε = 0.002 far below 1 on every token."""
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(5,)) * 0.01 - 0.1, jnp.float32)

  def score(logits):
    mask = jnp.ones((5,), bool)
    lam = salience_lib.salience_lp(logits, mask, 2, eps=0.002)
    u_d = lam * jnp.exp(-50.0) * jax.nn.softplus(logits)  # saliences ~1e-22
    a = similarity.factorized_alignment(jnp.ones_like(s), jnp.ones((3,)), u_d)
    return similarity.sparse_alignment_score(s, a)

  grad = jax.grad(score)(logits)
  assert np.isfinite(float(score(logits)))
  assert np.isfinite(np.asarray(grad)).all()
