"""A synthetic encoded corpus of any size, written as the encode job's store shards.

  python -m bench.scale_corpus --out DIR --tokens 4000000 [--dim 128] [--doc_tokens 64]
      [--shard_tokens 1000000] [--clusters 1024] [--noise 0.35] [--seed 0]
      [--family_size 1] [--family_noise 0.2]

Token vectors are clustered like an encoder's: each token is one of `clusters` random unit
centres plus Gaussian noise (`noise` per dimension, relative to a unit vector's coordinates),
L2-normalised and stored in float16, `doc_tokens` tokens per document, with a random salience
per token (so β^d pruning has something to rank). With `family_size` F > 1, documents come in
families of F consecutive ones, near-duplicates of a family prototype drawn as above: each
member token is its prototype token plus Gaussian noise of `family_noise`, L2-normalised. A
query drawn from one member then has its family as a clearly separated set of best documents
(the relevant documents of a real collection), while with F = 1 no document is related to
another and every document beyond a query's source ties with thousands of others up to noise.
Documents go into `corpus-<i>-of-<n>/` token
stores of `shard_tokens // doc_tokens` documents (`index.token_store_io.save_token_store`, the
encode job's layout and manifest keys), so the index job reads them as it reads real ones.

Shard i is drawn from its own generator (seed, i) and written as soon as it is complete:
memory holds one shard, never the corpus, and a rerun skips shards already written with the
same settings. Documents are numbered globally (`doc-<n>`).
"""

import argparse
import math
import pathlib
from typing import Any

import numpy as np

from aligner_jax.index import files
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store_io import KIND
from aligner_jax.index.token_store_io import VERSION
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.index.token_store_io import shard_name

_BLOCK = 1 << 16  # tokens drawn at a time


def centres(num: int, dim: int, seed: int) -> np.ndarray:
  """[num, dim] float32 random unit vectors."""
  x = np.random.default_rng([seed, 1 << 20]).normal(size=(num, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, centre_vectors: np.ndarray,
               noise: float) -> np.ndarray:
  """[n, h] float32 unit vectors: random centres plus Gaussian noise of `noise`."""
  dim = centre_vectors.shape[1]
  x = centre_vectors[rng.integers(0, len(centre_vectors), n)]
  x = x + (noise / math.sqrt(dim)) * rng.normal(size=(n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _family_members(rng: np.random.Generator, first_doc: int, num_docs: int, *,
                    doc_tokens: int, centre_vectors: np.ndarray, noise: float,
                    family_size: int, family_noise: float, seed: int) -> np.ndarray:
  """[num_docs · doc_tokens, h] float32: documents as noisy copies of their family's
  prototype; a prototype is drawn from its own generator (seed, family), so a family split
  over two shards has one prototype."""
  dim = centre_vectors.shape[1]
  out = np.empty((num_docs * doc_tokens, dim), np.float32)
  families = np.arange(first_doc, first_doc + num_docs) // family_size
  for f in np.unique(families):
    prototype = _clustered(np.random.default_rng([seed, 2, f]), doc_tokens, centre_vectors,
                           noise)
    for d in np.flatnonzero(families == f):
      x = prototype + (family_noise / math.sqrt(dim)) * rng.normal(size=prototype.shape)
      out[d * doc_tokens:(d + 1) * doc_tokens] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def draw_shard(first_doc: int, num_docs: int, *, doc_tokens: int, centre_vectors: np.ndarray,
               noise: float, seed: int, shard: int, family_size: int = 1,
               family_noise: float = 0.2) -> TokenStore:
  """The store of documents [first_doc, first_doc + num_docs), drawn a block at a time."""
  rng = np.random.default_rng([seed, shard])
  tokens = num_docs * doc_tokens
  dim = centre_vectors.shape[1]
  vectors = np.empty((tokens, dim), np.float16)
  if family_size > 1:
    vectors[:] = _family_members(rng, first_doc, num_docs, doc_tokens=doc_tokens,
                                 centre_vectors=centre_vectors, noise=noise,
                                 family_size=family_size, family_noise=family_noise, seed=seed)
  else:
    for start in range(0, tokens, _BLOCK):
      n = min(_BLOCK, tokens - start)
      vectors[start:start + n] = _clustered(rng, n, centre_vectors, noise)
  offsets = np.arange(num_docs + 1, dtype=np.int64) * doc_tokens
  salience = rng.random(tokens, dtype=np.float32)
  ids = [f"doc-{first_doc + i}" for i in range(num_docs)]
  return TokenStore(ids, offsets, vectors, salience=salience)


def _is_written(directory: pathlib.Path, config: dict[str, Any]) -> bool:
  if not (directory / files.MANIFEST).is_file():
    return False
  try:
    manifest = files.verify_dir(directory, kind=KIND, version=VERSION)
  except files.IndexFileError:
    return False
  return all(manifest["config"].get(k) == v for k, v in config.items())


def write_corpus(out: str | pathlib.Path, *, tokens: int, dim: int = 128, doc_tokens: int = 64,
                 shard_tokens: int = 1_000_000, clusters: int = 1024, noise: float = 0.35,
                 seed: int = 0, family_size: int = 1, family_noise: float = 0.2,
                 log=print) -> list[pathlib.Path]:
  """Writes (or completes) the corpus in `out`; returns its shard directories in order."""
  out = pathlib.Path(out)
  num_docs = max(1, tokens // doc_tokens)
  shard_docs = max(1, shard_tokens // doc_tokens)
  num_shards = math.ceil(num_docs / shard_docs)
  centre_vectors = centres(clusters, dim, seed)
  settings = {"dataset": "synthetic-clustered", "dim": dim, "doc_length": doc_tokens,
              "clusters": clusters, "noise": noise, "seed": seed, "vector_dtype": "float16"}
  if family_size > 1:  # (corpora of independent documents keep their settings and files)
    settings |= {"family_size": family_size, "family_noise": family_noise}
  written = []
  for shard in range(num_shards):
    first = shard * shard_docs
    count = min(shard_docs, num_docs - first)
    directory = out / shard_name("corpus", shard, num_shards)
    config = {**settings, "shard": shard, "shards": num_shards, "shard_documents": shard_docs,
              "first_document": first}
    if not _is_written(directory, config):
      store = draw_shard(first, count, doc_tokens=doc_tokens, centre_vectors=centre_vectors,
                         noise=noise, seed=seed, shard=shard, family_size=family_size,
                         family_noise=family_noise)
      save_token_store(store, directory, **config)
      del store
      log(f"wrote {directory.name}: {count} documents, {count * doc_tokens} tokens")
    written.append(directory)
  return written


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--tokens", type=int, required=True)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--doc_tokens", type=int, default=64)
  parser.add_argument("--shard_tokens", type=int, default=1_000_000)
  parser.add_argument("--clusters", type=int, default=1024)
  parser.add_argument("--noise", type=float, default=0.35)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--family_size", type=int, default=1)
  parser.add_argument("--family_noise", type=float, default=0.2)
  args = parser.parse_args()
  write_corpus(args.out, tokens=args.tokens, dim=args.dim, doc_tokens=args.doc_tokens,
               shard_tokens=args.shard_tokens, clusters=args.clusters, noise=args.noise,
               seed=args.seed, family_size=args.family_size, family_noise=args.family_noise)


if __name__ == "__main__":
  main()
