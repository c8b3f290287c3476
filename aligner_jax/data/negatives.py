"""BM25 hard negatives (with the `bm25s` library) for training on a BEIR-style train split.

For each query judged in the split, the corpus is ranked by BM25 (k1 = 0.9, b = 0.4, the
Anserini settings used for BEIR baselines; `bm25s` word tokeniser with English stop words, no
stemming); documents judged relevant for the query are removed and the best `depth` remaining
ones form the query's negative pool, best first. Ties are broken by corpus order, so mining is
deterministic. Documents with no query term in common (BM25 score 0) are not hard and are left
out; `sources.TrainSource` tops small pools up with random documents.

Every (query, relevant document) pair becomes one training group sharing the query's pool.

The pools can be cached in a directory the caller chooses (never in the data directory): the
file name carries a hash of the corpus, queries, judgements and settings, so changed data is
mined afresh.
"""

import hashlib
import json
import os

import numpy as np

from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import GroupBuilder
from aligner_jax.data.collection import TrainingGroups
from aligner_jax.io import write_json

DEFAULT_DEPTH = 30
K1 = 0.9
B = 0.4
_CACHE_VERSION = 1


def _fingerprint(collection: Collection, split: str, depth: int) -> str:
  import bm25s  # pylint: disable=g-import-not-at-top

  h = hashlib.sha256()
  h.update(json.dumps({"version": _CACHE_VERSION, "bm25s": bm25s.__version__, "k1": K1,
                       "b": B, "depth": depth, "split": split}).encode())
  for table in (collection.corpus, collection.queries):
    for i, id_ in enumerate(table.ids):
      h.update(id_.encode())
      h.update(b"\0")
      h.update(table.text(i).encode())
      h.update(b"\1")
  h.update(json.dumps(collection.qrels[split], sort_keys=True).encode())
  return h.hexdigest()[:20]


def _tokenize(texts: list[str]) -> list[list[str]]:
  import bm25s  # pylint: disable=g-import-not-at-top
  return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def mine_pools(collection: Collection, split: str, *, depth: int = DEFAULT_DEPTH
               ) -> dict[str, list[str]]:
  """Query id -> ids of its `depth` best BM25 documents not judged relevant, best first."""
  import bm25s  # pylint: disable=g-import-not-at-top

  corpus, queries = collection.corpus, collection.queries
  qrels = collection.qrels[split]
  retriever = bm25s.BM25(k1=K1, b=B)
  retriever.index(_tokenize([corpus.text(i) for i in range(len(corpus))]), show_progress=False)
  query_ids = [q for q in queries.ids if q in qrels]
  query_tokens = _tokenize([queries.text(queries.index[q]) for q in query_ids])
  rows = np.arange(len(corpus))
  pools = {}
  for qid, tokens in zip(query_ids, query_tokens):
    relevant = {corpus.index[d] for d, rel in qrels[qid].items() if rel > 0}
    scores = retriever.get_scores(tokens) if tokens else np.zeros(len(corpus), np.float32)
    want = min(len(corpus), depth + len(relevant))
    top = np.argpartition(-scores, want - 1)[:want] if want < len(corpus) else rows
    # Everything scoring at least the cut-off is a candidate, so ties at the boundary are
    # resolved by corpus order and not by argpartition's internal order.
    cutoff = scores[top].min()
    candidates = rows[scores >= cutoff]
    ranked = candidates[np.lexsort((candidates, -scores[candidates]))]
    pool = [int(r) for r in ranked if r not in relevant and scores[r] > 0][:depth]
    pools[qid] = [corpus.ids[r] for r in pool]
  return pools


def bm25_training_groups(collection: Collection, split: str, *, depth: int = DEFAULT_DEPTH,
                         cache_dir: str | os.PathLike | None = None) -> TrainingGroups:
  """Training groups of `split` with BM25 negative pools (cached in cache_dir when given)."""
  if split not in collection.qrels:
    raise ValueError(f"{collection.name}: no qrels for split {split!r}")
  pools = None
  cache_path = None
  if cache_dir is not None:
    key = _fingerprint(collection, split, depth)
    cache_path = os.path.join(os.fspath(cache_dir),
                              f"bm25_negatives-{collection.name}-{split}-{key}.json")
    if os.path.isfile(cache_path):
      with open(cache_path, encoding="utf-8") as f:
        pools = json.load(f)["pools"]
  if pools is None:
    pools = mine_pools(collection, split, depth=depth)
    if cache_path is not None:
      write_json(cache_path, {"split": split, "depth": depth, "pools": pools}, indent=None)
  corpus, queries = collection.corpus, collection.queries
  builder = GroupBuilder(with_teacher_scores=False)
  for qid in queries.ids:
    if qid not in collection.qrels[split]:
      continue
    pool = [corpus.index[d] for d in pools[qid]]
    for did, rel in collection.qrels[split][qid].items():
      if rel > 0:
        builder.add(queries.index[qid], corpus.index[did], pool)
  return builder.build()
