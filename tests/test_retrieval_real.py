"""Retrieval on real data: BM25 on SciFact, and ScaNN against exact search on real
all-MiniLM-L6-v2 token vectors of SciFact documents."""

import numpy as np
import pytest

from aligner_jax.data.beir import read_beir
from aligner_jax.eval.ir_metrics import evaluate
from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import refine
from aligner_jax.retrieval import to_run


def test_bm25_on_scifact_test_is_plausible(scifact_dir):
  collection = read_beir(scifact_dir, splits=["test"])
  corpus = collection.corpus
  bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
  qids = collection.split_queries("test")
  texts = [collection.queries.texts[collection.queries.index[q]] for q in qids]
  run = to_run(qids, corpus.ids, bm25.search(texts, 1000))
  mean, _ = evaluate(collection.qrels["test"], run)
  # BEIR reports 0.665 (Anserini); this implementation measured 0.676 with k1=0.9, b=0.4.
  assert 0.65 <= mean["ndcg@10"] <= 0.70, mean
  assert mean["recall@1000"] >= 0.95


@pytest.fixture(scope="module")
def minilm_scifact():
  """Real MiniLM token vectors (L2-normalised, as the DualEncoder emits them) of 240 SciFact
  documents (128 tokens at most) and of the test queries whose relevant document is among
  them."""
  from conftest import shared_path

  from aligner_jax import models
  from aligner_jax.eval import retrieval_jobs
  from aligner_jax.eval.inputs import encode_split_queries
  from aligner_jax.retrieval.encoding import encode_corpus
  collection = read_beir(shared_path("beir", "scifact"), splits=["test"])
  qrels = collection.qrels["test"]
  wanted = sorted({d for docs in qrels.values() for d in docs})[:120]
  rows = [collection.corpus.index[d] for d in wanted]
  rows += [r for r in range(len(collection.corpus)) if r not in set(rows)][:240 - len(rows)]
  module = models.DualEncoder(encoder_config=models.bert_config("minilm_l6"))
  _, params = retrieval_jobs.load_model(module, checkpoint_path=str(models.minilm_model_dir()))
  enc = retrieval_jobs.model_encoders(module, params, "minilm", batch_size=32)
  corpus = collection.corpus
  store = encode_corpus(enc.documents, enc.vocabulary, [corpus.ids[r] for r in rows],
                        [corpus.text(r) for r in rows], max_length=128,
                        vector_dtype="float16")
  queries = encode_split_queries(enc, collection, "test", query_length=64, log=lambda m: None)
  keep = [i for i, q in enumerate(queries.ids) if set(qrels[q]) & set(wanted)]
  return store, queries.select(keep)


@pytest.mark.slow
def test_scann_recall_on_real_minilm_token_vectors(minilm_scifact):
  store, queries = minilm_scifact
  assert store.dim == 384 and store.num_tokens > 20_000
  exact = build_token_index(store, IndexConfig(backend="exact"))
  ann = build_token_index(store, IndexConfig(backend="scann", expected_k=4000))
  q = queries.vectors[queries.mask][:400]
  for k, want in ((4000, 0.95), (1000, 0.85)):
    ex_rows, _ = exact.shards[0].searcher.search(q, k)
    ann_rows, _ = ann.shards[0].searcher.search(q, k)
    recall = np.mean([len(set(a[a >= 0]) & set(e)) / k for a, e in zip(ann_rows, ex_rows)])
    assert recall >= want, (k, recall)
  # Document level: the refined top 100 agree.
  queries = queries.select(range(min(40, len(queries))))
  c_exact = candidate_documents(exact, queries, num_neighbors=1000)
  c_ann = candidate_documents(ann, queries, num_neighbors=1000)
  r_exact = refine(exact, queries, c_exact, "top_k:1", top_n=100)
  r_ann = refine(ann, queries, c_ann, "top_k:1", top_n=100)
  overlap = np.mean([len(set(a[0]) & set(e[0])) / max(len(e[0]), 1)
                     for a, e in zip(r_ann, r_exact)])
  assert overlap >= 0.95, overlap
