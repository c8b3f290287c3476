"""Re-ranking mode (LITE's setting): a first-stage run's top documents re-scored by any scorer.

A scorer is a callable `(query id, [document ids]) -> [scores]`, so LITE, KNRM, a cross-encoder
or MaxSim plug in alike. `token_scorer` adapts a late-interaction function over padded token
vectors — `pair_fn(q [1, n, h], q_mask [1, n], d [1, K, m, h], d_mask [1, K, m], q_salience,
d_salience) -> [1, K]` (saliences [1, n] / [1, K, m], or None), the signature of
`align_scores_candidates` with its alignment bound — to that interface, reading documents from
an encoded `TokenStore`. `d` arrives in the store's dtype when that is float16 (converting the
batch first, in NumPy or in XLA, cost more than the scoring): `align_scores_candidates` takes it
as it is and converts chunk by chunk; a pair_fn of another kind converts it itself.
`alignment_pair_fn` binds an alignment; `lite_pair_fn` uses a `DualEncoder`'s own LITE / KNRM
head, whose fixed matrix shape needs `query_length` / `doc_length` padding in `token_scorer`.
"""

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import aligned_zeros
from aligner_jax.retrieval.runs import Run
from aligner_jax.retrieval.runs import ranked
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
    # float16 documents go in as they are: the fast path converts each ~1 MiB chunk next to
    # its GEMM, 3x faster on the CPU than converting the whole batch first.
    return align_scores_candidates(q, q_mask, d, d_mask, alignment,
                                   q_salience=q_salience if use_salience else None,
                                   d_salience=d_salience if use_salience else None)

  return pair_fn


def lite_pair_fn(module: Any, params: Any) -> PairFn:
  """The LITE / KNRM head (`DualEncoder.lite_scorer`) of a model as a `token_scorer` pair_fn."""
  from aligner_jax.models import Encoded  # pylint: disable=g-import-not-at-top

  @jax.jit
  def pair_fn(q, q_mask, d, d_mask, q_salience, d_salience):
    del q_salience, d_salience  # LITE reads the similarity matrix only
    d = d.astype(jnp.float32)  # token_scorer passes float16 stores as they are
    qe = Encoded(vectors=q, mask=q_mask, salience=None, pooled=q[:, 0])
    de = Encoded(vectors=d, mask=d_mask, salience=None, pooled=d[:, :, 0])
    return module.apply({"params": params}, qe, de, method="lite_scores")

  return pair_fn


def token_scorer(queries: QueryBatch, documents: TokenStore, pair_fn: PairFn, *,
                 query_length: int | None = None, doc_length: int | None = None) -> ScoreFn:
  """A `ScoreFn` scoring with `pair_fn` over the stored token vectors of queries and documents.

  Saliences are passed when both sides have them; otherwise None (u = 1). Documents
  are padded to a multiple of 32 tokens, or to exactly `doc_length` (longer ones truncated),
  and queries to exactly `query_length` when given (fixed-shape scorers such as LITE).
  """
  row_of_query = {q: i for i, q in enumerate(queries.ids)}
  row_of_doc = {d: i for i, d in enumerate(documents.doc_ids)}
  with_sal = queries.salience is not None and documents.salience is not None

  def fit(x: np.ndarray, length: int | None) -> np.ndarray:
    if length is None:
      return x
    out = aligned_zeros(x.shape[:1] + (length,) + x.shape[2:], x.dtype)
    n = min(length, x.shape[1])
    out[:, :n] = x[:, :n]
    return out

  def score(qid: str, doc_ids: Sequence[str]) -> np.ndarray:
    b = row_of_query[qid]
    rows = np.array([row_of_doc[d] for d in doc_ids], np.int64)
    longest = int(documents.lengths[rows].max()) if len(rows) else 1
    length = max(_LENGTH_BUCKET, math.ceil(longest / _LENGTH_BUCKET) * _LENGTH_BUCKET)
    # Stored dtype, 64-byte aligned: the jitted pair_fn reads the batch without a host copy.
    g = documents.gather_padded(rows, length, native_dtype=True)
    if doc_length is not None:
      g = {k: fit(v, doc_length) for k, v in g.items()}
    # Without saliences None is passed, so plain alignments take the fast unweighted path.
    q_sal = d_sal = None
    if with_sal:
      q_sal = fit(np.asarray(queries.salience[b:b + 1], np.float32), query_length)
      d_sal = np.asarray(g["salience"], np.float32)[None]
    out = pair_fn(fit(queries.vectors[b:b + 1], query_length),
                  fit(queries.mask[b:b + 1], query_length), g["vectors"][None],
                  g["mask"][None], q_sal, d_sal)
    return np.asarray(out)[0]

  return score
