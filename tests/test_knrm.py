"""KNRM kernel pooling against NumPy loops; masking, jit/vmap/grad and bfloat16."""

import functools
import math

import flax.linen as nn
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from aligner_jax.scoring import knrm as knrm_lib
from aligner_jax.scoring.knrm import KnrmScorer
from aligner_jax.scoring.knrm import knrm
from aligner_jax.scoring.knrm import knrm_features


def ref_features(S, q_mask, d_mask, mus=knrm_lib.KNRM_MUS, sigmas=knrm_lib.KNRM_SIGMAS,
                 floor=1e-10):
  """φ_k = Σ_{valid i} log max(Σ_{valid j} exp(−(S_ij − μ_k)² / (2σ_k²)), floor), one matrix."""
  phi = []
  for mu, sigma in zip(mus, sigmas):
    total = 0.0
    for i in range(S.shape[0]):
      if not q_mask[i]:
        continue
      soft_tf = sum(math.exp(-(float(S[i, j]) - mu) ** 2 / (2 * sigma ** 2))
                    for j in range(S.shape[1]) if d_mask[j])
      total += math.log(max(soft_tf, floor))
    phi.append(total)
  return np.array(phi)


def _cosine_case(rng, lead, l1, l2, *, exact_p=0.15):
  """Similarities in [−1, 1] with some exact matches (S = 1) and random padding."""
  S = np.clip(rng.normal(size=lead + (l1, l2)) * 0.4, -1, 1)
  S = np.where(rng.random(S.shape) < exact_p, 1.0, S).astype(np.float32)
  q_mask = rng.random(lead + (l1,)) < 0.8
  d_mask = rng.random(lead + (l2,)) < 0.7
  return S, q_mask, d_mask


_features = jax.jit(knrm_features)


def test_kernels_are_the_eleven_of_lite_appendix_a5():
  np.testing.assert_allclose(knrm_lib.KNRM_MUS,
                             [0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9, 1.0])
  assert knrm_lib.KNRM_SIGMAS == (0.1,) * 10 + (1e-3,)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lead=st.sampled_from([(1,), (3,), (2, 2)]),
       l1=st.sampled_from([1, 5]), l2=st.sampled_from([1, 7]))
def test_features_match_numpy_reference(seed, lead, l1, l2):
  S, q_mask, d_mask = _cosine_case(np.random.default_rng(seed), lead, l1, l2)
  got = np.asarray(_features(S, q_mask, d_mask))
  assert got.shape == lead + (11,) and got.dtype == np.float32
  for idx in np.ndindex(*lead):
    np.testing.assert_allclose(got[idx], ref_features(S[idx], q_mask[idx], d_mask[idx]),
                               rtol=2e-5, atol=1e-3)


def test_exact_match_kernel_counts_exact_matches():
  # Query token 0 matches two document tokens exactly, token 1 none: the μ=1 kernel gives
  # log 2 + log(floor) (= the floor for the second token).
  S = np.array([[[1.0, 0.2, 1.0], [0.5, 0.5, 0.5]]], np.float32)
  phi = np.asarray(_features(S, None, None))[0]
  np.testing.assert_allclose(phi[10], math.log(2.0) + math.log(1e-10), rtol=1e-5)
  # μ = 0.5 kernel: token 1 has three exact hits, token 0 sees 0.2 and 1.0 at 3σ and 5σ.
  tf0 = 2 * math.exp(-0.25 / 0.02) + math.exp(-0.09 / 0.02)
  np.testing.assert_allclose(phi[2], math.log(tf0) + math.log(3.0), rtol=1e-5)


def test_padded_values_never_change_features_or_gradient():
  S, q_mask, d_mask = _cosine_case(np.random.default_rng(1), (4,), 5, 6)
  pad = ~(q_mask[..., :, None] & d_mask[..., None, :])
  junk = np.where(pad, np.array([np.nan, np.inf, 1.0, -7.0])[np.arange(6) % 4], S)
  np.testing.assert_array_equal(_features(S, q_mask, d_mask), _features(junk, q_mask, d_mask))
  w = np.linspace(-1, 1, 11).astype(np.float32)
  grad = jax.jit(jax.grad(lambda s: knrm(s, q_mask, d_mask, w).sum()))(junk)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[pad], 0.0)


def test_no_valid_document_token_gives_the_floor_not_nan():
  S = np.zeros((2, 3, 4), np.float32)
  q_mask = np.array([[1, 1, 0], [0, 0, 0]], bool)
  phi = np.asarray(_features(S, q_mask, np.zeros((2, 4), bool)))
  np.testing.assert_allclose(phi[0], 2 * math.log(1e-10), rtol=1e-6)
  np.testing.assert_array_equal(phi[1], 0.0)


def test_scorer_is_a_linear_layer_on_the_features():
  S, q_mask, d_mask = _cosine_case(np.random.default_rng(2), (3, 2), 4, 6)
  model = KnrmScorer()
  params = jax.jit(model.init)(jax.random.key(0), S, q_mask, d_mask)
  shapes = jax.tree.map(np.shape, nn.unbox(params))
  assert shapes == {"params": {"w": (11,), "bias": ()}}
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(apply(params, S, q_mask, d_mask), 0.0)  # zero-initialised
  w = np.linspace(-0.5, 0.5, 11).astype(np.float32)
  trained = {"params": {"w": w, "bias": np.float32(0.25)}}
  got = apply(trained, S, q_mask, d_mask)
  assert got.shape == (3, 2)
  for idx in np.ndindex(3, 2):
    want = ref_features(S[idx], q_mask[idx], d_mask[idx]) @ w + 0.25
    np.testing.assert_allclose(got[idx], want, rtol=1e-5, atol=1e-3)
  # vmap over the leading axis agrees with the batched call.
  per_row = jax.jit(jax.vmap(functools.partial(model.apply, trained)))(S, q_mask, d_mask)
  np.testing.assert_allclose(per_row, got, rtol=1e-6)
  # Only the linear layer trains, and it gets a gradient from the start.
  grads = jax.jit(jax.grad(lambda p: jnp.sum((model.apply(p, S, q_mask, d_mask) - 1.0) ** 2)))(
      nn.unbox(params))
  assert np.any(np.asarray(grads["params"]["w"]) != 0)


def test_check_grads_in_similarities_and_weights():
  S, q_mask, d_mask = _cosine_case(np.random.default_rng(3), (2,), 3, 4, exact_p=0.0)
  # The σ = 10⁻³ exact-match kernel is too steep for finite differences; the ten σ = 0.1
  # kernels exercise the same code.
  kw = dict(mus=knrm_lib.KNRM_MUS[:10], sigmas=knrm_lib.KNRM_SIGMAS[:10])
  with jax.enable_x64(True):
    fn = jax.jit(lambda s, w: knrm(s, q_mask, d_mask, w, 0.1, **kw))
    S64 = jnp.asarray(S, jnp.float64)
    w64 = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float64)
    check_grads(fn, (S64, w64), order=1, modes=("fwd", "rev"), eps=1e-5, atol=1e-4, rtol=1e-4)


def test_bfloat16_similarities_are_finite_and_keep_exact_matches():
  S, q_mask, d_mask = _cosine_case(np.random.default_rng(4), (4,), 5, 6)
  S16 = jnp.asarray(S, jnp.bfloat16)
  phi16 = np.asarray(_features(S16, q_mask, d_mask))
  assert phi16.dtype == np.float32 and np.all(np.isfinite(phi16))
  # Computed in float32 from the bfloat16 values: identical to float32 features of them.
  np.testing.assert_allclose(phi16, _features(np.asarray(S16, np.float32), q_mask, d_mask),
                             rtol=1e-6)
  w = np.ones(11, np.float32)
  grad = jax.jit(jax.grad(lambda s: knrm(s, q_mask, d_mask, w).sum()))(S16)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_argument_errors_are_clear():
  with pytest.raises(ValueError, match="one sigma per mu"):
    knrm_features(np.zeros((1, 2, 2)), mus=(1.0, 0.5), sigmas=(0.1,))
  with pytest.raises(ValueError, match=r"expected \(11,\)"):
    knrm(np.zeros((1, 2, 2)), None, None, np.zeros(10))
