"""Candidate documents from the token search's own results, and their cheap first-stage score.

The token search returns, for each searched query token t, its K′ nearest stored document
tokens as (document [K′], score [K′]). From these alone:

  union     the documents any of a query's tokens retrieved (ALIGNER §2.1, what refinement
            scores when every candidate is refined);
  xtr       XTR's estimate of the sum-of-max score of each of those documents (Lee et al. 2023,
            §3.2): for each query token its best retrieved score in the document, and when the
            document was not among that token's K′ results, the token's K′-th (lowest
            retrieved) score in its place. Ranking by it and refining only the best R
            documents with the full alignment keeps refinement cost independent of the corpus.

With base[b] = Σ_t floor[t] over query b's tokens, the xtr score is
base[b] + Σ_t (best[t, d] − floor[t]) over the tokens that retrieved d, so only retrieved
(token, document) pairs are ever touched: two sorts of the T·K′ results, no per-document or
per-candidate Python work. Document numbers are global (the index's several shards are merged
by its search), so keys (row, document) fit int64 as row · N + document.
"""

import numpy as np


def row_floors(scores: np.ndarray, docs: np.ndarray) -> np.ndarray:
  """[T] float64: each row's lowest retrieved score (its K′-th), 0 for a row that found nothing.

  Args:
    scores: [T, K′] float scores of the retrieved tokens.
    docs: [T, K′] int documents, -1 where the search returned nothing.
  """
  valid = docs >= 0
  low = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf)
  return np.where(valid.any(axis=1), low, 0.0).astype(np.float64)


def _best_per_row_doc(rows: np.ndarray, docs: np.ndarray, scores: np.ndarray,
                      num_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Max score of each distinct (row, document) pair: (rows [P], docs [P], best [P])."""
  key = rows * num_docs + docs
  if not len(key):
    return key, key, scores
  order = np.argsort(key, kind="stable")
  key, scores = key[order], scores[order]
  starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
  return key[starts] // num_docs, key[starts] % num_docs, np.maximum.reduceat(scores, starts)


def xtr_scores(owner: np.ndarray, docs: np.ndarray, scores: np.ndarray, *, num_queries: int,
               num_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """XTR first-stage score of every (query, retrieved document) pair (module docstring).

  Args:
    owner: [T] int query (0 .. num_queries - 1) of each searched token row.
    docs: [T, K′] int global documents retrieved per row, -1 for unfilled results.
    scores: [T, K′] float their scores.
    num_queries: B.
    num_docs: N, above every document number.

  Returns:
    (query [C] int64, doc [C] int64, score [C] float64), one entry per distinct pair, sorted
    by query then document.
  """
  owner = np.asarray(owner, np.int64)
  docs = np.asarray(docs, np.int64)
  scores = np.asarray(scores, np.float64)
  floor = row_floors(scores, docs)
  base = np.bincount(owner, weights=floor, minlength=num_queries)
  r, k = np.nonzero(docs >= 0)
  rows, hit_docs, best = _best_per_row_doc(r, docs[r, k], scores[r, k], num_docs)
  pair = owner[rows] * num_docs + hit_docs
  keys, inverse = np.unique(pair, return_inverse=True)
  total = np.bincount(inverse, weights=best - floor[rows], minlength=len(keys))
  query = keys // num_docs
  return query, keys % num_docs, total + base[query]


def union_pairs(owner: np.ndarray, docs: np.ndarray, *,
                num_docs: int) -> tuple[np.ndarray, np.ndarray]:
  """Every distinct (query, retrieved document): (query [C], doc [C]) sorted by both."""
  owner = np.asarray(owner, np.int64)
  docs = np.asarray(docs, np.int64)
  r, k = np.nonzero(docs >= 0)
  keys = np.unique(owner[r] * num_docs + docs[r, k])
  return keys // num_docs, keys % num_docs


def top_per_query(query: np.ndarray, doc: np.ndarray, score: np.ndarray, *, num_queries: int,
                  keep: int) -> np.ndarray:
  """[C] bool: the `keep` best entries of each query (score descending, then lower document)."""
  if keep < 1:
    raise ValueError(f"keep must be positive, got {keep}")
  order = np.lexsort((doc, -score, query))
  counts = np.bincount(query, minlength=num_queries)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(len(order)) - starts[query[order]]
  chosen = np.zeros(len(order), bool)
  chosen[order[rank < keep]] = True
  return chosen


def split_by_query(query: np.ndarray, values: np.ndarray, num_queries: int) -> list[np.ndarray]:
  """`values` [C] (grouped by ascending `query`) as one array per query 0 .. num_queries - 1."""
  counts = np.bincount(query, minlength=num_queries)
  return np.split(values, np.cumsum(counts)[:-1])
