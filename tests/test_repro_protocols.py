"""The papers' own protocols in the reproductions: the evaluation runs refine with every token
(ALIGNER §3.2), the R3 heads can solve the LP with the paper's Eq. 5 iterations, R4's LITE can
see raw dot products."""

import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from repro.frozen import head_training as train_lib
from repro.frozen import heads

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("run_file, scope", [("gin/runs/eval_beir.gin", "eval"),
                                             ("gin/runs/index.gin", "index")])
def test_evaluation_runs_refine_with_all_tokens_by_default(run_file, scope):
  from aligner_jax import main  # noqa: F401  pylint: disable=g-import-not-at-top (registers run)
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(ROOT / "gin/models/t5_1_1_tiny.gin"), str(ROOT / run_file)], [],
        finalize_config=False)
    assert gin.query_parameter("%REFINE_TOKENS") == "all"
    ref = gin.query_parameter(f"{scope}/IndexConfig.refine_tokens")
    assert ref.scoped_selector == "REFINE_TOKENS/gin.macro"
  finally:
    gin.clear_config()


def test_with_gate_names_the_solvers():
  base = heads.HeadConfig(kind="aligner", projection_dim=8)
  assert heads.with_gate(base, "lp").salience_num_iters is None
  eq5 = heads.with_gate(base, "lp_iters5")
  assert (eq5.gate, eq5.salience_num_iters) == ("lp", 5)
  back = heads.with_gate(eq5, "relu")
  assert (back.gate, back.salience_num_iters) == ("relu", None)
  for bad in ("lp_iters", "lp_iters0", "lp_itersx"):
    with pytest.raises(ValueError, match="lp_iters<N>"):
      heads.with_gate(base, bad)


def _batch(rng, b=3, k=4, n=5, m=7, h=12):
  q = rng.normal(size=(b, n, h)).astype(np.float32)
  d = rng.normal(size=(b, k, m, h)).astype(np.float32)
  qm = np.arange(n)[None] < rng.integers(2, n + 1, size=b)[:, None]
  dm = np.arange(m)[None, None] < rng.integers(2, m + 1, size=(b, k))[..., None]
  return q, qm, d, dm


def _saliences(config, params, hidden, mask):
  module = heads.build_module(config)
  return np.asarray(heads.encode_side(module, params, "doc", jnp.asarray(hidden),
                                      jnp.asarray(mask))["salience"])


def test_eq5_heads_differ_from_the_exact_solver_and_train():
  rng = np.random.default_rng(0)
  q, qm, d, dm = _batch(rng)
  exact = heads.with_gate(heads.HeadConfig(kind="aligner", projection_dim=8, query_len=5,
                                           doc_len=7, doc_salience_ratio=0.5), "lp")
  module = heads.build_module(exact)
  params = heads.init_params(module, exact, hidden_dim=12, rng=jax.random.key(0))
  docs, mask = d.reshape(-1, 7, 12), dm.reshape(-1, 7)
  u_exact = _saliences(exact, params, docs, mask)
  u_eq5 = _saliences(heads.with_gate(exact, "lp_iters3"), params, docs, mask)
  assert np.all(u_eq5[~mask] == 0) and np.all(u_exact[~mask] == 0)
  # Same parameters, another solver: Eq. 5 from a = b = 0 stops far from the budget.
  assert not np.allclose(u_exact, u_eq5, atol=1e-3)
  eq5 = heads.with_gate(exact, "lp_iters3")
  labels = np.zeros((3, 4), np.float32)
  labels[:, 0] = 1
  batch = {"query": q, "query_mask": qm, "docs": d, "doc_mask": dm,
           "cand_mask": np.ones((3, 4), bool), "labels": labels}
  loss_fn = train_lib.make_loss_fn(heads.build_module(eq5), eq5,
                                   train_lib.TrainConfig(objective="group", temperature=0.1))
  grads = jax.grad(loss_fn)(params, {k: jnp.asarray(v) for k, v in batch.items()})
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
  assert np.any(np.asarray(grads["doc_salience"]["kernel"]) != 0)


def test_lite_sees_raw_dot_products_when_vectors_are_not_normalised():
  rng = np.random.default_rng(1)
  q, qm, d, dm = _batch(rng)
  seen = {}
  for normalize in (True, False):
    config = heads.HeadConfig(kind="lite", query_len=5, doc_len=7, lite_row_width=6,
                              lite_col_width=4, normalize_vectors=normalize)
    module = heads.build_module(config)

    def fn(mdl):
      qe = mdl.encode_hidden("query", jnp.asarray(q), jnp.asarray(qm))
      de = mdl.encode_hidden("doc", jnp.asarray(d[:, 0]), jnp.asarray(dm[:, 0]))
      return qe.vectors, de.vectors

    params = heads.init_params(module, config, hidden_dim=12, rng=jax.random.key(0))
    seen[normalize] = module.apply({"params": params}, method=fn)
  raw_q, raw_d = (np.asarray(x) for x in seen[False])
  np.testing.assert_allclose(raw_q, q * qm[..., None], rtol=1e-6)
  np.testing.assert_allclose(raw_d, d[:, 0] * dm[:, 0, ..., None], rtol=1e-6)
  norms = np.linalg.norm(np.asarray(seen[True][0]), axis=-1)
  np.testing.assert_allclose(norms[qm], 1.0, rtol=1e-5)
