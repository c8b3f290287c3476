"""LITE scorers against a NumPy loop implementation run with the same parameters."""

import functools

import flax.linen as nn
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aligner_jax import losses
from aligner_jax import sharding
from aligner_jax.partitioning import Partitioner
from aligner_jax.scoring import lite
from aligner_jax.scoring.lite import LiteScorer

# ---------------------------------------------------------------------------------------------
# NumPy reference: one similarity matrix at a time, explicit loops over rows and columns.


def np_layer_norm(x, p, eps=1e-6):
  mean = sum(x) / len(x)
  var = sum((v - mean) ** 2 for v in x) / len(x)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_block(x, p):
  """LITE Eq. (3)/(4) on one vector: LN(σ(W_b LN(σ(W_a x + b_a)) + b_b))."""
  relu = lambda v: np.maximum(v, 0.0)
  h = np_layer_norm(relu(p["dense_a"]["kernel"].T @ x + p["dense_a"]["bias"]), p["norm_a"])
  return np_layer_norm(relu(p["dense_b"]["kernel"].T @ h + p["dense_b"]["bias"]), p["norm_b"])


def np_lite(S, q_mask, d_mask, params, *, L1, L2, kind, doc_reduction=None, reduced=None):
  """Score of one matrix S [l1, l2] (l1 <= L1, l2 <= L2) with masks [l1], [l2]."""
  full = np.zeros((L1, L2))
  for i in range(S.shape[0]):
    for j in range(S.shape[1]):
      if q_mask[i] and d_mask[j]:
        full[i, j] = S[i, j]
  dm = np.zeros(L2, bool)
  dm[:len(d_mask)] = d_mask
  if doc_reduction == "avg_pool":
    window = L2 // reduced
    pooled = np.zeros((L1, reduced))
    for r in range(reduced):
      cols = [j for j in range(r * window, (r + 1) * window) if dm[j]]
      for i in range(L1):
        pooled[i, r] = sum(full[i, j] for j in cols) / len(cols) if cols else 0.0
    full = pooled
  elif doc_reduction == "projection":
    proj = params["doc_projection"]
    out = np.zeros((L1, reduced))
    for i in range(L1):
      for r in range(reduced):
        out[i, r] = sum(full[i, j] * proj[j, r] for j in range(L2))
    full = out
  if kind == "flattened":
    h = np.maximum(params["hidden"]["kernel"].T @ full.reshape(-1) + params["hidden"]["bias"], 0)
    return float(h @ params["w"])
  n_rows, n_cols = full.shape
  s1 = np.stack([np_block(full[i, :], params["row"]) for i in range(n_rows)])
  s2 = np.stack([np_block(s1[:, j], params["col"]) for j in range(n_cols)], axis=1)
  return float(sum(params["w"][i * n_cols + j] * s2[i, j]
                   for i in range(n_rows) for j in range(n_cols)))


def _random_params(model, S, seed):
  """Random parameters of the model's shapes (no zero biases or unit LayerNorm scales).

  Drawn with NumPy from `jax.eval_shape(model.init, ...)`, which skips compiling the
  initialisers: the tests need parameter values, not the init path (one test runs that).
  """
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), S))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.5).astype(x.dtype), shapes)


CONFIGS = [
    dict(kind="separable"),
    dict(kind="flattened"),
    dict(kind="separable", doc_reduction="avg_pool", reduced_doc_len=3),
    dict(kind="separable", doc_reduction="projection", reduced_doc_len=4),
    dict(kind="flattened", doc_reduction="avg_pool", reduced_doc_len=2),
]


def _random_case(rng, lead, l1, l2):
  S = rng.normal(size=lead + (l1, l2)) * 2.0
  q_mask = rng.random(lead + (l1,)) < 0.8
  d_mask = rng.random(lead + (l2,)) < 0.7
  return S, q_mask, d_mask


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lead=st.sampled_from([(2,), (2, 2)]),
       l1=st.sampled_from([2, 4]), l2=st.sampled_from([3, 6]))
def test_matches_numpy_reference(config, seed, lead, l1, l2):
  L1, L2 = 4, 6
  rng = np.random.default_rng(seed)
  S, q_mask, d_mask = _random_case(rng, lead, l1, l2)
  with jax.enable_x64(True):
    model = LiteScorer(L1, L2, row_width=5, col_width=3, dtype=jnp.float64,
                       param_dtype=jnp.float64, **config)
    params = _random_params(model, S, seed)
    got = np.asarray(jax.jit(model.apply)(params, S, q_mask, d_mask))
  assert got.shape == lead
  np_params = jax.tree.map(np.asarray, params["params"])
  for idx in np.ndindex(*lead):
    want = np_lite(S[idx], q_mask[idx], d_mask[idx], np_params, L1=L1, L2=L2,
                   kind=config["kind"], doc_reduction=config.get("doc_reduction"),
                   reduced=config.get("reduced_doc_len"))
    np.testing.assert_allclose(got[idx], want, rtol=1e-9, atol=1e-9)


def _model_and_params(config, S, *, L1=4, L2=6, seed=0, **kw):
  model = LiteScorer(L1, L2, row_width=6, col_width=4, **config, **kw)
  return model, _random_params(model, S, seed)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_padded_values_never_change_score_or_gradient(config):
  rng = np.random.default_rng(1)
  S, q_mask, d_mask = _random_case(rng, (3,), 4, 6)
  model, params = _model_and_params(config, jnp.asarray(S, jnp.float32))
  pad = ~(q_mask[:, :, None] & d_mask[:, None, :])
  junk = np.where(pad, np.array([np.nan, np.inf, -1e30, 7.0])[np.arange(6) % 4], S)
  score = jax.jit(model.apply)(params, S, q_mask, d_mask)
  np.testing.assert_allclose(jax.jit(model.apply)(params, junk, q_mask, d_mask), score,
                             rtol=1e-6)
  grad = jax.jit(jax.grad(lambda s: model.apply(params, s, q_mask, d_mask).sum()))(junk)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(grad)[pad], 0.0)


@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: c["kind"])
def test_short_matrices_are_padded_up_to_the_fixed_lengths(config):
  rng = np.random.default_rng(2)
  S, q_mask, d_mask = _random_case(rng, (2,), 3, 4)
  model, params = _model_and_params(config, jnp.zeros((2, 4, 6)))
  full = np.zeros((2, 4, 6))
  full[:, :3, :4] = S
  full_q = np.zeros((2, 4), bool)
  full_q[:, :3] = q_mask
  full_d = np.zeros((2, 6), bool)
  full_d[:, :4] = d_mask
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(params, S, q_mask, d_mask),
                             apply(params, full, full_q, full_d), rtol=1e-6)
  # Without masks, a short matrix counts as all-valid inside its own extent.
  np.testing.assert_allclose(
      apply(params, S, None, None),
      apply(params, full, full_q | True, np.tile(np.arange(6) < 4, (2, 1))), rtol=1e-6)
  with pytest.raises(ValueError, match="more than doc_len=6"):
    apply(params, np.zeros((2, 4, 7)))


def test_parameter_shapes_follow_appendix_a1():
  S = jnp.zeros((1, 30, 50))
  shapes = lambda model, S: nn.unbox(jax.eval_shape(model.init, jax.random.key(0), S))
  sep = shapes(LiteScorer(30, 50, row_width=768, col_width=16), S)
  p = sep["params"]
  # W₁ (m₂, L2), W₂ (L2, m₂), W₃ (m₁, L1), W₄ (L1, m₁); flax stores kernels transposed.
  assert p["row"]["dense_a"]["kernel"].shape == (50, 768)
  assert p["row"]["dense_b"]["kernel"].shape == (768, 50)
  assert p["col"]["dense_a"]["kernel"].shape == (30, 16)
  assert p["col"]["dense_b"]["kernel"].shape == (16, 30)
  assert p["w"].shape == (30 * 50,)
  flat = shapes(LiteScorer(30, 50, 64, 16, kind="flattened"), S)
  assert flat["params"]["hidden"]["kernel"].shape == (30 * 50, 64)
  assert flat["params"]["w"].shape == (64,)
  red = shapes(LiteScorer(30, 200, 64, 16, doc_reduction="projection", reduced_doc_len=50),
               jnp.zeros((1, 30, 200)))
  assert red["params"]["doc_projection"].shape == (200, 50)
  assert red["params"]["row"]["dense_a"]["kernel"].shape == (50, 64)


@pytest.mark.parametrize("reduction,reduced", [("avg_pool", 3), ("projection", 4)])
def test_reducing_documents_equals_reducing_the_similarity_matrix(reduction, reduced):
  # §4.4 stores reduced document vectors; scoring Q against them must equal the full path.
  rng = np.random.default_rng(3)
  q = rng.normal(size=(2, 4, 8)).astype(np.float32)
  d = rng.normal(size=(2, 6, 8)).astype(np.float32)
  q_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  d_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]], bool)
  S = np.einsum("bih,bjh->bij", q, d)
  model, params = _model_and_params(dict(doc_reduction=reduction, reduced_doc_len=reduced), S)
  d_red, d_red_mask = jax.jit(functools.partial(model.apply, method="reduce_doc_tokens"))(
      params, d, d_mask)
  assert d_red.shape == (2, reduced, 8) and d_red_mask.shape == (2, reduced)
  S_red = np.einsum("bih,bjh->bij", q, np.asarray(d_red))
  reduced_score = jax.jit(functools.partial(model.apply, doc_reduced=True))(
      params, S_red, q_mask, d_red_mask)
  np.testing.assert_allclose(reduced_score, jax.jit(model.apply)(params, S, q_mask, d_mask),
                             rtol=1e-5, atol=1e-5)
  if reduction == "avg_pool":
    np.testing.assert_array_equal(d_red_mask, [[True, True, False], [True, True, True]])
    np.testing.assert_allclose(d_red[1, 0], d[1, 0], rtol=1e-6)  # token 1 is padding
    np.testing.assert_allclose(d_red[1, 1], (d[1, 2] + d[1, 3]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(d_red[0, 2], 0.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), window=st.sampled_from([1, 2, 3]),
       groups=st.sampled_from([1, 4]))
def test_avg_pool_tokens_matches_loops(seed, window, groups):
  rng = np.random.default_rng(seed)
  m = window * groups
  x = rng.normal(size=(2, m, 3)).astype(np.float32)
  mask = rng.random((2, m)) < 0.6
  pooled, pooled_mask = lite.avg_pool_tokens(x, mask, window=window)
  for b in range(2):
    for r in range(groups):
      cols = [j for j in range(r * window, (r + 1) * window) if mask[b, j]]
      assert pooled_mask[b, r] == bool(cols)
      want = np.mean(x[b, cols], axis=0) if cols else np.zeros(3)
      np.testing.assert_allclose(pooled[b, r], want, rtol=1e-5, atol=1e-6)


def test_configuration_errors_are_clear():
  S = jnp.zeros((1, 4, 6))
  cases = [
      (dict(kind="mixer"), "kind must be one of"),
      (dict(doc_reduction="max_pool", reduced_doc_len=3), "doc_reduction must be one of"),
      (dict(doc_reduction="avg_pool"), "needs 1 <= reduced_doc_len <= doc_len=6"),
      (dict(doc_reduction="avg_pool", reduced_doc_len=4), "multiple of reduced_doc_len=4"),
      (dict(reduced_doc_len=3), "doc_reduction is None"),
  ]
  for config, message in cases:
    with pytest.raises(ValueError, match=message):
      jax.eval_shape(LiteScorer(4, 6, 5, 3, **config).init, jax.random.key(0), S)
  model = LiteScorer(4, 6, 5, 3)
  params = _random_params(model, S, 0)
  with pytest.raises(ValueError, match="doc_reduced=True but has no doc_reduction"):
    jax.eval_shape(functools.partial(model.apply, doc_reduced=True), params, S)
  with pytest.raises(ValueError, match="more than query_len=4"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, 5, 6)))
  with pytest.raises(ValueError, match="multiple of the window"):
    lite.avg_pool_tokens(jnp.zeros((1, 5, 2)), None, window=2)


@pytest.mark.parametrize("config", CONFIGS[1:3], ids=lambda c: "-".join(map(str, c.values())))
def test_jit_vmap_and_grad(config):
  rng = np.random.default_rng(4)
  S, q_mask, d_mask = _random_case(rng, (4,), 4, 6)
  S = S.astype(np.float32)
  model, params = _model_and_params(config, S)
  batched = jax.jit(model.apply)(params, S, q_mask, d_mask)
  per_row = jax.jit(jax.vmap(lambda s, qm, dm: model.apply(params, s[None], qm[None],
                                                           dm[None])[0]))(S, q_mask, d_mask)
  np.testing.assert_allclose(per_row, batched, rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, S, q_mask, d_mask) ** 2)))(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]],
                         ids=lambda c: "-".join(map(str, c.values())))
def test_bfloat16_is_finite_and_close_to_float32(config):
  rng = np.random.default_rng(5)
  S, q_mask, d_mask = _random_case(rng, (8,), 4, 6)
  S = (S * 20).astype(np.float32)  # dot products of unnormalised vectors are large
  model32, params = _model_and_params(config, S)
  model16 = model32.clone(dtype=jnp.bfloat16)
  s32 = jax.jit(model32.apply)(params, S, q_mask, d_mask)
  s16 = jax.jit(model16.apply)(params, jnp.asarray(S, jnp.bfloat16), q_mask, d_mask)
  assert s16.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(s16, np.float32)))
  scale = np.max(np.abs(np.asarray(s32)))
  np.testing.assert_allclose(np.asarray(s16, np.float32), s32, atol=0.1 * scale)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model16.apply(p, S, q_mask, d_mask))))(params)
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads))


def test_every_parameter_has_logical_axes_and_runs_sharded():
  rng = np.random.default_rng(6)
  S, q_mask, d_mask = _random_case(rng, (8,), 4, 6)
  S = S.astype(np.float32)
  model = LiteScorer(4, 6, row_width=8, col_width=4, doc_reduction="projection",
                     reduced_doc_len=4)
  boxed = jax.eval_shape(model.init, jax.random.key(0), S)
  assert all(isinstance(x, nn.LogicallyPartitioned)
             for x in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
  specs = nn.get_partition_spec(boxed)
  assert specs["params"]["row"]["dense_a"]["kernel"] == jax.sharding.PartitionSpec(
      sharding.LENGTH, sharding.MLP)
  # The real initialisers, run straight into their shardings on a (4 data, 2 model) mesh.
  partitioner = Partitioner(num_partitions=2)
  params, _ = partitioner.init(lambda r: model.init(r, S), jax.random.key(0),
                               nn.get_partition_spec)
  kernel = nn.unbox(params)["params"]["row"]["dense_a"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, sharding.MODEL_AXIS)
  local = jax.tree.map(np.asarray, nn.unbox(params))
  unsharded = jax.jit(model.apply)(local, S, q_mask, d_mask)
  with partitioner.context():
    batch = partitioner.shard_batch({"S": S, "q": q_mask, "d": d_mask})
    sharded = jax.jit(model.apply)(params, batch["S"], batch["q"], batch["d"])
  np.testing.assert_allclose(sharded, unsharded, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_separable_lite_learns_colbert_sum_max_by_distillation():
  # LITE's claim is that the MLPs can learn hand-made reductions; ColBERT's Σ_i max_j S_ij is
  # the one it replaces. Distil it with the MSE loss and check the ranking within queries.
  L1, L2, K, B = 4, 8, 8, 32
  model = LiteScorer(L1, L2, row_width=128, col_width=64)
  rng = np.random.default_rng(0)

  def batch(n):
    S = rng.normal(size=(n, K, L1, L2)).astype(np.float32)
    return S, S.max(-1).sum(-1)

  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, L1, L2))))
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)
  labels = np.zeros((B, K), np.int32)
  labels[:, 0] = 1

  @jax.jit
  def step(params, opt_state, S, teacher):
    loss, grads = jax.value_and_grad(
        lambda p: losses.mse(teacher, model.apply(p, S), labels))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  first = None
  for _ in range(1500):
    params, opt_state, loss = step(params, opt_state, *batch(B))
    first = loss if first is None else first
  S, teacher = batch(64)
  student = np.asarray(jax.jit(model.apply)(params, S))
  ranks = lambda x: np.argsort(np.argsort(x, axis=-1), axis=-1).astype(np.float64)
  rt, rs = ranks(teacher), ranks(student)
  rt -= rt.mean(-1, keepdims=True)
  rs -= rs.mean(-1, keepdims=True)
  spearman = np.mean(np.sum(rt * rs, -1) / np.sqrt(np.sum(rt ** 2, -1) * np.sum(rs ** 2, -1)))
  assert loss < 0.05 * first
  assert spearman > 0.8, spearman


# ---------------------------------------------------------------------------------------------
# Compiled where defined, and the Pallas kernel of separable LITE (interpret mode here).

SEPARABLE = [c for c in CONFIGS if c["kind"] == "separable"]


def test_direct_apply_reuses_one_compiled_program():
  rng = np.random.default_rng(7)
  S, q_mask, d_mask = _random_case(rng, (3,), 4, 6)
  model, params = _model_and_params(CONFIGS[0], S)
  before = lite._lite_scores._cache_size()
  first = model.apply(params, S, q_mask, d_mask)
  second = model.apply(params, S * 0.5, q_mask, d_mask)
  assert lite._lite_scores._cache_size() == before + 1
  np.testing.assert_allclose(first, jax.jit(model.apply)(params, S, q_mask, d_mask), rtol=1e-6)
  assert not np.allclose(first, second)


def test_lite_block_module_is_the_row_update():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2, 3, 6)).astype(np.float32)
  block = lite.LiteBlock(hidden=5, features=6)
  params = _random_params(block, x, 3)
  assert sorted(params["params"]) == ["dense_a", "dense_b", "norm_a", "norm_b"]
  got = np.asarray(block.apply(params, x))
  np_params = jax.tree.map(np.asarray, params["params"])
  want = np.stack([[np_block(row.astype(np.float64), np_params) for row in mat] for mat in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", SEPARABLE, ids=lambda c: "-".join(map(str, c.values())))
def test_pallas_matches_numpy_reference(config):
  L1, L2 = 4, 6
  rng = np.random.default_rng(9)
  # 11 matrices: a full block of 8 and a padded one; ragged masks, short matrices padded up.
  S, q_mask, d_mask = _random_case(rng, (11,), 3, 5)
  with jax.enable_x64(True):
    model = LiteScorer(L1, L2, row_width=5, col_width=3, dtype=jnp.float64,
                       param_dtype=jnp.float64, method="pallas", **config)
    params = _random_params(model, S, 1)
    got = np.asarray(model.apply(params, S, q_mask, d_mask))
  np_params = jax.tree.map(np.asarray, params["params"])
  for idx in range(11):
    want = np_lite(S[idx], q_mask[idx], d_mask[idx], np_params, L1=L1, L2=L2,
                   kind="separable", doc_reduction=config.get("doc_reduction"),
                   reduced=config.get("reduced_doc_len"))
    np.testing.assert_allclose(got[idx], want, rtol=1e-9, atol=1e-9)


def test_pallas_bfloat16_and_gradients_match_xla():
  rng = np.random.default_rng(10)
  S, q_mask, d_mask = _random_case(rng, (2, 3), 4, 6)
  S = S.astype(np.float32)
  results = {}
  for method in ("pallas", "xla"):
    model, params = _model_and_params(CONFIGS[0], S, method=method)
    model16 = LiteScorer(4, 6, row_width=6, col_width=4, dtype=jnp.bfloat16, method=method)
    loss = lambda p, s, model=model: jnp.sum(jnp.sin(  # noqa: E731
        model.apply(p, s, q_mask, d_mask)))
    results[method] = (model16.apply(params, S, q_mask, d_mask),
                       jax.grad(loss, argnums=(0, 1))(params, S))
  low_pallas, low_xla = results["pallas"][0], results["xla"][0]
  assert low_pallas.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low_pallas, np.float32), np.asarray(low_xla, np.float32),
                             rtol=2e-2, atol=2e-2)
  for got, want in zip(jax.tree.leaves(results["pallas"][1]), jax.tree.leaves(results["xla"][1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pallas_kernel_lowers_for_tpu(monkeypatch):
  from jax import export
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  jax.clear_caches()
  model = LiteScorer(32, 180, row_width=2400, col_width=360)  # LITE App. A.1's widths
  S = jnp.zeros((20, 32, 180), jnp.float32)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), S))
  exported = export.export(jax.jit(model.apply), platforms=["tpu"])(params, S)
  assert "tpu_custom_call" in exported.mlir_module()
  jax.clear_caches()
