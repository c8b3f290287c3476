"""BM25 hard negatives: equal to a brute-force BM25 ranking, deterministic, cached outside the
data directory."""

import collections
import math
import os
import pathlib

import numpy as np
import pytest

from aligner_jax.data import beir
from aligner_jax.data import negatives
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "beir"


def _subset(collection: Collection, num_docs: int, num_queries: int) -> Collection:
  """The first train queries, their relevant documents and the first documents."""
  qrels = dict(list(collection.qrels["train"].items())[:num_queries])
  keep = set(collection.corpus.ids[:num_docs]) | {d for docs in qrels.values() for d in docs}
  corpus, queries = new_corpus(), new_queries()
  for i, d in enumerate(collection.corpus.ids):
    if d in keep:
      corpus.add(d, collection.corpus.texts[i], title=collection.corpus.titles[i])
  for q in qrels:
    queries.add(q, collection.queries.texts[collection.queries.index[q]])
  return Collection(name="subset", corpus=corpus, queries=queries, qrels={"train": qrels})


def _brute_force_bm25(collection: Collection) -> dict[str, np.ndarray]:
  """Query id -> [D] Lucene BM25 scores (k1 0.9, b 0.4), term by term, in float64."""
  docs = negatives._tokenize([collection.corpus.text(i) for i in range(len(collection.corpus))])
  counts = [collections.Counter(d) for d in docs]
  lengths = np.array([len(d) for d in docs], np.float64)
  avg = lengths.mean()
  df = collections.Counter(t for c in counts for t in c)
  n = len(docs)
  queries = collection.queries
  tokens = negatives._tokenize([queries.text(queries.index[q]) for q in collection.qrels["train"]])
  out = {}
  for qid, q_tokens in zip(collection.qrels["train"], tokens):
    scores = np.zeros(n)
    for term in q_tokens:  # a repeated query term counts each time, as in Anserini
      if term not in df:
        continue
      idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
      tf = np.array([c[term] for c in counts], np.float64)
      scores += idf * tf / (tf + negatives.K1 * (1 - negatives.B + negatives.B * lengths / avg))
    out[qid] = scores
  return out


def test_pools_are_the_best_bm25_documents(scifact_dir):
  collection = _subset(beir.read_beir(scifact_dir), num_docs=1200, num_queries=120)
  pools = negatives.mine_pools(collection, "train", depth=10)
  reference = _brute_force_bm25(collection)
  corpus = collection.corpus
  for qid, pool in pools.items():
    scores = reference[qid]
    relevant = {corpus.index[d] for d, r in collection.qrels["train"][qid].items() if r > 0}
    rows = [corpus.index[d] for d in pool]
    assert not set(rows) & relevant
    assert all(scores[r] > 0 for r in rows)
    # Best first, and nothing outside the pool scores higher than its last entry.
    assert all(scores[a] >= scores[b] - 1e-4 for a, b in zip(rows, rows[1:]))
    others = np.delete(scores, sorted(set(rows) | relevant))
    if len(rows) == 10:
      assert others.max() <= scores[rows[-1]] + 1e-4
    else:  # fewer than depth documents share a term with the query
      assert (others <= 1e-9).all()


def test_groups_cache_and_determinism(tmp_path, monkeypatch):
  collection = beir.read_beir(FIXTURES / "good")
  cache = tmp_path / "cache"
  groups = negatives.bm25_training_groups(collection, "train", depth=3, cache_dir=cache)
  # One group per relevant pair; q1 has two relevant documents sharing one pool.
  q, c = collection.queries, collection.corpus
  pairs = [(q.ids[groups.query[g]], c.ids[groups.positive[g]]) for g in range(len(groups))]
  assert pairs == [("q1", "d1"), ("q1", "d4"), ("q2", "d2"), ("q3", "d3"), ("q5", "d8")]
  np.testing.assert_array_equal(groups.pool(0), groups.pool(1))
  pool_q1 = [c.ids[r] for r in groups.pool(0)]
  # "Which animals are cats?": d7 has the rarer "animals", d5 "cats"; d1, d4 are relevant.
  assert pool_q1 == ["d7", "d5"]
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].startswith("bm25_negatives-good-train-")
  assert not any("bm25" in p.name for p in (FIXTURES / "good").rglob("*"))

  def refuse(*args, **kwargs):
    raise AssertionError("mined again although cached")

  monkeypatch.setattr(negatives, "mine_pools", refuse)
  again = negatives.bm25_training_groups(collection, "train", depth=3, cache_dir=cache)
  np.testing.assert_array_equal(again.negatives, groups.negatives)
  np.testing.assert_array_equal(again.offsets, groups.offsets)
  monkeypatch.undo()
  # Changed data gets its own cache entry.
  collection.corpus.texts[4] = "Epsilon no longer mentions any animal."
  negatives.bm25_training_groups(collection, "train", depth=3, cache_dir=cache)
  assert len(os.listdir(cache)) == 2
  with pytest.raises(ValueError, match="no qrels for split 'dev'"):
    negatives.bm25_training_groups(collection, "dev")


def test_mining_is_deterministic():
  collection = beir.read_beir(FIXTURES / "good")
  assert negatives.mine_pools(collection, "train") == negatives.mine_pools(collection, "train")
