"""Small encoded corpora for the index build tests, and a byte-level picture of a directory."""

import hashlib
import pathlib

import numpy as np

from aligner_jax.index import from_padded
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.index.token_store_io import shard_name


def make_store(first: int, num_docs: int, seed: int, *, max_len: int = 24, dim: int = 16):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, max_len + 1, num_docs)
  lengths[num_docs // 2] = 0  # an empty document (no stored token) flows through as well
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = rng.normal(size=(num_docs, max_len, dim)).astype(np.float32)
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  token_ids = rng.integers(0, 1000, (num_docs, max_len)).astype(np.int32)
  return from_padded([f"doc-{first + i}" for i in range(num_docs)], vectors, mask,
                     salience=salience, token_ids=token_ids, pooled=vectors.mean(1),
                     vector_dtype="float16")


def write_encoded(root: pathlib.Path, sizes=(120, 90, 60), seed=0) -> list[pathlib.Path]:
  """Encoded corpus shards `corpus-<i>-of-<n>/` as the encode job writes them."""
  paths, first = [], 0
  for i, n in enumerate(sizes):
    path = root / shard_name("corpus", i, len(sizes))
    save_token_store(make_store(first, n, seed + i), path, shard=i, shards=len(sizes),
                     first_document=first)
    paths.append(path)
    first += n
  return paths


def tree(directory: pathlib.Path) -> dict[str, str]:
  return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}
