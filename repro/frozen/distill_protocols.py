"""Which (query, document) pairs each distillation loss of R5 trains on.

Two candidate protocols (`PROTOCOLS`):
  shared  every loss sees the same fixed list per training query: its relevant documents,
          then its best BM25 negatives, `num_candidates` in all (`batches.candidate_rows`)
  paper   Menon et al.'s: the list losses (M3SE, softmax-CE distillation: `LIST_OBJECTIVES`)
          train on each query's top `num_candidates` documents *by the teacher*, taken from
          its relevant documents and BM25's top `pool_depth`; the pointwise and pairwise
          losses (one-hot CE, MSE, margin-MSE, RankDistil-B) on triplets (query, a relevant
          document, a BM25 negative drawn afresh from the pool's first `negative_depth`) with
          the teacher's scores of both
Teacher scores are standardised once (mean 0, std 1 over the scored training candidates) so
that every loss sees one scale. Batches are the dicts of `batches` with "teacher" [B, K].
"""

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from aligner_jax.index.token_store import TokenStore
from aligner_jax.retrieval import QueryBatch
from repro.frozen import batches as batches_lib

PROTOCOLS = ("shared", "paper")
LIST_OBJECTIVES = ("distill:m3se", "distill:softmax_ce_distill")

ScoreFn = Callable[[np.ndarray], np.ndarray]  # candidate rows [Q, K] -> teacher scores [Q, K]


@dataclasses.dataclass
class TeacherPool:
  """Per training query, the documents the teacher scored and its standardised scores.

  Attributes:
    rows: [Q, P] corpus rows, relevant ones first (-1 pads).
    scores: [Q, P] standardised teacher scores (0 on padding).
    num_relevant: [Q] how many leading entries of `rows` are relevant.
    mean, std: the affine map applied to the raw teacher scores.
  """
  rows: np.ndarray
  scores: np.ndarray
  num_relevant: np.ndarray
  mean: float
  std: float


def pool_rows(examples: batches_lib.Examples, bm25_rows: Sequence[np.ndarray], *,
              depth: int) -> tuple[np.ndarray, np.ndarray]:
  """([Q, P] rows: relevant documents, then BM25's top `depth` without them; [Q] relevant
  counts). `bm25_rows[i]` are query i's BM25 results as corpus rows, best first."""
  lists, counts = [], []
  for pos, ranked in zip(examples.positives, bm25_rows):
    rel = [int(d) for d in pos]
    lists.append(rel + [int(d) for d in ranked[:depth] if int(d) not in rel])
    counts.append(len(rel))
  out = np.full((len(lists), max(map(len, lists))), -1, np.int64)
  for i, row in enumerate(lists):
    out[i, :len(row)] = row
  return out, np.array(counts, np.int64)


def standardise(scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float, float]:
  """(scores with mean 0 and std 1 over `valid`, 0 elsewhere; the mean; the std)."""
  mu, sd = float(scores[valid].mean()), float(scores[valid].std())
  return np.where(valid, (scores - mu) / max(sd, 1e-6), 0.0).astype(np.float32), mu, sd


def score_pool(rows: np.ndarray, num_relevant: np.ndarray, score_fn: ScoreFn) -> TeacherPool:
  raw = score_fn(rows)
  scores, mu, sd = standardise(raw, rows >= 0)
  return TeacherPool(rows, scores, num_relevant, mu, sd)


def teacher_top(pool: TeacherPool, k: int) -> tuple[np.ndarray, np.ndarray]:
  """([Q, k] rows, [Q, k] scores): each query's k best pool documents by the teacher, best
  first (-1 / 0 pad a shorter pool)."""
  masked = np.where(pool.rows >= 0, pool.scores, -np.inf)
  order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
  rows = np.take_along_axis(pool.rows, order, axis=1)
  scores = np.take_along_axis(pool.scores, order, axis=1)
  return rows, np.where(rows >= 0, scores, 0.0).astype(np.float32)


def triplet_batches(examples: batches_lib.Examples, queries: QueryBatch, corpus: TokenStore,
                    pool: TeacherPool, *, batch_size: int, negative_depth: int,
                    doc_length: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of triplets: each query once per epoch (fresh order), with one of its
  relevant documents and one of the first `negative_depth` non-relevant pool documents, both
  with their teacher scores. docs [B, 2, ...], slot 0 the relevant one."""
  rng = np.random.default_rng(seed)
  relevant = [set(int(d) for d in p) for p in examples.positives]
  while True:
    order = rng.permutation(len(examples))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      rows = order[start:start + batch_size]
      cols = np.array([_triplet_columns(pool, r, negative_depth, rng) for r in rows])
      docs = np.take_along_axis(pool.rows[rows], cols, axis=1)
      batch = batches_lib.gather(queries, corpus, examples.query_rows[rows], docs,
                                 [relevant[r] for r in rows], doc_length=doc_length)
      batch["teacher"] = np.take_along_axis(pool.scores[rows], cols, axis=1)
      yield batch


def _triplet_columns(pool: TeacherPool, row: int, negative_depth: int,
                     rng: np.random.Generator) -> tuple[int, int]:
  """Pool columns of one (relevant, negative) pair of query `row`."""
  n_rel = int(pool.num_relevant[row])
  n_valid = int((pool.rows[row] >= 0).sum())
  if n_rel < 1 or n_valid <= n_rel:
    raise ValueError(f"training query row {row}: a triplet needs a relevant document and a "
                     f"negative, the pool has {n_rel} relevant of {n_valid}")
  neg = n_rel + int(rng.integers(min(negative_depth, n_valid - n_rel)))
  return int(rng.integers(n_rel)), neg
