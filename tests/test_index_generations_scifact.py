"""Index generations on SciFact with all-MiniLM-L6-v2 token vectors: built from half the
corpus, the other half added, 10 % of the documents deleted, against fresh builds.

Reads the encode job's SciFact cache (`corpus-*-of-*/` and `queries-test/`, 256 tokens per
document and query): `$ALIGNER_MINILM_ENCODED_DIR`, else bench/bench_end_to_end.py's default.
Skips when it is absent (`python -m bench.bench_minilm_reference` writes one).
"""

import os
import pathlib

import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import add_documents
from aligner_jax.index import build_token_index
from aligner_jax.index import delete_documents
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index import verify_index
from aligner_jax.index.token_index import slice_documents
from aligner_jax.retrieval import retrieve

LENGTH = 256
SETTINGS = {"num_neighbors": 1000, "num_refine": 200, "top_n": 10}
CONFIGS = {"exact": IndexConfig(backend="exact"), "scann": IndexConfig(backend="scann")}


def _encoded_dir() -> pathlib.Path | None:
  from bench.bench_end_to_end import DEFAULT_ENCODED  # pylint: disable=g-import-not-at-top
  candidates = [os.environ.get("ALIGNER_MINILM_ENCODED_DIR"), DEFAULT_ENCODED]
  for candidate in filter(None, candidates):
    path = pathlib.Path(candidate)
    if (path / "queries-test" / "manifest.json").is_file() and \
        any(path.glob("corpus-*-of-*/manifest.json")):
      return path
  return None


@pytest.fixture(scope="module")
def scifact_minilm():
  from conftest import shared_path  # pylint: disable=g-import-not-at-top
  scifact_dir = shared_path("beir", "scifact")
  encoded = _encoded_dir()
  if encoded is None:
    pytest.skip("no SciFact MiniLM encode cache ($ALIGNER_MINILM_ENCODED_DIR)")
  from aligner_jax.data.beir import read_beir  # pylint: disable=g-import-not-at-top
  from aligner_jax.eval import inputs  # pylint: disable=g-import-not-at-top
  collection = read_beir(scifact_dir, splits=["test"])
  store = inputs.load_encoded_corpus(encoded, collection, doc_length=LENGTH, log=print)
  qrels = collection.qrels["test"]
  queries = inputs.load_encoded_queries(encoded / "queries-test", sorted(qrels),
                                        query_length=LENGTH)
  return store, queries, qrels


def _ndcg(qrels, run, live: set[str]) -> tuple[float, int]:
  """nDCG@10 over the judged queries with a relevant document left, judged on those."""
  from aligner_jax.eval.ir_metrics import evaluate  # pylint: disable=g-import-not-at-top
  kept = {q: {d: r for d, r in docs.items() if d in live} for q, docs in qrels.items()}
  kept = {q: docs for q, docs in kept.items() if any(r > 0 for r in docs.values())}
  mean, _ = evaluate(kept, {q: run[q] for q in kept})
  return mean["ndcg@10"], len(kept)


def _run(index, queries):
  run, _ = retrieve(index, queries, "top_k:1", **SETTINGS)
  return run


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("backend", ["exact", "scann"])
def test_half_built_half_added_tenth_deleted_equals_a_fresh_build(scifact_minilm, tmp_path,
                                                                   backend):
  store, queries, qrels = scifact_minilm
  config = CONFIGS[backend]
  half = store.num_docs // 2
  directory = tmp_path / "index"
  save_index(build_token_index(slice_documents(store, 0, half), config), directory)
  add_documents(directory, slice_documents(store, half, store.num_docs))
  overlap = None
  if backend == "scann":  # (the exact backend's equality is tested on small corpora)
    added = _run(load_index(directory), queries)
    union = _run(build_token_index(store, config), queries)
    overlap = np.mean([len(set(added[q]) & set(union[q])) / len(union[q]) for q in union])
    print(f"scann: top-10 overlap of build(A) + add(B) with build(A ∪ B): {overlap:.4f}")
  rng = np.random.default_rng(0)
  doomed = sorted(rng.choice(store.num_docs, store.num_docs // 10, replace=False))
  delete_documents(directory, [store.doc_ids[i] for i in doomed])
  index = load_index(directory)
  assert all(p is None for p in verify_index(directory).values())
  survivors = np.setdiff1d(np.arange(store.num_docs), doomed)
  live = {store.doc_ids[i] for i in survivors}
  changed = _run(index, queries)
  fresh = _run(build_token_index(store.select_documents(survivors), config), queries)
  assert all(set(docs) <= live and len(docs) == 10 for docs in changed.values())
  ndcg_changed, judged = _ndcg(qrels, changed, live)
  ndcg_fresh, _ = _ndcg(qrels, fresh, live)
  print(f"{backend}: after deleting {len(doomed)} of {store.num_docs} documents, nDCG@10 over "
        f"{judged} judged queries {ndcg_changed:.4f} (fresh build {ndcg_fresh:.4f})")
  if backend == "exact":
    assert changed == fresh and ndcg_changed == ndcg_fresh
  else:
    assert overlap >= 0.95
    assert abs(ndcg_changed - ndcg_fresh) <= 0.005
