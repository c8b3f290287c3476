"""Tests of the unary salience gate (ALIGNER Eq. 3-5), its baselines, budgets and pruning.

References are brute-force NumPy with explicit loops: a bisection solver for the entropic LP and
a direct log-space transcription of the Eq. (5) iterations.
"""

import math

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from aligner_jax import sharding
from aligner_jax.scoring import salience
from aligner_jax.scoring import selection

settings = hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
# Shapes come from small sets and the functions under test are jitted once per shape, so the
# examples vary masks, budgets and values without recompiling every time.
LENGTHS = st.sampled_from([1, 5, 24])
ROWS = st.sampled_from([1, 3])

lp_jit = jax.jit(salience.salience_lp, static_argnames=("eps", "num_iters"))
topk_jit = jax.jit(selection.topk_mask)
gates_jit = jax.jit(lambda z, m, k: (salience.relu_gate(z, m), salience.hard_topk_gate(z, m, k),
                                     salience.lp_gate(z, m, k, eps=0.3)))
prune_jit = jax.jit(salience.prune_tokens, static_argnames=("ratio",))


# ---------------------------------------------------------------- NumPy references (loops)

def ref_topk(scores, mask, k):
  """Row-wise: the k largest valid entries, ties to the lower index."""
  out = np.zeros(scores.shape, bool)
  for idx in np.ndindex(scores.shape[:-1]):
    kk = int(np.broadcast_to(k, scores.shape[:-1])[idx])
    valid = [j for j in range(scores.shape[-1]) if mask[idx + (j,)]]
    valid.sort(key=lambda j: (-float(scores[idx + (j,)]), j))
    for j in valid[:max(kk, 0)]:
      out[idx + (j,)] = True
  return out


def ref_lp_row(s, mask, k, eps):
  """argmax s·λ + εH(λ), Σλ = k, 0 ≤ λ ≤ 1 on valid entries, by bisection on the dual a."""
  s = np.asarray(s, np.float64)
  lam = np.zeros(s.shape)
  valid = np.flatnonzero(mask)
  k = min(float(k), len(valid))
  if k <= 0:
    return lam
  sv = s[valid]

  def gate(a):
    return np.exp(np.minimum(0.0, (sv + a) / eps))

  lo = -sv.max() + eps * math.log(k / len(sv)) - 1.0
  hi = -sv.min() + 1.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if gate(mid).sum() < k:
      lo = mid
    else:
      hi = mid
  lam[valid] = gate(0.5 * (lo + hi))
  return lam


def ref_lp(s, mask, k, eps):
  out = np.zeros(s.shape)
  kk = np.broadcast_to(k, s.shape[:-1])
  for idx in np.ndindex(s.shape[:-1]):
    out[idx] = ref_lp_row(s[idx], mask[idx], kk[idx], eps)
  return out


def ref_eq5_row(s, mask, k, eps, num_iters):
  """ALIGNER Eq. (5) in log-space from a = 0, b = 0: a-update, then b-update."""
  s = np.asarray(s, np.float64)
  lam = np.zeros(s.shape)
  valid = np.flatnonzero(mask)
  k = min(float(k), len(valid))
  if k <= 0:
    return lam
  sv = s[valid]
  a, b = 0.0, np.zeros(len(sv))
  for _ in range(num_iters):
    z = (sv + b) / eps
    top = z.max()
    a = eps * math.log(k) - eps * (top + math.log(np.sum(np.exp(z - top))))
    b = np.minimum(-sv - a, 0.0)
  lam[valid] = np.exp((sv + b + a) / eps)
  return lam


def random_case(seed, rows, length, scale):
  rng = np.random.default_rng(seed)
  s = (rng.standard_normal((rows, length)) * scale).astype(np.float32)
  mask = rng.random((rows, length)) < 0.8
  mask[0, 0] = True
  k = rng.integers(0, length + 3, size=rows)
  return s, mask, k


# ---------------------------------------------------------------- budgets and hard selection

@settings
@hypothesis.given(st.integers(0, 100), st.lists(st.integers(0, 40), min_size=1, max_size=4),
                  st.integers(0, 2**31 - 1))
def test_salience_budget_is_exact_ceiling(percent, lengths, seed):
  rng = np.random.default_rng(seed)
  width = max(lengths) + 1
  mask = np.zeros((len(lengths), width), bool)
  for row, n in enumerate(lengths):
    mask[row, rng.permutation(width)[:n]] = True
  got = np.asarray(salience.salience_budget(jnp.asarray(mask), percent / 100))
  want = [-(-percent * n // 100) for n in lengths]  # exact integer ceiling
  np.testing.assert_array_equal(got, want)
  assert all(g >= 1 for g, n in zip(got, lengths) if n > 0 and percent > 0)


def test_salience_budget_examples_and_errors():
  mask = jnp.array([[True] * 10 + [False] * 2, [False] * 12])
  np.testing.assert_array_equal(salience.salience_budget(mask, 0.4), [4, 0])  # not 5
  np.testing.assert_array_equal(salience.salience_budget(mask, 0.7), [7, 0])
  np.testing.assert_array_equal(salience.salience_budget(mask, 0.01), [1, 0])
  with pytest.raises(ValueError, match="salience ratio"):
    salience.salience_budget(mask, 1.5)
  with pytest.raises(ValueError, match="salience ratio"):
    salience.salience_budget(mask, "0.4")


@settings
@hypothesis.given(ROWS, LENGTHS, st.integers(0, 2**31 - 1))
def test_topk_mask_matches_loops_with_ties(rows, length, seed):
  rng = np.random.default_rng(seed)
  scores = rng.integers(-2, 3, (rows, length)).astype(np.float32)  # many exact ties
  scores[scores == 0] = -0.0 if seed % 2 else 0.0
  mask = rng.random((rows, length)) < 0.7
  k = rng.integers(0, length + 2, rows)
  got = topk_jit(scores, mask, k)
  np.testing.assert_array_equal(got, ref_topk(scores, mask, k))


# ---------------------------------------------------------------- salience_lp (Eq. 4)

@settings
@hypothesis.given(ROWS, LENGTHS, st.sampled_from([0.002, 0.5]), st.sampled_from([1.0, 50.0]),
                  st.integers(0, 2**31 - 1))
def test_salience_lp_exact_kkt_and_bisection(rows, length, eps, scale, seed):
  s, mask, k = random_case(seed, rows, length, scale)
  lam = np.asarray(lp_jit(s, mask, k, eps=eps))
  budget = np.minimum(k, mask.sum(-1))
  assert lam.dtype == np.float32
  assert np.all(np.isfinite(lam))
  assert np.all((lam >= 0) & (lam <= 1))
  assert np.all(lam[~mask] == 0)
  np.testing.assert_allclose(lam.sum(-1), budget, rtol=1e-4, atol=1e-4)
  # float32 rounding of s moves the exponent (s + a)/ε by about |s|·1e-7/ε.
  tol = 1e-5 + 4 * np.abs(s).max() * 1.2e-7 / eps
  np.testing.assert_allclose(lam, ref_lp(s, mask, k, eps), atol=tol)


@settings
@hypothesis.given(st.integers(0, 2**31 - 1))
def test_salience_lp_exact_float64_is_tight(seed):
  s, mask, k = random_case(seed, 2, 17, 5.0)
  eps = 0.002 if seed % 2 else 0.3
  with jax.enable_x64(True):
    lam = np.asarray(lp_jit(s.astype(np.float64), mask, k, eps=eps))
  assert lam.dtype == np.float64
  np.testing.assert_allclose(lam, ref_lp(s.astype(np.float64), mask, k, eps), atol=1e-8)


def test_salience_lp_small_eps_is_hard_topk():
  rng = np.random.default_rng(0)
  s = np.stack([rng.permutation(16) for _ in range(3)]).astype(np.float32)  # gaps of 1
  mask = np.ones_like(s, bool)
  mask[1, 5:] = False
  lam = lp_jit(s, mask, 4, eps=0.01)
  np.testing.assert_allclose(lam, ref_topk(s, mask, 4).astype(np.float32), atol=1e-6)


def test_salience_lp_scalar_and_per_row_budget_and_empty_rows():
  s = jnp.array([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [5.0, 4.0, 3.0, 2.0]])
  mask = jnp.array([[True, True, True, True], [True, True, False, False], [False] * 4])
  lam = np.asarray(lp_jit(s, mask, jnp.array([2, 5, 3]), eps=0.5))
  np.testing.assert_allclose(lam.sum(-1), [2.0, 2.0, 0.0], atol=1e-5)
  np.testing.assert_allclose(lam[1], [1, 1, 0, 0])  # budget above the valid count keeps all
  np.testing.assert_array_equal(lam[2], 0)
  lam0 = np.asarray(lp_jit(s, mask, 0))
  np.testing.assert_array_equal(lam0, 0)


def test_salience_lp_rejects_bad_options():
  s, mask = jnp.zeros((2, 3)), jnp.ones((2, 3), bool)
  with pytest.raises(ValueError, match="eps"):
    salience.salience_lp(s, mask, 1, eps=0.0)
  with pytest.raises(ValueError, match="num_iters"):
    salience.salience_lp(s, mask, 1, num_iters=0)


# ---------------------------------------------------------------- Eq. (5) iterations

@settings
@hypothesis.given(LENGTHS, st.sampled_from([1, 30]), st.sampled_from([0.002, 1.0]),
                  st.sampled_from([1.0, 50.0]), st.integers(0, 2**31 - 1))
def test_eq5_iterations_match_numpy(length, num_iters, eps, scale, seed):
  s, mask, k = random_case(seed, 2, length, scale)
  lam = np.asarray(lp_jit(s, mask, k, eps=eps, num_iters=num_iters))
  want = np.stack([ref_eq5_row(s[r], mask[r], k[r], eps, num_iters) for r in range(2)])
  assert np.all(np.isfinite(lam))
  np.testing.assert_allclose(lam, want, atol=1e-5 + 4 * np.abs(s).max() * 1.2e-7 / eps)


def test_eq5_converges_at_large_eps_but_not_at_small_eps():
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.standard_normal((1, 64)), jnp.float32)
  mask = jnp.ones((1, 64), bool)
  exact = lp_jit(s, mask, 20, eps=1.0)
  iterated = lp_jit(s, mask, 20, eps=1.0, num_iters=300)
  np.testing.assert_allclose(iterated, exact, atol=1e-4)
  # At ε = 0.002 coordinate ascent is far from the budget after 500 iterations; the exact
  # solver meets it, which is why it is the default.
  slow = lp_jit(s, mask, 20, eps=0.002, num_iters=500)
  assert float(slow.sum()) < 18.0
  np.testing.assert_allclose(lp_jit(s, mask, 20, eps=0.002).sum(), 20.0,
                             rtol=1e-5)


# ---------------------------------------------------------------- gradients, dtypes, transforms

@pytest.mark.parametrize("eps", [0.1, 0.7])
@pytest.mark.parametrize("num_iters", [None, 4])
def test_salience_lp_check_grads(eps, num_iters):
  rng = np.random.default_rng(3)
  mask = jnp.asarray(rng.random((3, 9)) < 0.8)
  with jax.enable_x64(True):
    s = jnp.asarray(rng.standard_normal((3, 9)))
    weights = jnp.asarray(rng.standard_normal((3, 9)))

    def f(x):
      lam = salience.salience_lp(x, mask, jnp.array([2, 3, 5]), eps=eps, num_iters=num_iters)
      return lam * weights

    check_grads(jax.jit(f), (s,), order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_salience_lp_gradient_wrt_budget():
  rng = np.random.default_rng(4)
  mask = jnp.ones((2, 7), bool)
  with jax.enable_x64(True):
    s = jnp.asarray(rng.standard_normal((2, 7)))
    f = jax.jit(lambda k: salience.salience_lp(s, mask, k, eps=0.4))
    check_grads(f, (jnp.array([2.5, 3.2]),), order=1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("num_iters", [None, 5])
def test_salience_lp_finite_at_small_eps_large_scores(dtype, num_iters):
  rng = np.random.default_rng(5)
  s = jnp.asarray(np.clip(rng.standard_normal((4, 64)) * 30, -50, 50), dtype)
  s = s.at[0, :10].set(50.0).at[1, :].set(-50.0)  # exact ties at the extremes
  mask = jnp.asarray(rng.random((4, 64)) < 0.9)
  weights = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)

  def loss(x):
    lam = salience.salience_lp(x, mask, jnp.array([20, 5, 64, 1]), eps=0.002,
                               num_iters=num_iters)
    return jnp.sum(lam.astype(jnp.float32) * weights)

  lam = lp_jit(s, mask, jnp.array([20, 5, 64, 1]), eps=0.002, num_iters=num_iters)
  assert lam.dtype == dtype
  assert np.all(np.isfinite(np.asarray(lam, np.float32)))
  grad = jax.jit(jax.grad(loss))(s)
  assert grad.dtype == dtype
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_salience_lp_jit_vmap():
  s, mask, k = random_case(7, 4, 11, 2.0)
  f = lambda x, m, kk: salience.salience_lp(x, m, kk, eps=0.05)  # noqa: E731
  batched = jax.jit(f)(s, mask, k)
  np.testing.assert_allclose(batched, ref_lp(s, mask, k, 0.05), atol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.vmap(f))(s, mask, k), batched, atol=1e-6)
  grads = jax.jit(jax.vmap(jax.grad(lambda x, m, kk: jnp.sum(f(x, m, kk) * x))))(s, mask, k)
  assert np.all(np.isfinite(grads))


# ---------------------------------------------------------------- gates, pruning, the head

@settings
@hypothesis.given(LENGTHS, st.integers(0, 2**31 - 1))
def test_gates_match_numpy(length, seed):
  rng = np.random.default_rng(seed)
  z = rng.integers(-3, 4, (2, length)).astype(np.float32)  # ties and zeros
  mask = rng.random((2, length)) < 0.8
  k = rng.integers(0, length + 1, 2)
  relu = np.where(mask, np.maximum(z, 0), 0)
  got_relu, hard, soft = gates_jit(z, mask, k)
  np.testing.assert_array_equal(got_relu, relu)
  np.testing.assert_array_equal(hard, np.where(ref_topk(relu, mask, k), relu, 0))
  np.testing.assert_allclose(soft, ref_lp(relu, mask, k, 0.3) * relu, atol=1e-5)


@settings
@hypothesis.given(LENGTHS, st.sampled_from([0.0, 0.3, 1.0]),
                  st.integers(0, 2**31 - 1))
def test_prune_tokens_matches_numpy(length, ratio, seed):
  rng = np.random.default_rng(seed)
  sal = rng.integers(0, 4, (3, length)).astype(np.float32)
  mask = rng.random((3, length)) < 0.8
  budget = [math.ceil(round(ratio * n, 9)) for n in mask.sum(-1)]
  kept = prune_jit(mask, sal, ratio=ratio)
  np.testing.assert_array_equal(kept, ref_topk(sal, mask, np.array(budget)))
  np.testing.assert_array_equal(np.asarray(kept).sum(-1), budget)


@pytest.mark.parametrize("gate", ["lp", "relu", "hard_topk"])
def test_salience_head_equals_gate_of_projection(gate):
  rng = np.random.default_rng(8)
  tokens = jnp.asarray(rng.standard_normal((3, 10, 16)), jnp.float32)
  mask = jnp.asarray(rng.random((3, 10)) < 0.8).at[2].set(False)
  head = salience.SalienceHead(ratio=0.4, gate=gate, eps=0.05)
  variables = jax.jit(head.init)(jax.random.key(0), tokens, mask)
  names = jax.tree.map(lambda p: p.names, variables["params"],
                       is_leaf=lambda p: isinstance(p, nn.Partitioned))
  assert names == {"kernel": (sharding.EMBED, None), "bias": (None,)}
  u = jax.jit(head.apply)(variables, tokens, mask)
  params = nn.unbox(variables["params"])
  z = np.asarray(tokens) @ np.asarray(params["kernel"])[:, 0] + np.asarray(params["bias"])[0]
  relu = np.where(np.asarray(mask), np.maximum(z, 0), 0)
  k = np.array([math.ceil(round(0.4 * n, 9)) for n in np.asarray(mask).sum(-1)])
  want = {"relu": relu,
          "hard_topk": np.where(ref_topk(relu, np.asarray(mask), k), relu, 0),
          "lp": ref_lp(relu, np.asarray(mask), k, 0.05) * relu}[gate]
  assert u.shape == (3, 10) and u.dtype == jnp.float32
  np.testing.assert_allclose(u, want, atol=1e-5)
  assert np.all(np.asarray(u)[~np.asarray(mask)] == 0)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(head.apply(v, tokens, mask) * z)))(variables)
  for leaf in jax.tree.leaves(nn.unbox(grads)):
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0)


def test_salience_head_bfloat16_and_errors():
  rng = np.random.default_rng(9)
  tokens = jnp.asarray(rng.standard_normal((2, 12, 8)), jnp.bfloat16)
  mask = jnp.ones((2, 12), bool)
  head = salience.SalienceHead(ratio=0.5, dtype=jnp.bfloat16)
  variables = jax.jit(head.init)(jax.random.key(1), tokens, mask)
  u = jax.jit(head.apply)(variables, tokens, mask)
  assert u.dtype == jnp.float32 and np.all(np.isfinite(u))
  with pytest.raises(ValueError, match="gate"):
    salience.SalienceHead(ratio=0.5, gate="sigmoid").init(jax.random.key(0), tokens, mask)
  with pytest.raises(ValueError, match="ratio"):
    salience.SalienceHead(ratio=2.0).init(jax.random.key(0), tokens, mask)
