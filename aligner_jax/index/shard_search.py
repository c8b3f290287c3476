"""Searching the shards of a token index in parallel and merging their top K′.

Each shard answers with its own best k (a bounded K′: at most k per shard); the merge keeps
a running top k and folds in one shard's answer at a time with a partial selection
(`np.partition`, O(k) per query), never sorting all shards × k. Ties are broken by the order
in which the results arrive in shard order (shard, then rank within the shard), so the
merged answer is exactly what one stable sort of every shard's results would give, whether the
shards ran one after another or in threads.

Threads suit both backends: ScaNN's search and NumPy's matrix products release the GIL.
Shards are submitted a few at a time (`window`), so at most that many answers wait to be
merged whatever the number of shards.
"""

import concurrent.futures
from typing import Callable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")
Result = tuple[np.ndarray, np.ndarray]  # (docs [Q, k'] int64, scores [Q, k'] float32)


def ordered_map(fn: Callable[[int], T], count: int,
                executor: concurrent.futures.Executor | None, window: int) -> Iterator[T]:
  """fn(0), …, fn(count - 1) in order; in `executor` with at most `window` submitted ahead
  of the one being consumed (in the caller's thread when `executor` is None)."""
  if executor is None:
    yield from (fn(i) for i in range(count))
    return
  pending: list[concurrent.futures.Future] = []
  for i in range(count):
    pending.append(executor.submit(fn, i))
    if len(pending) > window:
      yield pending.pop(0).result()
  for future in pending:
    yield future.result()


def keep_top_k(docs: np.ndarray, scores: np.ndarray, k: int) -> Result:
  """Per row, the k best of [Q, C] results by score, earlier columns first among equal
  scores; the kept columns stay in their order."""
  q, c = scores.shape
  if c <= k:
    return docs, scores
  kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # [Q, 1] the k-th best score
  above = scores > kth
  ties = scores == kth
  room = k - above.sum(1, keepdims=True)
  keep = above | (ties & (np.cumsum(ties, axis=1) <= room))
  cols = np.nonzero(keep)[1].reshape(q, k)
  return np.take_along_axis(docs, cols, 1), np.take_along_axis(scores, cols, 1)


def merge_results(results: Iterator[Result], k: int) -> Result:
  """The best k of the shards' `results` (in shard order), best first: a stable order by
  score of everything the shards returned, cut to k."""
  docs = scores = None
  for d, s in results:
    if docs is None:
      docs, scores = d, s
    else:
      docs, scores = keep_top_k(np.concatenate([docs, d], 1), np.concatenate([scores, s], 1),
                                k)
  docs, scores = keep_top_k(docs, scores, k)
  order = np.argsort(-scores, axis=1, kind="stable")
  return np.take_along_axis(docs, order, 1), np.take_along_axis(scores, order, 1)
