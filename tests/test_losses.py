"""Losses against brute-force NumPy loops, plus masking, jit/vmap/grad and bfloat16 checks."""

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from aligner_jax import losses

# ---------------------------------------------------------------------------------------------
# NumPy references: explicit loops over queries and candidate pairs, float64.


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.sum(np.exp(x - m)))


def _rows(t, s, y, mask):
  """Per query: the valid teacher, student and label values."""
  for b in range(t.shape[0]):
    keep = mask[b]
    yield t[b][keep].astype(np.float64), s[b][keep].astype(np.float64), y[b][keep] == 1


def ref_mse(t, s, y, mask):
  return np.mean([sum((ti - si) ** 2 for ti, si in zip(tb, sb))
                  for tb, sb, _ in _rows(t, s, y, mask)])


def ref_margin_mse(t, s, y, mask):
  out = []
  for tb, sb, yb in _rows(t, s, y, mask):
    total = 0.0
    for i in range(len(tb)):
      for j in range(len(tb)):
        if yb[i] and not yb[j]:
          total += ((tb[i] - tb[j]) - (sb[i] - sb[j])) ** 2
    out.append(total)
  return np.mean(out)


def ref_m3se(t, s, y, mask):
  out = []
  for tb, sb, yb in _rows(t, s, y, mask):
    negs = [j for j in range(len(tb)) if not yb[j]]
    if not negs:
      out.append(0.0)
      continue
    j_star = max(negs, key=lambda j: (tb[j], -j))  # highest teacher score, first on ties
    total = 0.0
    for i in range(len(tb)):
      if yb[i]:
        total += ((tb[i] - tb[j_star]) - (sb[i] - sb[j_star])) ** 2
      else:
        total += max(sb[i] - sb[j_star], 0.0) ** 2
    out.append(total)
  return np.mean(out)


def ref_softmax_ce_distill(t, s, y, mask, temperature):
  out = []
  for tb, sb, _ in _rows(t, s, y, mask):
    if len(tb) == 0:
      out.append(0.0)
      continue
    p_t = np.exp(_log_softmax(tb / temperature))
    log_p_s = _log_softmax(sb / temperature)
    out.append(-sum(p_t[k] * log_p_s[k] for k in range(len(tb))))
  return np.mean(out)


def ref_kl_distill(t, s, y, mask, temperature):
  out = []
  for tb, sb, _ in _rows(t, s, y, mask):
    if len(tb) == 0:
      out.append(0.0)
      continue
    log_p_t = _log_softmax(tb / temperature)
    log_p_s = _log_softmax(sb / temperature)
    out.append(sum(np.exp(log_p_t[k]) * (log_p_t[k] - log_p_s[k]) for k in range(len(tb))))
  return np.mean(out)


def ref_rankdistil_b(t, s, y, mask, gamma0):
  out = []
  for tb, sb, yb in _rows(t, s, y, mask):
    total = 0.0
    for k in range(len(tb)):
      total += (tb[k] - sb[k]) ** 2 if yb[k] else max(sb[k] - gamma0, 0.0) ** 2
    out.append(total)
  return np.mean(out)


def ref_softmax_ce(s, y, mask, temperature):
  out = []
  for sb, _, yb in _rows(s, s, y, mask):
    if not yb.any():
      out.append(0.0)
      continue
    log_p = _log_softmax(sb / temperature)
    out.append(-np.mean([log_p[k] for k in range(len(sb)) if yb[k]]))
  return np.mean(out)


# name → (reference, hyper-parameters used in the tests)
CASES = {
    "mse": (ref_mse, {}),
    "margin_mse": (ref_margin_mse, {}),
    "m3se": (ref_m3se, {}),
    "softmax_ce_distill": (ref_softmax_ce_distill, {"temperature": 0.7}),
    "kl_distill": (ref_kl_distill, {"temperature": 2.0}),
    "rankdistil_b": (ref_rankdistil_b, {"gamma0": 0.3}),
    "one_hot_ce": (lambda t, s, y, mask, temperature: ref_softmax_ce(s, y, mask, temperature),
                   {"temperature": 0.5}),
}


def _batch(seed, b, k, *, mask_p=0.25, pos_p=0.3, scale=3.0):
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(b, k)).astype(np.float32) * scale
  s = rng.normal(size=(b, k)).astype(np.float32) * scale
  y = (rng.random((b, k)) < pos_p).astype(np.int32)
  mask = rng.random((b, k)) >= mask_p
  return t, s, y, mask


@functools.cache
def _jitted(name):
  """One compiled loss per name (recompiled only per shape), so many examples stay cheap."""
  fn = losses.get_loss(name, **CASES[name][1])
  return jax.jit(lambda t, s, y, mask: fn(t, s, y, mask=mask))


@functools.cache
def _jitted_grad(name):
  """Gradient of the loss with respect to the student scores, compiled."""
  fn = losses.get_loss(name, **CASES[name][1])
  return jax.jit(jax.grad(lambda t, s, y, mask: fn(t, s, y, mask=mask), argnums=1))


def test_registry_holds_every_case():
  assert set(losses.LOSSES) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([1, 3]), k=st.sampled_from([1, 4, 9]),
       mask_p=st.sampled_from([0.0, 0.3, 0.8]), pos_p=st.sampled_from([0.0, 0.3, 1.0]))
def test_matches_numpy_reference(name, seed, b, k, mask_p, pos_p):
  # Shapes come from a small set so each compiles once; masks vary the effective sizes.
  ref, hparams = CASES[name]
  t, s, y, mask = _batch(seed, b, k, mask_p=mask_p, pos_p=pos_p)
  got = _jitted(name)(t, s, y, mask)
  want = ref(t, s, y, mask, **hparams)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_mask_equals_all_true_mask(name):
  _, hparams = CASES[name]
  t, s, y, _ = _batch(1, 3, 6)
  fn = losses.get_loss(name, **hparams)
  np.testing.assert_allclose(fn(t, s, y), fn(t, s, y, mask=np.ones_like(y, bool)), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_padded_values_never_change_the_loss_or_gradient(name):
  t, s, y, mask = _batch(2, 4, 7, mask_p=0.4)
  fn = _jitted(name)
  junk = np.where(mask, 0.0, np.array([np.nan, np.inf, -np.inf, 1e30])[np.arange(7) % 4])
  t2, s2 = t + junk.astype(np.float32), s + junk.astype(np.float32)
  y2 = np.where(mask, y, 1 - y)  # flipped labels on padding are ignored too
  np.testing.assert_allclose(fn(t, s, y, mask), fn(t2, s2, y2, mask), rtol=1e-6)
  g = _jitted_grad(name)(t2, s2, y2, mask)
  assert np.all(np.isfinite(g))
  np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rows_without_candidates_are_zero_not_nan(name):
  t, s, y, _ = _batch(3, 2, 5)
  mask = np.zeros((2, 5), bool)
  assert _jitted(name)(t, s, y, mask) == 0.0
  g = _jitted_grad(name)(t, s, y, mask)
  np.testing.assert_array_equal(g, 0.0)


def test_perfect_student_has_zero_distillation_loss():
  t, _, y, mask = _batch(4, 3, 6)
  for name in ("mse", "margin_mse", "m3se", "kl_distill"):
    assert abs(float(losses.get_loss(name, **CASES[name][1])(t, t, y, mask=mask))) < 1e-5
  # Margin losses are blind to a per-query shift of the student's scores.
  shifted = t + np.arange(3, dtype=np.float32)[:, None] * 10
  for name in ("margin_mse", "m3se", "kl_distill", "softmax_ce_distill"):
    fn = losses.get_loss(name, **CASES[name][1])
    np.testing.assert_allclose(fn(t, shifted, y, mask=mask), fn(t, t, y, mask=mask), atol=1e-4)


def test_margin_mse_with_one_positive_is_lite_appendix_formula():
  # LITE App. A.2: Σ_{i=2..N} ((t_1 − t_i) − (s_1 − s_i))², first candidate positive.
  t = np.array([[4.0, 1.0, 2.0, -1.0]], np.float32)
  s = np.array([[1.0, 2.0, 0.0, 0.5]], np.float32)
  y = np.array([[1, 0, 0, 0]])
  want = sum(((t[0, 0] - t[0, i]) - (s[0, 0] - s[0, i])) ** 2 for i in range(1, 4))
  np.testing.assert_allclose(losses.margin_mse(t, s, y), want, rtol=1e-6)


def test_m3se_hinge_uses_highest_teacher_negative():
  # j* = candidate 2 (teacher 3.0); negative 1 scores above s_{j*} and is pushed down.
  t = np.array([[5.0, 1.0, 3.0]], np.float32)
  s = np.array([[2.0, 1.5, 0.5]], np.float32)
  y = np.array([[1, 0, 0]])
  want = ((5.0 - 3.0) - (2.0 - 0.5)) ** 2 + (1.5 - 0.5) ** 2
  np.testing.assert_allclose(losses.m3se(t, s, y), want, rtol=1e-6)


def test_kl_is_softmax_ce_minus_teacher_entropy():
  t, s, y, mask = _batch(5, 3, 6, mask_p=0.3)
  for tau in (0.5, 1.0, 3.0):
    ce = losses.softmax_ce_distill(t, s, y, mask=mask, temperature=tau)
    kl = losses.kl_distill(t, s, y, mask=mask, temperature=tau)
    entropy = losses.softmax_ce_distill(t, t, y, mask=mask, temperature=tau)
    np.testing.assert_allclose(ce - kl, entropy, rtol=1e-5, atol=1e-5)


_jitted_softmax_ce = jax.jit(
    lambda s, y, tau, mask: losses.softmax_ce(s, y, temperature=tau, mask=mask))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.sampled_from([1, 4]), c=st.sampled_from([1, 12]),
       tau=st.sampled_from([0.05, 1.0, 4.0]))
def test_softmax_ce_in_batch_matches_reference(seed, b, c, tau):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(b, c)).astype(np.float32)
  labels = (rng.random((b, c)) < 0.3).astype(np.int32)
  mask = rng.random((b, c)) > 0.2
  got = _jitted_softmax_ce(scores, labels, tau, mask)
  np.testing.assert_allclose(got, ref_softmax_ce(scores, labels, mask, tau), rtol=2e-5, atol=2e-5)


def test_softmax_ce_diagonal_labels_is_in_batch_cross_entropy():
  rng = np.random.default_rng(6)
  scores = rng.normal(size=(4, 8)).astype(np.float32)  # 4 queries, 4 positives + 4 hard negs
  labels = np.eye(4, 8, dtype=np.int32)
  want = -np.mean([_log_softmax(scores[b])[b] for b in range(4)])
  np.testing.assert_allclose(losses.softmax_ce(scores, labels), want, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_and_vmap(name):
  _, hparams = CASES[name]
  fn = losses.get_loss(name, **hparams)
  t, s, y, mask = _batch(7, 6, 5)
  eager = fn(t, s, y, mask=mask)
  jitted = _jitted(name)(t, s, y, mask)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)
  # vmap over groups of queries: the mean of per-group losses equals the whole-batch loss.
  per_group = jax.jit(jax.vmap(lambda a, b, c, m: fn(a, b, c, mask=m)))(
      *(x.reshape(3, 2, 5) for x in (t, s, y, mask)))
  np.testing.assert_allclose(jnp.mean(per_group), eager, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_grads(name):
  _, hparams = CASES[name]
  t, s, y, mask = _batch(8, 2, 4, mask_p=0.2, pos_p=0.4)
  fn = losses.get_loss(name, **hparams)
  with jax.enable_x64(True):
    t64, s64 = jnp.asarray(t, jnp.float64), jnp.asarray(s, jnp.float64)
    # First order only: the hinge losses are once differentiable, and training needs no more.
    check_grads(jax.jit(lambda a, b: fn(a, b, y, mask=mask)), (t64, s64), order=1,
                modes=("fwd", "rev"), eps=1e-4, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_give_finite_loss_and_grads(name):
  t, s, y, mask = _batch(9, 4, 8, scale=40.0)
  fn = _jitted(name)
  t16, s16 = jnp.asarray(t, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16)
  value = fn(t16, s16, y, mask)
  assert value.dtype == jnp.float32 and np.isfinite(value)
  np.testing.assert_allclose(value, fn(np.asarray(t16, np.float32), np.asarray(s16, np.float32),
                                        y, mask), rtol=1e-5)
  g = _jitted_grad(name)(t16, s16, y, mask)
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_get_loss_errors_are_clear():
  with pytest.raises(ValueError, match="known losses: kl_distill, m3se"):
    losses.get_loss("margin-mse")
  with pytest.raises(ValueError, match="needs hyper-parameter.*gamma0"):
    losses.get_loss("rankdistil_b")
  with pytest.raises(ValueError, match="no hyper-parameter.*temperature"):
    losses.get_loss("m3se", temperature=1.0)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    losses.kl_distill(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)), temperature=0.0)
  with pytest.raises(ValueError, match=r"\[B, K\] arrays of one shape"):
    losses.mse(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)))
