"""Learning-rate schedules against closed-form NumPy references, and optimizer behaviour."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aligner_jax.train import optim


def _linear_ref(step, peak, warmup, total, end):
  if step < warmup:
    return peak * (step + 1) / warmup
  remaining = min(max((total - step) / (total - warmup), 0.0), 1.0)
  return end + (peak - end) * remaining


def _rsqrt_ref(step, peak, warmup):
  warmup = max(warmup, 1)
  if step < warmup:
    return peak * (step + 1) / warmup
  return peak * np.sqrt(warmup / step)


@settings(max_examples=30, deadline=None)
@given(peak=st.floats(1e-6, 1.0), warmup=st.integers(0, 50), extra=st.integers(1, 190),
       end=st.one_of(st.just(0.0), st.floats(1e-9, 1e-6)))  # no denormals: XLA flushes them
def test_warmup_linear_decay_matches_reference(peak, warmup, extra, end):
  total = warmup + extra
  fn = optim.warmup_linear_decay(peak_value=peak, warmup_steps=warmup, total_steps=total,
                                 end_value=end)
  steps = np.arange(256)  # one shape for every example: compiled once
  got = np.asarray(fn(steps))
  want = np.array([_linear_ref(s, peak, warmup, total, end) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * peak)
  assert got[total] == np.float32(end)
  assert got.max() <= peak * (1 + 1e-6)


@settings(max_examples=30, deadline=None)
@given(peak=st.floats(1e-6, 1.0), warmup=st.integers(0, 50))
def test_warmup_rsqrt_decay_matches_reference(peak, warmup):
  fn = optim.warmup_rsqrt_decay(peak_value=peak, warmup_steps=warmup)
  steps = np.arange(0, 300)
  got = np.asarray(fn(steps))
  want = np.array([_rsqrt_ref(s, peak, warmup) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_warmup_constant():
  fn = optim.warmup_constant(peak_value=0.5, warmup_steps=4)
  np.testing.assert_allclose(np.asarray(fn(np.arange(8))),
                             [0.125, 0.25, 0.375, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_linear_decay_rejects_total_not_after_warmup():
  with pytest.raises(ValueError, match="total_steps"):
    optim.warmup_linear_decay(peak_value=1.0, warmup_steps=10, total_steps=10)


def test_unknown_optimizer_is_an_error():
  with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
    optim.make_optimizer("sgd", learning_rate=optim.constant(value=0.1))


def test_adamw_decays_matrices_only():
  params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}
  tx = optim.make_optimizer("adamw", learning_rate=optim.constant(value=0.1),
                            weight_decay=0.5, clip_norm=None)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((3, 4)), rtol=1e-6)
  np.testing.assert_array_equal(updates["bias"], np.zeros(4))


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_clipping_equals_rescaled_gradient(name):
  rng = np.random.RandomState(0)
  params = {"w": jnp.asarray(rng.randn(4, 130), jnp.float32),
            "b": jnp.asarray(rng.randn(130), jnp.float32)}
  grads = jax.tree.map(lambda p: 100.0 * p, params)
  norm = float(optax.global_norm(grads))
  lr = optim.constant(value=0.01)
  clipped = optim.make_optimizer(name, learning_rate=lr, clip_norm=1.0)
  unclipped = optim.make_optimizer(name, learning_rate=lr, clip_norm=None)
  got, _ = clipped.update(grads, clipped.init(params), params)
  scaled = jax.tree.map(lambda g: g / norm, grads)
  want, _ = unclipped.update(scaled, unclipped.init(params), params)
  for k in params:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-8)


def test_adafactor_trains_a_quadratic():
  rng = np.random.RandomState(1)
  target = jnp.asarray(rng.randn(8, 8), jnp.float32)
  # Adafactor scales updates by the parameter RMS, so start away from zero as real inits do.
  params = {"w": jnp.asarray(rng.randn(8, 8), jnp.float32)}
  tx = optim.make_optimizer("adafactor",
                            learning_rate=optim.warmup_rsqrt_decay(peak_value=0.1,
                                                                   warmup_steps=10))
  loss = lambda p: jnp.mean((p["w"] - target) ** 2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  first, state = float(loss(params)), tx.init(params)
  for _ in range(100):
    params, state = step(params, state)
  assert float(loss(params)) < 0.1 * first
