"""Re-ranking mode (LITE's setting): a first-stage run's top documents re-scored by any scorer.

A scorer is a callable `(query id, [document ids]) -> [scores]`, so LITE, KNRM, a cross-encoder
or MaxSim plug in alike. `token_scorer` adapts a late-interaction function over padded token
vectors — `pair_fn(q [1, n, h], q_mask [1, n], d [1, K, m, h], d_mask [1, K, m], q_salience,
d_salience) -> [1, K]`, the signature of `align_scores_candidates` with its alignment bound —
to that interface, reading documents from an encoded `TokenStore`.
"""

import math
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from aligner_jax.eval.metrics import Run
from aligner_jax.eval.metrics import ranked
from aligner_jax.index.store import TokenStore
from aligner_jax.retrieval.token_retrieval import QueryBatch
from aligner_jax.scoring import Alignment
from aligner_jax.scoring import align_scores_candidates

ScoreFn = Callable[[str, Sequence[str]], np.ndarray]
PairFn = Callable[..., jax.Array]

_LENGTH_BUCKET = 32


def rerank(run: Mapping[str, Mapping[str, float]], score_fn: ScoreFn, *,
           depth: int = 100) -> Run:
  """Each query's top-`depth` documents of `run`, re-scored by `score_fn` (others dropped)."""
  out: Run = {}
  for qid, docs in run.items():
    top = [d for d, _ in ranked(docs)[:depth]]
    if not top:
      out[qid] = {}
      continue
    scores = np.asarray(score_fn(qid, top), np.float64)
    if scores.shape != (len(top),):
      raise ValueError(f"scorer returned shape {scores.shape} for {len(top)} documents of query "
                       f"{qid!r}")
    out[qid] = {d: float(s) for d, s in zip(top, scores)}
  return out


def alignment_pair_fn(alignment: Alignment | str, *, use_salience: bool = True) -> PairFn:
  """`align_scores_candidates` with `alignment` bound, jitted (a `token_scorer` pair_fn)."""
  alignment = Alignment.parse(alignment)

  @jax.jit
  def pair_fn(q, q_mask, d, d_mask, q_salience, d_salience):
    return align_scores_candidates(q, q_mask, d, d_mask, alignment,
                                   q_salience=q_salience if use_salience else None,
                                   d_salience=d_salience if use_salience else None)

  return pair_fn


def token_scorer(queries: QueryBatch, documents: TokenStore, pair_fn: PairFn) -> ScoreFn:
  """A `ScoreFn` scoring with `pair_fn` over the stored token vectors of queries and documents.

  Saliences are passed when both sides have them; otherwise the masks (u = 1) are.
  """
  row_of_query = {q: i for i, q in enumerate(queries.ids)}
  row_of_doc = {d: i for i, d in enumerate(documents.doc_ids)}
  with_sal = queries.salience is not None and documents.salience is not None

  def score(qid: str, doc_ids: Sequence[str]) -> np.ndarray:
    b = row_of_query[qid]
    rows = np.array([row_of_doc[d] for d in doc_ids], np.int64)
    longest = int(documents.lengths[rows].max()) if len(rows) else 1
    length = max(_LENGTH_BUCKET, math.ceil(longest / _LENGTH_BUCKET) * _LENGTH_BUCKET)
    g = documents.gather_padded(rows, length)
    q_sal = queries.salience[b:b + 1] if with_sal else queries.mask[b:b + 1]
    d_sal = g["salience"] if with_sal else g["mask"]
    out = pair_fn(queries.vectors[b:b + 1], queries.mask[b:b + 1], g["vectors"][None],
                  g["mask"][None], np.asarray(q_sal, np.float32),
                  np.asarray(d_sal, np.float32)[None])
    return np.asarray(out)[0]

  return score
