"""Token search over the allowed documents of one shard (live, and admitted by a filter).

A shard's MIPS backend knows nothing of deleted documents or filters; this module returns,
for each query token, its k nearest searched tokens among the documents `allowed` [N_s]
admits, as if the shard had been built from those documents alone:

  every document allowed    the shard's own search, unchanged (no cost when nothing is
                            deleted or filtered);
  exact backend, or few     a brute-force scan of the allowed documents' searched rows only
  allowed tokens            (`DIRECT_FRACTION` of a ScaNN shard or less): exact, and cheaper
                            than searching everything and throwing most of it away;
  otherwise (ScaNN)         the shard is searched for k·(searched / allowed tokens)·1.5 + 16
                            neighbours, the disallowed ones are dropped and the first k kept;
                            query tokens left with fewer than k are searched again 4 times as
                            deep, until the whole shard is covered, and those ScaNN still
                            could not fill (too few points in its searched leaves) are scanned
                            directly.

So a query token gets min(k, allowed searched tokens) results whatever the share of deleted
or filtered-out documents: heavy deletion and selective filters still return full lists.
With the exact backend the results equal those of an index built over the allowed documents
(same scores, ties in the same row order).
"""

import math
from typing import Any

import numpy as np

from aligner_jax.index.backends import ExactSearcher
from aligner_jax.index.token_store import document_rows

# A ScaNN shard whose allowed documents hold at most this fraction of its searched tokens is
# scanned directly (deepening ScaNN would cost more than the scan).
DIRECT_FRACTION = 0.05
_DEEPEN = 4
_MARGIN = 1.5
_SLACK = 16
Result = tuple[np.ndarray, np.ndarray]  # (local docs [Q, k'] int64, scores [Q, k'] float32)


def searched_lengths(searched: Any) -> np.ndarray:
  """[N] searched tokens of each document of a shard (`SearchedRows`)."""
  return np.diff(searched.doc_offsets)


def allowed_rows(searched: Any, allowed: np.ndarray) -> np.ndarray:
  """Sorted searched rows of the `allowed` [N] documents."""
  return document_rows(searched.doc_offsets, np.flatnonzero(allowed))


def _empty(num_queries: int) -> Result:
  return np.zeros((num_queries, 0), np.int64), np.zeros((num_queries, 0), np.float32)


def scan(shard: Any, queries: np.ndarray, k: int, allowed: np.ndarray) -> Result:
  """Brute force over the allowed documents' searched rows: (local docs, scores) [Q, k']."""
  rows = allowed_rows(shard.searched, allowed)
  if not len(rows):
    return _empty(len(queries))
  vectors_fn = shard.searcher.vectors_fn
  found, scores = ExactSearcher(len(rows), lambda r: vectors_fn(rows[r])).search(queries, k)
  return shard.searched.documents(rows[found]).astype(np.int64), scores


def _first_allowed(docs: np.ndarray, scores: np.ndarray, allowed: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per row the first k results whose document is allowed, in their order: (docs [Q, k],
  scores [Q, k], found [Q]); unfilled places are -1 / -inf."""
  ok = (docs >= 0) & allowed[np.maximum(docs, 0)]
  order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
  taken = np.take_along_axis(ok, order, 1)
  out_docs = np.where(taken, np.take_along_axis(docs, order, 1), -1)
  out_scores = np.where(taken, np.take_along_axis(scores, order, 1), -np.inf)
  if out_docs.shape[1] < k:
    pad = k - out_docs.shape[1]
    out_docs = np.pad(out_docs, ((0, 0), (0, pad)), constant_values=-1)
    out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
  return out_docs.astype(np.int64), out_scores.astype(np.float32), ok.sum(1)


def _deepened(shard: Any, queries: np.ndarray, k: int, allowed: np.ndarray, allowed_tokens: int,
              threaded: bool, search_kwargs: dict[str, Any]) -> Result:
  """ScaNN searched deeper and deeper until each query token has k allowed results."""
  size = shard.searched.size
  docs = np.full((len(queries), k), -1, np.int64)
  scores = np.full((len(queries), k), -np.inf, np.float32)
  todo = np.arange(len(queries))
  depth = min(size, int(math.ceil(k * size / allowed_tokens * _MARGIN)) + _SLACK)
  while len(todo):
    d, s = shard.search(queries[todo], depth, threaded=threaded, **search_kwargs)
    d, s, found = _first_allowed(d, s, allowed, k)
    done = (found >= k) | (depth >= size)
    docs[todo[done]], scores[todo[done]] = d[done], s[done]
    todo = todo[~done]
    depth = min(size, depth * _DEEPEN)
  short = np.flatnonzero((docs < 0).any(axis=1))
  if len(short):  # ScaNN's searched leaves held too few allowed points
    docs[short], scores[short] = scan(shard, queries[short], k, allowed)
  return docs, scores


def search(shard: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None, *,
           threaded: bool = False, **search_kwargs) -> Result:
  """Local document and score of each query token's k nearest searched tokens of allowed
  documents (module docstring).

  Args:
    shard: a `token_index.IndexShard`.
    queries: [Q, h] float32 query token vectors.
    k: neighbours per query token (at most the allowed documents' searched tokens come back).
    allowed: [N_s] bool documents that may be returned, or None for all of them.
    threaded: other shards are searched at the same time (see `IndexShard.search`).
    **search_kwargs: the backend's search options.

  Returns:
    (docs [Q, k'] int64 local documents, -1 where unfilled; scores [Q, k'] float32), best first.
  """
  if allowed is None:
    return shard.search(queries, k, threaded=threaded, **search_kwargs)
  allowed_tokens = int(searched_lengths(shard.searched)[allowed].sum())
  k = min(int(k), allowed_tokens)
  if k <= 0:
    return _empty(len(queries))
  size = shard.searched.size
  if allowed_tokens == size:
    return shard.search(queries, k, threaded=threaded, **search_kwargs)
  if shard.searcher.kind == "exact" or allowed_tokens <= DIRECT_FRACTION * size:
    return scan(shard, queries, k, allowed)
  return _deepened(shard, queries, k, allowed, allowed_tokens, threaded, search_kwargs)
