"""Cached token vectors of a frozen encoder: loading them, and encoding extra query splits.

A cache directory is what the encode job (`gin/runs/encode.gin`) writes for one collection:
  corpus-<i>-of-<n>/   the corpus token store(s) (shards in document order)
  queries-<split>/     one split's query token store
all in the `aligner_jax.index.token_store_io` format (checksums verified on load). The
frozen-encoder experiments read the corpus and the `train` / `test` queries from it;
`encode_query_split` adds a missing `queries-<split>/` with the same encoder, without touching
the corpus.

Conventions: queries come back as a padded `QueryBatch` (vectors [B, n, H] float32, mask
[B, n] bool), the corpus as the ragged `TokenStore` (padded per batch with `gather_padded`).
"""

import pathlib
from typing import Any, Callable

import numpy as np

from aligner_jax.eval import inputs as eval_inputs
from aligner_jax.index import concatenate
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import from_padded
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.retrieval import QueryBatch


def query_dir(cache_dir: str | pathlib.Path, split: str) -> pathlib.Path:
  return pathlib.Path(cache_dir) / f"queries-{split}"


def load_corpus(cache_dir: str | pathlib.Path) -> TokenStore:
  """All corpus shards of `cache_dir`, concatenated in shard order (checksums verified)."""
  return concatenate([load_token_store(p) for p in eval_inputs.corpus_shards(str(cache_dir))])


def store_to_queries(store: TokenStore, *, max_length: int | None = None) -> QueryBatch:
  """A query token store as a padded `QueryBatch`, cut to `max_length` tokens if given.

  Returns vectors [B, n, H] float32 with n = the longest stored query (or `max_length`).
  """
  longest = max(int(store.lengths.max()) if store.num_docs else 1, 1)
  length = longest if max_length is None else min(longest, int(max_length))
  g = store.gather_padded(np.arange(store.num_docs), longest)
  cut = lambda x: None if x is None else x[:, :length]  # noqa: E731
  return QueryBatch(list(store.doc_ids), g["vectors"][:, :length], g["mask"][:, :length],
                    cut(g.get("salience")), cut(g.get("token_ids")), store.pooled)


def load_queries(cache_dir: str | pathlib.Path, split: str, *,
                 max_length: int | None = None) -> QueryBatch:
  """`queries-<split>/` of `cache_dir` as a padded `QueryBatch` (see `store_to_queries`)."""
  path = query_dir(cache_dir, split)
  if not (path / "manifest.json").is_file():
    raise FileNotFoundError(f"{path}: no encoded {split!r} queries here (manifest.json missing);"
                            " encode them first (encode_query_split)")
  return store_to_queries(load_token_store(path), max_length=max_length)


def encode_query_split(*, encoders: Any, collection: Any, split: str,
                       cache_dir: str | pathlib.Path, query_length: int,
                       log: Callable[[str], None] = print) -> pathlib.Path:
  """Encodes the queries judged in `split` into `cache_dir/queries-<split>/` (atomically).

  Args:
    encoders: `aligner_jax.eval.inputs.ModelEncoders` of the frozen encoder.
    collection: the collection holding `split`'s qrels.
    query_length: the token limit the cache's other query splits were encoded with.
  """
  queries = eval_inputs.encode_split_queries(encoders, collection, split,
                                             query_length=query_length, log=log)
  store = from_padded(queries.ids, queries.vectors, queries.mask, salience=queries.salience,
                      token_ids=queries.token_ids, pooled=queries.pooled)
  out = query_dir(cache_dir, split)
  save_token_store(store, out, dataset=collection.name, query_length=query_length)
  log(f"wrote {out}: {store.num_docs} queries, {store.num_tokens} tokens")
  return out
