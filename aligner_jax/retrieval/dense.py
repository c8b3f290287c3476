"""Dense (single-vector) retrieval over pooled document vectors, for dual encoders.

`S[b, c] = q_b · d_c` (the pooled vectors are compared by inner product; encoders that want
cosine similarity L2-normalise their pooled output). Search is exact by default, or ScaNN for
large corpora; both return each query's `top_n` documents, best first (ties: lower document
number first for the exact search).
"""

import numpy as np

from aligner_jax.index.backends import ExactSearcher
from aligner_jax.index.backends import ScannSearcher
from aligner_jax.index.backends import scann_settings


def dense_search(doc_vectors: np.ndarray, query_vectors: np.ndarray, top_n: int = 1000, *,
                 backend: str = "exact") -> list[tuple[np.ndarray, np.ndarray]]:
  """Top documents of each query by inner product of pooled vectors.

  Args:
    doc_vectors: [N, h] float pooled document vectors.
    query_vectors: [B, h] float pooled query vectors.
    top_n: documents returned per query (capped by N).
    backend: "exact" or "scann".

  Returns:
    Per query (document numbers [≤ top_n] int64, scores [≤ top_n] float32).
  """
  docs = np.ascontiguousarray(doc_vectors, np.float32)
  queries = np.ascontiguousarray(query_vectors, np.float32)
  if docs.ndim != 2 or queries.ndim != 2 or docs.shape[1] != queries.shape[1]:
    raise ValueError(f"expected doc vectors [N, h] and query vectors [B, h], got {docs.shape} "
                     f"and {queries.shape}")
  vectors_fn = lambda rows: docs[rows]  # noqa: E731
  if backend == "exact":
    searcher = ExactSearcher(len(docs), vectors_fn)
  elif backend == "scann":
    settings = scann_settings(len(docs), expected_k=top_n, reorder="float32")
    searcher = ScannSearcher.build(docs, settings, vectors_fn)
  else:
    raise ValueError(f"dense backend must be 'exact' or 'scann', got {backend!r}")
  rows, scores = searcher.search(queries, top_n)
  return [(r[r >= 0], s[r >= 0]) for r, s in zip(rows, scores)]
