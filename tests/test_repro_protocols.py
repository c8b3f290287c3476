"""The papers' own protocols in the reproductions: the evaluation runs refine with every token
(ALIGNER §3.2), the R3 heads can solve the LP with the paper's Eq. 5 iterations, R4's LITE can
see raw dot products."""

import json
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


def _head_store_and_queries(rng, num_docs=30, h=8):
  from aligner_jax.index.token_store import from_padded  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import QueryBatch  # pylint: disable=g-import-not-at-top
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  lengths = rng.integers(2, 13, size=num_docs)
  mask = np.arange(12)[None] < lengths[:, None]
  store = from_padded([f"d{i}" for i in range(num_docs)],
                      unit(rng.normal(size=(num_docs, 12, h))).astype(np.float32), mask,
                      salience=rng.uniform(size=(num_docs, 12)).astype(np.float32) * mask,
                      vector_dtype="float32")
  qmask = np.arange(5)[None] < rng.integers(2, 6, size=6)[:, None]
  queries = QueryBatch([f"q{i}" for i in range(6)],
                       unit(rng.normal(size=(6, 5, h))).astype(np.float32), qmask,
                       rng.uniform(size=(6, 5)).astype(np.float32) * qmask, None, None)
  return store, queries


@pytest.mark.parametrize("refine_tokens", ["all", "kept"])
def test_pruning_evaluator_matches_the_token_index_path(refine_tokens):
  """Each setting's run is the library's retrieval through that setting's index: candidates
  of the pruned index, refined with all tokens (or the kept ones), shared refinement or not."""
  from aligner_jax.index import IndexConfig  # pylint: disable=g-import-not-at-top
  from aligner_jax.index import build_token_index  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import retrieve  # pylint: disable=g-import-not-at-top
  from repro.frozen import head_eval  # pylint: disable=g-import-not-at-top
  store, queries = _head_store_and_queries(np.random.default_rng(2))
  settings = [(1.0, 1.0), (1.0, 0.5), (0.3, 0.5), (0.3, 1.0)]
  ev = head_eval.PruningEvaluator(store, queries, num_neighbors=3, top_n=10,
                                  refine_tokens=refine_tokens)
  got = ev.runs(settings)
  for bd, bq in settings:
    index = build_token_index(store, IndexConfig(backend="exact", prune_doc_ratio=bd,
                                                 refine_tokens=refine_tokens))
    want, cands = retrieve(index, queries, heads.MAXSIM, num_neighbors=3,
                           prune_query_ratio=bq, top_n=10)
    run, stats = got[(bd, bq)]
    assert stats["indexed_tokens"] == index.num_ann_tokens
    assert stats["mean_candidates"] == pytest.approx(cands.sizes().mean())
    assert set(run) == set(want)
    for q in want:
      assert list(run[q]) == list(want[q]), (bd, bq, q)
      np.testing.assert_allclose([run[q][d] for d in want[q]], list(want[q].values()),
                                 rtol=1e-5)
  # Pruning changes the candidates; with all-token refinement not the scores.
  if refine_tokens == "all":
    full, pruned = got[(1.0, 1.0)][0], got[(0.3, 1.0)][0]
    shared = [(q, d) for q in pruned for d in pruned[q] if d in full[q]]
    assert shared and all(full[q][d] == pruned[q][d] for q, d in shared)


def _examples():
  from repro.frozen import batches as batches_lib  # pylint: disable=g-import-not-at-top
  return batches_lib.Examples(["a", "b", "c"], np.array([0, 1, 2]),
                              [np.array([3]), np.array([4, 5]), np.array([6])],
                              [np.array([7, 8, 9])] * 3)


def test_paper_protocol_pools_top_lists_and_triplets():
  from repro.frozen import distill_protocols as dp  # pylint: disable=g-import-not-at-top
  ex = _examples()
  bm25 = [np.array([3, 10, 11, 12]), np.array([13, 5, 14]), np.array([15, 16, 17, 18])]
  rows, counts = dp.pool_rows(ex, bm25, depth=3)
  np.testing.assert_array_equal(rows, [[3, 10, 11, -1], [4, 5, 13, 14], [6, 15, 16, 17]])
  np.testing.assert_array_equal(counts, [1, 2, 1])
  raw = np.where(rows >= 0, rows.astype(np.float32), 0.0)  # the teacher prefers large rows
  pool = dp.score_pool(rows, counts, lambda r: np.where(r >= 0, r.astype(np.float32), 0.0))
  valid = rows >= 0
  assert abs(pool.scores[valid].mean()) < 1e-6 and abs(pool.scores[valid].std() - 1) < 1e-5
  assert pool.mean == pytest.approx(raw[valid].mean())
  top, top_scores = dp.teacher_top(pool, 2)
  np.testing.assert_array_equal(top, [[11, 10], [14, 13], [17, 16]])  # relevant ones dropped
  assert np.all(np.diff(top_scores, axis=1) <= 0)
  wide, _ = dp.teacher_top(pool, 5)
  assert wide[0].tolist() == [11, 10, 3, -1]  # a pool shorter than k keeps its padding


def test_triplets_pair_a_relevant_document_with_a_pool_negative_and_their_scores():
  from aligner_jax.index.token_store import from_padded  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import QueryBatch  # pylint: disable=g-import-not-at-top
  from repro.frozen import distill_protocols as dp  # pylint: disable=g-import-not-at-top
  ex = _examples()
  rows = np.array([[3, 10, 11, 12], [4, 5, 13, 14], [6, 15, 16, -1]])
  counts = np.array([1, 2, 1])
  pool = dp.score_pool(rows, counts, lambda r: np.where(r >= 0, r.astype(np.float32), 0.0))
  corpus = from_padded([f"d{i}" for i in range(20)], np.ones((20, 1, 4), np.float32),
                       np.ones((20, 1), bool))
  queries = QueryBatch(["a", "b", "c"], np.ones((3, 2, 4), np.float32), np.ones((3, 2), bool),
                       None, None, None)
  it = dp.triplet_batches(ex, queries, corpus, pool, batch_size=3, negative_depth=2,
                          doc_length=1, seed=0)
  score_of = {(i, int(d)): s for i in range(3) for d, s in zip(rows[i], pool.scores[i])}
  seen_negatives = set()
  for _ in range(20):
    batch = next(it)
    assert batch["docs"].shape[:2] == (3, 2) and batch["teacher"].shape == (3, 2)
    np.testing.assert_array_equal(batch["labels"], [[1, 0]] * 3)
    # Queries come back through their query vectors; identify them by the teacher scores.
    for b in range(3):
      i = next(i for i in range(3) if any(
          abs(score_of.get((i, int(d)), np.nan) - batch["teacher"][b, 0]) < 1e-6
          for d in rows[i][:counts[i]]))
      negatives = [int(d) for d in rows[i][counts[i]:counts[i] + 2]]
      match = [d for d in negatives if abs(score_of[(i, d)] - batch["teacher"][b, 1]) < 1e-6]
      assert match, (i, batch["teacher"][b])
      seen_negatives.add((i, match[0]))
  assert (0, 12) not in seen_negatives  # beyond negative_depth
  assert {(0, 10), (0, 11)} <= seen_negatives
  bad = dp.TeacherPool(np.array([[3, -1]]), np.zeros((1, 2), np.float32), np.array([1]), 0, 1)
  with pytest.raises(ValueError, match="needs a relevant document and a negative"):
    next(dp.triplet_batches(ex.select([0]), queries, corpus, bad, batch_size=1,
                            negative_depth=2, doc_length=1, seed=0))


@pytest.mark.parametrize("gin_file, job, data_scope", [
    ("repro_r4_frozen_layers", "repro_r4_rerank", "layer/FrozenData"),
    ("repro_r5_distill_paper", "repro_r5_distill", "scifact/FrozenData")])
def test_paper_protocol_gin_files_parse(gin_file, job, data_scope):
  from aligner_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main_lib.parse_gin([f"gin/experiments/{gin_file}.gin"], [])
    assert gin.query_parameter("run.job").selector == job
    assert gin.query_parameter(f"{job}.data").scoped_selector == data_scope
  finally:
    gin.clear_config()


def test_r1_head_gin_file_parses():
  from aligner_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    main_lib.parse_gin(["gin/experiments/repro_r1_aligner_head.gin"], [])
    assert gin.query_parameter("run.job").selector == "repro_r1_frozen_head"
    assert gin.query_parameter("repro_r1_frozen_head.head").scoped_selector == (
        "colbert/FrozenHead")
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_r1_head_job_and_paper_protocol_jobs_two_steps(tmp_path):
  import test_repro_frozen as tf  # pylint: disable=g-import-not-at-top (the tiny collection)
  rng = np.random.default_rng(0)
  qrels = tf._write_collection(tmp_path / "beir", rng)  # pylint: disable=protected-access
  tf._write_cache(tmp_path / "cache", qrels, rng)  # pylint: disable=protected-access
  common = tf._tiny_bindings(tmp_path, tmp_path / "out")  # pylint: disable=protected-access
  small_sweep = ["R4_SWEEP = {'learning_rate': [1e-3]}"]
  r1 = tf._run_job("gin/experiments/repro_r1_aligner_head.gin", common + small_sweep + [  # pylint: disable=protected-access
      f"R1_HEAD_CACHE = '{tmp_path / 'head_cache'}'", "R1_HEAD_NEIGHBORS = 4",
      f"R1_HEAD_OUTPUT = '{tmp_path / 'r1_head.json'}'", "head/R1Dataset.doc_length = 24",
      "head/R1Dataset.query_length = 256",
      f"repro_r1_frozen_head.figures_dir = '{tmp_path}'",
      f"repro_r1_frozen_head.work_dir = '{tmp_path / 'r1work'}'"])
  report = r1["reports"][0]
  assert report["dataset"] == "scifact-aligner-head" and len(report["strategies"]) == 9
  assert r1["setup"]["head_name"] == "colbert"
  assert (tmp_path / "r1_head_heatmap.png").is_file()
  assert (tmp_path / "head_cache" / "queries-test" / "manifest.json").is_file()
  r3 = tf._run_job("gin/experiments/repro_r3_gates.gin", common + [  # pylint: disable=protected-access
      f"R3_OUTPUT = '{tmp_path / 'r3.json'}'", f"R3_FIGURE = '{tmp_path / 'r3.png'}'",
      "R3_GATES = ['lp', 'lp_iters3']", "PRUNING_MODE = 'index'"])
  assert set(r3["results"]) == {"lp", "lp_iters3"}
  assert "all tokens" in r3["setup"]["mode"]
  r5 = tf._run_job("gin/experiments/repro_r5_distill_paper.gin", common + small_sweep + [  # pylint: disable=protected-access
      f"R5_OUTPUT = '{tmp_path / 'r5.json'}'", f"R5_FIGURE = '{tmp_path / 'r5.png'}'",
      "R5_NUM_CANDIDATES = 6", "R5_POOL_DEPTH = 10", "R5_SEEDS = [0]", "R5_STEPS = 4",
      "R5_EVAL_EVERY = 2", "R5_SWEEP = {'learning_rate': [1e-3]}"])
  assert r5["results"]["protocol"] == "paper"
  assert r5["results"]["teacher"]["pool_depth"] == 10
  for entry in r5["results"]["students"].values():
    assert 0 <= entry["summary"]["ndcg@10"]["mean"] <= 1


def _pruning_content(gates, **setup):
  cell = {"doc_ratio": 1.0, "query_ratio": 0.5, "reference": [1.0, 0.5],
          "ndcg@10": {"mean": 0.5, "std": 0.0, "n": 1}, "mrr@10": {"mean": 0.4, "std": 0.0, "n": 1},
          "delta_points": {"mean": 0.0, "std": 0.0, "n": 1}, "indexed_fraction": 1.0}
  return {"claim": "r3", "created": "t", "machine": {}, "wall_seconds": 1.0, "paper": {"x": 1},
          "setup": {"data": {"name": "d", "test_split": "test"}, "gates": list(gates), **setup},
          "results": {g: {"seeds": [{"seed": 0}], "summary": [cell]} for g in gates}}


def test_merge_results_joins_gates_of_the_same_run_and_refuses_others(tmp_path):
  from repro.frozen import merge_results  # pylint: disable=g-import-not-at-top
  a, b = _pruning_content(["relu", "hard_topk"]), _pruning_content(["lp"])
  merged = merge_results.merge([a, b], ["a.json", "b.json"], ["lp", "relu", "hard_topk"])
  assert list(merged["results"]) == ["lp", "relu", "hard_topk"]
  assert merged["setup"]["gates"] == ["lp", "relu", "hard_topk"]
  assert [m["gates"] for m in merged["merged_from"]] == [["relu", "hard_topk"], ["lp"]]
  assert merged["paper"] == {"x": 1} and "wall_seconds" not in merged
  with pytest.raises(ValueError, match="also in a.json"):
    merge_results.merge([a, a], ["a.json", "c.json"])
  with pytest.raises(ValueError, match="set-up differs"):
    merge_results.merge([a, _pruning_content(["lp"], mode="index")], ["a.json", "b.json"])
  with pytest.raises(ValueError, match="must list exactly"):
    merge_results.merge([a, b], ["a.json", "b.json"], ["lp", "relu"])
  paths = []
  for name, content in (("a", a), ("b", b)):
    paths.append(tmp_path / f"{name}.json")
    paths[-1].write_text(json.dumps(content))
  out = merge_results.main([str(tmp_path / "m.json"), *map(str, paths), "--gates",
                            "lp,relu,hard_topk", "--figure", str(tmp_path / "m.png")])
  assert (tmp_path / "m.md").read_text().count("Gate `") == 3
  assert (tmp_path / "m.png").stat().st_size > 0 and out["results"]["lp"]
