"""Random-access example sources over a `Collection`: training groups, corpus, queries.

A source has a `kind` ("train", "corpus" or "queries"), a length, and `example(i, ...)` giving
the raw example i (texts and ids; `features.Featurizer` tokenises them). Random access is what
makes the input pipeline exactly resumable and host-sharded (see `pipeline.py`).

Raw examples:
  train:   {"query_id", "query", "doc_ids": [1 + N], "docs": [1 + N] texts,
            "teacher_scores": [1 + N] (only with teacher scores)}
  corpus:  {"doc_id", "doc"}
  queries: {"query_id", "query"}

Negatives of a training example are drawn from its group's pool with the generator passed in
(the pipeline seeds it with (seed, epoch, example), so each epoch sees other negatives and a
rerun sees the same ones); without a generator the top N of the pool are taken. A pool smaller
than N is topped up with random corpus documents that are not judged relevant for the query --
unless the data has teacher scores, where every negative needs a score, so N may not exceed the
smallest pool.
"""

from typing import Any

import numpy as np

from aligner_jax.data import features as features_lib
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import TrainingGroups


class TrainSource:
  """Training examples: one per group (query, positive, negatives drawn from the pool)."""
  kind = "train"

  def __init__(self, collection: Collection, groups: TrainingGroups):
    if len(groups) == 0:
      raise ValueError(f"{collection.name}: no training examples")
    self.collection = collection
    self.groups = groups
    # Positives per query: never used as a random negative for that query.
    self._positives: dict[int, set[int]] = {}
    for q, p in zip(groups.query.tolist(), groups.positive.tolist()):
      self._positives.setdefault(q, set()).add(p)
    sizes = np.diff(groups.offsets)
    self.min_pool = int(sizes.min())

  @property
  def has_teacher_scores(self) -> bool:
    return self.groups.has_teacher_scores

  def __len__(self) -> int:
    return len(self.groups)

  def check_negatives(self, num_negatives: int) -> None:
    """Raises when N negatives cannot be drawn (teacher scores need N <= every pool)."""
    if self.has_teacher_scores and num_negatives > self.min_pool:
      raise ValueError(
          f"{self.collection.name}: {num_negatives} negatives per query requested, but the "
          f"smallest negative pool with teacher scores has {self.min_pool}; lower the number "
          "of negatives (TASK_FEATURE_LENGTHS doc_tokens=(1 + N, length))")
    if len(self.collection.corpus) < 2 and num_negatives > 0:
      raise ValueError(f"{self.collection.name}: the corpus is too small for negatives")

  def example(self, i: int, num_negatives: int,
              rng: np.random.Generator | None = None) -> dict[str, Any]:
    g = self.groups
    query, positive = int(g.query[i]), int(g.positive[i])
    pool = g.pool(i)
    if len(pool) >= num_negatives:
      if rng is None or len(pool) == num_negatives:
        chosen = np.arange(num_negatives)
      else:
        chosen = np.sort(rng.choice(len(pool), size=num_negatives, replace=False))
      negatives = pool[chosen].tolist()
    else:
      if self.has_teacher_scores:
        self.check_negatives(num_negatives)
      chosen = np.arange(len(pool))
      negatives = pool.tolist() + self._random_negatives(
          query, set(pool.tolist()), num_negatives - len(pool), rng or np.random.default_rng(i))
    corpus, queries = self.collection.corpus, self.collection.queries
    rows = [positive] + negatives
    out = {
        "query_id": queries.ids[query],
        "query": queries.text(query),
        "doc_ids": [corpus.ids[r] for r in rows],
        "docs": [corpus.text(r) for r in rows],
    }
    if self.has_teacher_scores:
      out[features_lib.TEACHER_SCORES] = [float(g.teacher_positive[i])] + [
          float(s) for s in g.pool_scores(i)[chosen]]
    return out

  def _random_negatives(self, query: int, taken: set[int], count: int,
                        rng: np.random.Generator) -> list[int]:
    excluded = self._positives.get(query, set()) | taken
    size = len(self.collection.corpus)
    if size - len(excluded) <= 0:
      raise ValueError(f"{self.collection.name}: no document left to use as a negative")
    # Distinct while the corpus allows it; a tiny corpus repeats documents rather than fail.
    distinct = size - len(excluded) >= count
    result: list[int] = []
    while len(result) < count:
      row = int(rng.integers(size))
      if row not in excluded:
        result.append(row)
        if distinct:
          excluded.add(row)
    return result


class CorpusSource:
  """Every document of the corpus, in file order."""
  kind = "corpus"

  def __init__(self, collection: Collection):
    self.collection = collection

  def __len__(self) -> int:
    return len(self.collection.corpus)

  def example(self, i: int, num_negatives: int = 0, rng=None) -> dict[str, Any]:
    del num_negatives, rng
    corpus = self.collection.corpus
    return {"doc_id": corpus.ids[i], "doc": corpus.text(i)}


class QuerySource:
  """The queries judged in a split (all queries when `split` is None), in file order."""
  kind = "queries"

  def __init__(self, collection: Collection, split: str | None):
    self.collection = collection
    queries = collection.queries
    if split is None:
      self.rows = list(range(len(queries)))
    else:
      if split not in collection.qrels:
        raise ValueError(f"{collection.name}: no qrels for split {split!r} "
                         f"(have {sorted(collection.qrels)})")
      judged = collection.qrels[split]
      self.rows = [r for r, q in enumerate(queries.ids) if q in judged]

  def __len__(self) -> int:
    return len(self.rows)

  def example(self, i: int, num_negatives: int = 0, rng=None) -> dict[str, Any]:
    del num_negatives, rng
    row = self.rows[i]
    queries = self.collection.queries
    return {"query_id": queries.ids[row], "query": queries.text(row)}
