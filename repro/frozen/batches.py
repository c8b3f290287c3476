"""Training and evaluation batches of cached token vectors: (query, positive, negatives).

An `Examples` holds, per judged query of a split, its row in the cached `QueryBatch`, its
relevant documents and its BM25 negative pool (rows of the corpus `TokenStore`, best first;
`aligner_jax.data.negatives`). Batches are dicts of NumPy arrays:
  query [B, n, H] float32, query_mask [B, n] bool
  docs [B, K, m, H] float32, doc_mask [B, K, m] bool   K = 1 + num_negatives, slot 0 a positive
  cand_mask [B, K] bool                                  real candidates (False = padding)
  labels [B, K] float32                                  1 where the candidate is relevant
  in_batch_labels [B, B * K] float32                     relevance of every batch document
                                                         (flattened [B, K] order) to each query
  teacher [B, K] float32                                 teacher scores (distillation only)
Sampling is deterministic given the seed: each epoch visits the queries in a fresh order, and
each visit draws one positive and `num_negatives` negatives from the top of the pool.
"""

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from aligner_jax.index.token_store import TokenStore
from aligner_jax.retrieval import QueryBatch


@dataclasses.dataclass
class Examples:
  """Per judged query: its `QueryBatch` row, relevant corpus rows and BM25 pool rows."""
  query_ids: list[str]
  query_rows: np.ndarray  # [Q] int64
  positives: list[np.ndarray]  # Q arrays of corpus rows
  pools: list[np.ndarray]  # Q arrays of corpus rows, best first

  def __len__(self) -> int:
    return len(self.query_ids)

  def select(self, rows: Sequence[int]) -> "Examples":
    rows = list(rows)
    return Examples([self.query_ids[i] for i in rows], self.query_rows[rows],
                    [self.positives[i] for i in rows], [self.pools[i] for i in rows])


def build_examples(collection, split: str, queries: QueryBatch, corpus: TokenStore, *,
                   depth: int = 30, cache_dir: str | None = None) -> Examples:
  """The judged queries of `split` with BM25 pools of `depth` documents (mined or cached)."""
  from aligner_jax.data.negatives import bm25_training_groups  # pylint: disable=g-import-not-at-top
  groups = bm25_training_groups(collection, split, depth=depth, cache_dir=cache_dir)
  doc_row = {d: i for i, d in enumerate(corpus.doc_ids)}
  query_row = {q: i for i, q in enumerate(queries.ids)}
  by_query: dict[str, tuple[list[int], np.ndarray]] = {}
  for g in range(len(groups)):
    qid = collection.queries.ids[int(groups.query[g])]
    if qid not in query_row:
      raise ValueError(f"query {qid!r} of split {split!r} is not among the cached queries "
                       "(encoded from another split?)")
    pos = doc_row[collection.corpus.ids[int(groups.positive[g])]]
    pool = np.array([doc_row[collection.corpus.ids[int(r)]] for r in groups.pool(g)], np.int64)
    entry = by_query.setdefault(qid, ([], pool))
    entry[0].append(pos)
  ids = sorted(by_query, key=lambda q: query_row[q])
  return Examples(ids, np.array([query_row[q] for q in ids], np.int64),
                  [np.array(sorted(by_query[q][0]), np.int64) for q in ids],
                  [by_query[q][1] for q in ids])


def split_dev(examples: Examples, *, dev_fraction: float, seed: int) -> tuple[Examples, Examples]:
  """(train, dev) by query: a seeded random `dev_fraction` of the queries is held out."""
  if not 0.0 < dev_fraction < 1.0:
    raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
  order = np.random.default_rng(seed).permutation(len(examples))
  n_dev = max(1, int(round(dev_fraction * len(examples))))
  return examples.select(sorted(order[n_dev:])), examples.select(sorted(order[:n_dev]))


def gather(queries: QueryBatch, corpus: TokenStore, query_rows: np.ndarray,
           doc_rows: np.ndarray, relevant: Sequence[set[int]], *,
           doc_length: int) -> dict[str, np.ndarray]:
  """Padded arrays of queries `query_rows [B]` and their candidates `doc_rows [B, K]` (-1 =
  padding); `relevant[b]` is query b's set of relevant corpus rows."""
  b, k = doc_rows.shape
  g = corpus.gather_padded(doc_rows.reshape(-1), doc_length)
  flat = doc_rows.reshape(-1)
  in_batch = np.array([[float(d in rel) for d in flat] for rel in relevant], np.float32)
  return {
      "query": queries.vectors[query_rows], "query_mask": queries.mask[query_rows],
      "docs": g["vectors"].reshape(b, k, doc_length, -1),
      "doc_mask": g["mask"].reshape(b, k, doc_length),
      "cand_mask": doc_rows >= 0,
      "labels": np.stack([in_batch[i, i * k:(i + 1) * k] for i in range(b)]),
      "in_batch_labels": in_batch * (flat >= 0)[None, :],
  }


def sample_batches(examples: Examples, queries: QueryBatch, corpus: TokenStore, *,
                   batch_size: int, num_negatives: int, negative_depth: int, doc_length: int,
                   seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches (see the module docstring); a short last batch is dropped.

  Negatives are drawn without replacement from the first `negative_depth` pool entries; a pool
  with fewer entries is topped up with random corpus documents that are not relevant.
  """
  if len(examples) < batch_size:
    raise ValueError(f"{len(examples)} training queries cannot fill a batch of {batch_size}")
  rng = np.random.default_rng(seed)
  relevant = [set(int(d) for d in p) for p in examples.positives]
  while True:
    order = rng.permutation(len(examples))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      rows = order[start:start + batch_size]
      docs = np.empty((batch_size, 1 + num_negatives), np.int64)
      for i, r in enumerate(rows):
        docs[i, 0] = rng.choice(examples.positives[r])
        pool = examples.pools[r][:negative_depth]
        pick = list(rng.choice(pool, size=min(num_negatives, len(pool)), replace=False))
        while len(pick) < num_negatives:
          extra = int(rng.integers(corpus.num_docs))
          if extra not in relevant[r] and extra not in pick:
            pick.append(extra)
        docs[i, 1:] = pick
      yield gather(queries, corpus, examples.query_rows[rows], docs,
                   [relevant[r] for r in rows], doc_length=doc_length)


def candidate_rows(examples: Examples, *, num_candidates: int) -> np.ndarray:
  """[Q, num_candidates] corpus rows per query: its relevant documents, then the best pool
  entries (-1 pads a short list). The fixed candidate lists of distillation (Menon et al. §5
  keep each query's top-20 teacher documents)."""
  out = np.full((len(examples), num_candidates), -1, np.int64)
  for i, (pos, pool) in enumerate(zip(examples.positives, examples.pools)):
    rows = list(pos[:num_candidates]) + list(pool[:max(0, num_candidates - len(pos))])
    out[i, :len(rows)] = rows
  return out


def fixed_batches(examples: Examples, queries: QueryBatch, corpus: TokenStore,
                  candidates: np.ndarray, *, batch_size: int, doc_length: int,
                  teacher: np.ndarray | None = None, shuffle_seed: int | None = None,
                  drop_last: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """One pass over fixed candidate lists `candidates [Q, K]` (with `teacher [Q, K]` scores):
  shuffled by `shuffle_seed` (None: in order)."""
  relevant = [set(int(d) for d in p) for p in examples.positives]
  order = (np.arange(len(examples)) if shuffle_seed is None
           else np.random.default_rng(shuffle_seed).permutation(len(examples)))
  stop = len(order) - batch_size + 1 if drop_last else len(order)
  for start in range(0, max(stop, 0), batch_size):
    rows = order[start:start + batch_size]
    batch = gather(queries, corpus, examples.query_rows[rows], candidates[rows],
                   [relevant[r] for r in rows], doc_length=doc_length)
    if teacher is not None:
      batch["teacher"] = teacher[rows].astype(np.float32)
    yield batch
