"""Token-index retrieval (candidates + refinement), dense search and re-ranking, against
brute-force NumPy references."""

import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.index import from_padded
from aligner_jax.index import top_salience_mask
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import alignment_pair_fn
from aligner_jax.retrieval import all_documents
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import dense_search
from aligner_jax.retrieval import lite_pair_fn
from aligner_jax.retrieval import refine
from aligner_jax.retrieval import rerank
from aligner_jax.retrieval import retrieve
from aligner_jax.retrieval import token_scorer


def make_corpus(num_docs=60, max_len=40, num_queries=6, q_len=7, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(24, dim)).astype(np.float32)
  lengths = rng.integers(3, max_len + 1, num_docs)
  lengths[0] = max_len
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, 24, (num_docs, max_len))] + 0.5 * rng.normal(
      size=(num_docs, max_len, dim)).astype(np.float32)
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  store = from_padded([f"d{i}" for i in range(num_docs)], vectors, mask, salience=salience,
                      pooled=vectors.mean(1))
  q_mask = np.arange(q_len)[None, :] < rng.integers(2, q_len + 1, num_queries)[:, None]
  q_vectors = centres[rng.integers(0, 24, (num_queries, q_len))] + 0.5 * rng.normal(
      size=(num_queries, q_len, dim)).astype(np.float32)
  q_sal = rng.random((num_queries, q_len)).astype(np.float32)
  queries = QueryBatch([f"q{i}" for i in range(num_queries)], q_vectors, q_mask, q_sal,
                       pooled=q_vectors.mean(1))
  return store, queries


def reference_score(q, q_mask, q_sal, d, d_mask, d_sal, kind, value):
  """ALIGNER Eq. (1)-(2) by loops: top-k / top-p per valid query row, salience-weighted."""
  q, d = q[q_mask], d[d_mask]
  uq, ud = q_sal[q_mask], d_sal[d_mask]
  s = q @ d.T
  m = len(d)
  count = min(value, m) if kind == "top_k" else max(int(np.floor(value * m + 1e-9)), 1)
  num = den = 0.0
  for i in range(len(q)):
    for j in np.lexsort((np.arange(m), -s[i]))[:count]:
      a = uq[i] * ud[j]
      num += s[i, j] * a
      den += a
  return num / den if den > 0 else 0.0


def test_candidates_are_the_union_of_each_tokens_neighbours():
  store, queries = make_corpus()
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32"))
  cands = candidate_documents(index, queries, num_neighbors=15, prune_query_ratio=0.5)
  doc_of_row = np.repeat(np.arange(store.num_docs), store.lengths)
  all_vectors = store.dequantize()
  searched = top_salience_mask(queries.salience, queries.mask, 0.5)
  for b in range(len(queries)):
    want = set()
    for t in np.flatnonzero(searched[b]):
      scores = all_vectors @ queries.vectors[b, t]
      want |= set(doc_of_row[np.lexsort((np.arange(len(scores)), -scores))[:15]].tolist())
    assert set(cands.docs[b].tolist()) == want
  # K′ is capped by the index size: everything is a candidate.
  every = candidate_documents(index, queries, num_neighbors=10**9)
  assert every.num_neighbors == store.num_tokens
  assert all(len(d) == store.num_docs for d in every.docs)


@pytest.mark.parametrize("alignment,kind,value", [("top_k:1", "top_k", 1),
                                                  ("top_k:4", "top_k", 4),
                                                  ("top_p:0.1", "top_p", 0.1)])
def test_refinement_equals_brute_force_scores(alignment, kind, value):
  store, queries = make_corpus(seed=1)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32"))
  cands = candidate_documents(index, queries, num_neighbors=30)
  results = refine(index, queries, cands, alignment, top_n=10)
  # Refining query by query or in blocks of queries gives the same documents and scores.
  for block in (1,):
    other = refine(index, queries, cands, alignment, top_n=10, query_block=block)
    for (d1, s1), (d2, s2) in zip(results, other):
      np.testing.assert_array_equal(d1, d2)
      np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
  for b, (docs, scores) in enumerate(results):
    ref = {}
    for d in cands.docs[b]:
      sl = store.doc_tokens(d)
      n = sl.stop - sl.start
      ref[int(d)] = reference_score(queries.vectors[b], queries.mask[b], queries.salience[b],
                                    store.vectors[sl], np.ones(n, bool), store.salience[sl],
                                    kind, value)
    want = sorted(ref, key=lambda d: (-ref[d], d))[:10]
    np.testing.assert_allclose(scores, [ref[d] for d in want], rtol=1e-5, atol=1e-6)
    assert len(docs) == min(10, len(cands.docs[b]))
    # Same documents up to float ties.
    np.testing.assert_allclose([ref[int(d)] for d in docs], [ref[d] for d in want], rtol=1e-5,
                               atol=1e-6)


def test_refine_many_scores_every_alignment_in_one_pass():
  """Several alignments refined together equal the brute-force scores of each (and a repeated
  spec is refined once); progress lines carry counts."""
  from aligner_jax.retrieval.token_retrieval import refine_many
  store, queries = make_corpus(seed=5, num_queries=9)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32"))
  cands = candidate_documents(index, queries, num_neighbors=25)
  specs = {"top_k:1": ("top_k", 1), "top_k:3": ("top_k", 3), "top_p:0.2": ("top_p", 0.2)}
  lines = []
  many = refine_many(index, queries, cands, list(specs) + ["top_k:1"], top_n=8,
                     query_block=4, progress=lines.append)
  assert set(many) == set(specs)
  assert lines and lines[-1].endswith("done") and "9/9 queries" in lines[-1]
  for spec, (kind, value) in specs.items():
    for b, (docs, scores) in enumerate(many[spec]):
      ref = {}
      for d in cands.docs[b]:
        sl = store.doc_tokens(d)
        ref[int(d)] = reference_score(
            queries.vectors[b], queries.mask[b], queries.salience[b], store.vectors[sl],
            np.ones(sl.stop - sl.start, bool), store.salience[sl], kind, value)
      want = sorted(ref, key=lambda d: (-ref[d], d))[:8]
      np.testing.assert_allclose(scores, [ref[d] for d in want], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose([ref[int(d)] for d in docs], [ref[d] for d in want],
                                 rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="at least one alignment"):
    refine_many(index, queries, cands, [])


def test_refinement_without_salience_and_with_pruned_storage():
  store, queries = make_corpus(seed=2)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32",
                                               prune_doc_ratio=0.5))
  kept = index.shards[0].store
  results = refine(index, queries, all_documents(index, queries), "top_k:1", top_n=5,
                   use_salience=False)
  for b, (docs, scores) in enumerate(results):
    for d, s in zip(docs, scores):
      sl = kept.doc_tokens(d)
      n = sl.stop - sl.start
      ref = reference_score(queries.vectors[b], queries.mask[b], np.ones_like(queries.salience[b]),
                            kept.vectors[sl], np.ones(n, bool), np.ones(n, np.float32),
                            "top_k", 1)
      assert s == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_retrieve_with_all_neighbours_equals_exhaustive_refinement():
  store, queries = make_corpus(seed=3)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float16"))
  run, cands = retrieve(index, queries, "top_k:1", num_neighbors=10**6, top_n=20)
  full = refine(index, queries, all_documents(index, queries), "top_k:1", top_n=20)
  for b, q in enumerate(queries.ids):
    assert list(run[q]) == [index.doc_ids[d] for d in full[b][0]]
  assert set(run) == set(queries.ids)


def test_dense_search_matches_numpy():
  store, queries = make_corpus(seed=4)
  results = dense_search(store.pooled, queries.pooled, 7)
  full = queries.pooled @ store.pooled.T
  for b, (docs, scores) in enumerate(results):
    want = np.lexsort((np.arange(store.num_docs), -full[b]))[:7]
    np.testing.assert_array_equal(docs, want)
    np.testing.assert_allclose(scores, full[b, want], rtol=1e-5)
  with pytest.raises(ValueError, match="expected doc vectors"):
    dense_search(store.pooled, queries.pooled[:, :3])


def test_rerank_with_a_token_scorer():
  store, queries = make_corpus(seed=5)
  first = {q: {f"d{(b * 7 + i) % store.num_docs}": 100.0 - i for i in range(30)}
           for b, q in enumerate(queries.ids)}
  score_fn = token_scorer(queries, store, alignment_pair_fn("top_k:1"))
  out = rerank(first, score_fn, depth=10)
  for b, q in enumerate(queries.ids):
    assert len(out[q]) == 10
    assert set(out[q]) == {f"d{(b * 7 + i) % store.num_docs}" for i in range(10)}
    for did, s in out[q].items():
      d = int(did[1:])
      sl = store.doc_tokens(d)
      n = sl.stop - sl.start
      ref = reference_score(queries.vectors[b], queries.mask[b], queries.salience[b],
                            store.vectors[sl], np.ones(n, bool), store.salience[sl], "top_k", 1)
      assert s == pytest.approx(ref, rel=1e-5, abs=1e-6)
  with pytest.raises(ValueError, match="shape"):
    rerank(first, lambda q, docs: np.zeros(3), depth=10)


@pytest.mark.parametrize("alignment", ["top_k:1", "top_k:3", "top_p:0.1"])
def test_float16_stores_score_as_their_float32_values(alignment):
  """float16 documents reach the jitted scorers unconverted (converted chunk by chunk next to
  the GEMM); the scores equal those of float32 copies of the same values."""
  store, queries = make_corpus(seed=8)
  half = store.with_vector_dtype("float16")
  same = half.with_vector_dtype("float32")  # float16 values, stored as float32
  docs = [f"d{i}" for i in range(0, store.num_docs, 3)]
  for q in queries.ids[:3]:
    a = token_scorer(queries, half, alignment_pair_fn(alignment))(q, docs)
    b = token_scorer(queries, same, alignment_pair_fn(alignment))(q, docs)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  half_index = build_token_index(half, IndexConfig(backend="exact", vector_dtype="float16"))
  same_index = build_token_index(same, IndexConfig(backend="exact", vector_dtype="float32"))
  got = refine(half_index, queries, all_documents(half_index, queries), alignment, top_n=10)
  want = refine(same_index, queries, all_documents(same_index, queries), alignment, top_n=10)
  for (d1, s1), (d2, s2) in zip(got, want):
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)


def test_rerank_with_the_models_lite_head():
  import flax.linen as nn
  import jax

  from aligner_jax import models
  from aligner_jax.scoring import LiteScorer
  store, queries = make_corpus(seed=6, dim=16)
  module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                              lite_scorer=LiteScorer(query_len=8, doc_len=48, row_width=4,
                                                     col_width=4))
  # Only the LITE head is used, so only its parameters are initialised.
  head = LiteScorer(query_len=8, doc_len=48, row_width=4, col_width=4)
  head_params = jax.jit(head.init)(jax.random.key(1), np.zeros((1, 8, 48), np.float32),
                                   np.ones((1, 8), bool), np.ones((1, 48), bool))["params"]
  params = {"lite_scorer": nn.unbox(head_params)}
  score_fn = token_scorer(queries, store, lite_pair_fn(module, params), query_length=8,
                          doc_length=48)
  docs = [f"d{i}" for i in range(5)]
  got = score_fn("q2", docs)
  # The same matrices scored directly by the module.
  q = np.zeros((1, 8, 16), np.float32)
  q[0, :7] = queries.vectors[2]
  q_mask = np.zeros((1, 8), bool)
  q_mask[0, :7] = queries.mask[2]
  g = store.gather_padded(np.arange(5), 48)
  direct = jax.jit(lambda p, qe, de: module.apply({"params": p}, qe, de, method="lite_scores"))
  want = direct(params, models.Encoded(q, q_mask, None, q[:, 0]),
                models.Encoded(g["vectors"][None], g["mask"][None], None,
                               g["vectors"][None, :, 0]))
  np.testing.assert_allclose(got, np.asarray(want)[0], rtol=1e-5, atol=1e-6)
