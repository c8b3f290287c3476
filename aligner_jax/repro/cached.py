"""Encoded token stores (the encode job's output) as retrieval inputs.

The reproductions run on token vectors cached once by `gin/runs/encode.gin`
(`ENCODED_DIR/corpus-<p>-of-<P>/`, `ENCODED_DIR/queries-<split>/`), so that an experiment never
encodes a corpus again. Corpus shards are joined with `aligner_jax.eval.jobs.corpus_shards` +
`index.concatenate`; this module turns a query store back into the padded `QueryBatch` that
candidate search and refinement take.
"""

import numpy as np

from aligner_jax.index.store import TokenStore
from aligner_jax.retrieval import QueryBatch


def query_batch(store: TokenStore) -> QueryBatch:
  """The queries of `store`, padded to the longest one.

  Returns:
    QueryBatch with ids [B], vectors [B, n, h] float32, mask [B, n] bool and, when the store
    has them, salience [B, n], token_ids [B, n] and pooled [B, h'].
  """
  if store.num_docs == 0:
    raise ValueError("the query store holds no queries")
  length = max(int(store.lengths.max()), 1)
  padded = store.gather_padded(np.arange(store.num_docs), length)
  return QueryBatch(list(store.doc_ids), padded["vectors"], padded["mask"],
                    salience=padded.get("salience"), token_ids=padded.get("token_ids"),
                    pooled=store.pooled)
