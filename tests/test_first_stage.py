"""First-stage candidate scoring (XTR) from the token search's results, against brute-force
NumPy loops, and the token-index path that refines only the best R candidates."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.retrieval import all_documents
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import first_stage
from aligner_jax.retrieval import refine
from aligner_jax.retrieval import refine_many
from tests.test_retrieval import make_corpus


def reference_xtr(owner, docs, scores, num_queries):
  """{query: {doc: score}} by loops: per query token, its best score in the document if the
  document was retrieved, else the token's lowest retrieved score."""
  out = {}
  for b in range(num_queries):
    rows = [t for t in range(len(owner)) if owner[t] == b]
    retrieved = {int(d) for t in rows for d in docs[t] if d >= 0}
    out[b] = {}
    for d in retrieved:
      total = 0.0
      for t in rows:
        hits = [float(s) for dd, s in zip(docs[t], scores[t]) if dd == d]
        valid = [float(s) for dd, s in zip(docs[t], scores[t]) if dd >= 0]
        total += max(hits) if hits else (min(valid) if valid else 0.0)
      out[b][d] = total
  return out


@st.composite
def search_results(draw):
  num_queries = draw(st.integers(1, 4))
  num_docs = draw(st.integers(1, 12))
  k = draw(st.integers(1, 6))
  owner = np.array(sorted(draw(st.lists(st.integers(0, num_queries - 1), min_size=1,
                                        max_size=9))))
  docs = np.array(draw(st.lists(st.lists(st.integers(-1, num_docs - 1), min_size=k,
                                         max_size=k), min_size=len(owner),
                                max_size=len(owner))))
  # Few distinct values, so ties between documents are common.
  scores = np.array(draw(st.lists(st.lists(st.sampled_from([-1.0, -0.25, 0.0, 0.5, 2.0]),
                                           min_size=k, max_size=k), min_size=len(owner),
                                  max_size=len(owner))), np.float32)
  return owner, docs, scores, num_queries, num_docs


@settings(max_examples=150, deadline=None)
@given(search_results())
def test_xtr_scores_match_brute_force(case):
  owner, docs, scores, num_queries, num_docs = case
  query, doc, score = first_stage.xtr_scores(owner, docs, scores, num_queries=num_queries,
                                             num_docs=num_docs)
  got = {b: {} for b in range(num_queries)}
  for b, d, s in zip(query, doc, score):
    got[int(b)][int(d)] = float(s)
  want = reference_xtr(owner, docs, scores, num_queries)
  assert got.keys() == want.keys()
  for b in want:
    assert got[b].keys() == want[b].keys()
    for d in want[b]:
      assert got[b][d] == pytest.approx(want[b][d], abs=1e-9)
  assert np.all(np.diff(query * num_docs + doc) > 0)  # sorted by (query, doc), distinct
  uq, ud = first_stage.union_pairs(owner, docs, num_docs=num_docs)
  np.testing.assert_array_equal(uq, query)
  np.testing.assert_array_equal(ud, doc)


@settings(max_examples=150, deadline=None)
@given(search_results(), st.integers(1, 5))
def test_top_per_query_keeps_the_best_with_ties_to_lower_documents(case, keep):
  owner, docs, scores, num_queries, num_docs = case
  query, doc, score = first_stage.xtr_scores(owner, docs, scores, num_queries=num_queries,
                                             num_docs=num_docs)
  chosen = first_stage.top_per_query(query, doc, score, num_queries=num_queries, keep=keep)
  for b in range(num_queries):
    entries = sorted(((-s, d) for q, d, s in zip(query, doc, score) if q == b))
    want = sorted(d for _, d in entries[:keep])
    assert sorted(doc[chosen & (query == b)].tolist()) == want
  per_query = first_stage.split_by_query(query[chosen], doc[chosen], num_queries)
  assert len(per_query) == num_queries
  assert all(np.all(np.diff(d) > 0) for d in per_query)


def test_row_floors_of_empty_and_partial_rows():
  docs = np.array([[3, 1, -1], [-1, -1, -1], [0, 2, 5]])
  scores = np.array([[0.9, 0.4, -np.inf], [-np.inf] * 3, [0.3, 0.2, 0.1]], np.float32)
  np.testing.assert_allclose(first_stage.row_floors(scores, docs), [0.4, 0.0, 0.1])
  with pytest.raises(ValueError, match="keep must be positive"):
    first_stage.top_per_query(np.zeros(1, int), np.zeros(1, int), np.zeros(1), num_queries=1,
                              keep=0)


def _index(shards):
  store, queries = make_corpus(num_docs=80, num_queries=9)
  config = IndexConfig(backend="exact", vector_dtype="float32",
                       max_shard_tokens=None if shards == 1 else store.num_tokens // shards + 1)
  index = build_token_index(store, config)
  assert (len(index.shards) > 1) == (shards > 1)
  return store, queries, index


@pytest.mark.parametrize("shards", [1, 3])
def test_candidate_documents_keep_the_best_r_by_xtr_score(shards):
  store, queries, index = _index(shards)
  k = 12
  union = candidate_documents(index, queries, num_neighbors=k)
  best = candidate_documents(index, queries, num_neighbors=k, num_refine=5)
  assert union.scores is None and union.num_refine is None and best.num_refine == 5
  doc_of_row = np.repeat(np.arange(store.num_docs), store.lengths)
  vectors = store.dequantize()
  for b in range(len(queries)):
    tokens = queries.vectors[b, queries.mask[b]]
    sims = tokens @ vectors.T  # [n, T]
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    owner = np.zeros(len(tokens), int)
    want = reference_xtr(owner, doc_of_row[top], np.take_along_axis(sims, top, 1), 1)[0]
    assert set(union.docs[b].tolist()) == set(want)
    ranked = sorted(want, key=lambda d: (-want[d], d))[:5]
    np.testing.assert_array_equal(best.docs[b], sorted(ranked))
    np.testing.assert_allclose(best.scores[b], [want[d] for d in best.docs[b]], rtol=1e-5)


def test_refining_r_candidates_refines_exactly_them_with_every_alignment():
  _, queries, index = _index(1)
  cands = candidate_documents(index, queries, num_neighbors=10, num_refine=7)
  alignments = ["top_k:1", "top_k:4", "top_p:0.1"]
  results = refine_many(index, queries, cands, alignments, top_n=1000)
  exhaustive = refine_many(index, queries, all_documents(index, queries), alignments,
                           top_n=1000)
  for spec in alignments:
    for b in range(len(queries)):
      docs, scores = results[spec][b]
      assert sorted(docs.tolist()) == cands.docs[b].tolist()
      # Each refined score is the alignment's score of that document (exhaustive run).
      full = dict(zip(*exhaustive[spec][b]))
      np.testing.assert_allclose(scores, [full[d] for d in docs], rtol=1e-5)
  # Saliences change the refined scores of the same candidates.
  plain = refine(index, queries, cands, "top_k:1", use_salience=False)
  assert any(not np.allclose(p[1], s[1]) or not np.array_equal(p[0], s[0])
             for p, s in zip(plain, results["top_k:1"]))


def test_num_refine_is_checked():
  _, queries, index = _index(1)
  with pytest.raises(ValueError, match="num_refine"):
    candidate_documents(index, queries, num_neighbors=4, num_refine=-1)
  zero = candidate_documents(index, queries, num_neighbors=4, num_refine=0)
  union = candidate_documents(index, queries, num_neighbors=4)
  assert zero.num_refine is None
  assert all(np.array_equal(a, b) for a, b in zip(zero.docs, union.docs))
