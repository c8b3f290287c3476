"""Encoded token stores on disk: what the encode job writes and the index job reads.

A store directory (written atomically, verified on load; see `files.py`) holds
  manifest.json   kind "token_store", counts, bytes and SHA-256 of every file
  doc_ids.json    [N] ids (documents or queries)
  offsets.npy     [N + 1] int64
  vectors.npy     [T, h] float32 | float16 | int8 (+ scales.npy [T] float32 for int8), or
                  [T, M] uint8 PQ codes (+ codebook.npy [M, 256, h/M] float32)
  salience.npy    [T] float32, token_ids.npy [T] int32, pooled.npy [N, h'] float32 (if present)
  metadata.jsonl  [N] JSON objects, the documents' metadata (if present)
The encode job writes one such directory per corpus shard (`shard_name`,
`retrieval.corpus_shards`).
"""

import pathlib
from typing import Any

import numpy as np

from aligner_jax.index import files
from aligner_jax.index import pq
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import check_vector_format
from aligner_jax.index.token_store import metadata_jsonl
from aligner_jax.index.token_store import pq_subspaces
from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json

KIND = "token_store"
VERSION = 1
_OPTIONAL = ("scales", "salience", "token_ids", "pooled", "codebook")


def load_vector_arrays(directory: pathlib.Path, fmt: str, tokens: int, dim: int
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
  """(vectors, scales, codebook) of a verified directory holding `tokens` vectors of format
  `fmt` and dimension `dim`; shapes and dtypes are checked against those counts."""
  load = lambda name, dt, shape: files.load_array(directory, name, dtype=dt, shape=shape)  # noqa
  m = pq_subspaces(fmt)
  if m is not None:
    if dim % m:
      raise files.IndexFileError(directory / files.MANIFEST, f"format {fmt} does not divide "
                                 f"the dimension {dim}")
    codebook = load("codebook.npy", np.float32, (m, pq.NUM_CENTROIDS, dim // m))
    return load("vectors.npy", np.uint8, (tokens, m)), None, codebook
  vectors = load("vectors.npy", fmt, (tokens, dim))
  return vectors, load("scales.npy", np.float32, (tokens,)) if fmt == "int8" else None, None


def unit_norm_flag(config: dict[str, Any], fmt: str) -> bool:
  """The manifest's `pq_unit_norm` (absent in files written before it existed: False)."""
  flag = config.get("pq_unit_norm", False)
  if not isinstance(flag, bool) or (flag and pq_subspaces(fmt) is None):
    raise ValueError(f"pq_unit_norm must be a boolean and true only for PQ formats, got "
                     f"{flag!r} for {fmt}")
  return flag


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}"


def save_token_store(store: TokenStore, directory: str | pathlib.Path,
                     **config: Any) -> dict[str, Any]:
  """Writes `store` atomically; `config` (JSON values) is recorded in the manifest."""
  with atomic_dir(directory) as tmp:
    write_json(tmp / "doc_ids.json", store.doc_ids)
    files.save_array(tmp, "offsets.npy", store.offsets)
    files.save_array(tmp, "vectors.npy", store.vectors)
    for name in _OPTIONAL:
      if getattr(store, name) is not None:
        files.save_array(tmp, f"{name}.npy", getattr(store, name))
    if store.metadata is not None:
      files.save_metadata(tmp, metadata_jsonl(store.metadata))
    counts = {"documents": store.num_docs, "tokens": store.num_tokens, "dim": store.dim,
              "pooled_dim": 0 if store.pooled is None else int(store.pooled.shape[1])}
    manifest = files.write_manifest(
        tmp, kind=KIND, version=VERSION, counts=counts,
        config={**config, "vector_dtype": store.vector_dtype, "pq_unit_norm": store.unit_norm,
                "fields": [n for n in _OPTIONAL if getattr(store, n) is not None] +
                          (["metadata"] if store.metadata is not None else [])})
  return manifest


def load_token_store(directory: str | pathlib.Path) -> TokenStore:
  """Loads a store after verifying its checksums, its arrays memory-mapped read-only;
  mismatches raise `IndexFileError`."""
  directory = pathlib.Path(directory)
  manifest = files.verify_dir(directory, kind=KIND, version=VERSION)
  try:
    counts, config = manifest["counts"], manifest["config"]
    n, t, h = int(counts["documents"]), int(counts["tokens"]), int(counts["dim"])
    pooled_dim = int(counts["pooled_dim"])
    dtype = check_vector_format(config["vector_dtype"])
    fields = set(config["fields"])
    unit_norm = unit_norm_flag(config, dtype)
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(directory / files.MANIFEST,
                               f"manifest config/counts are malformed ({e})") from None
  ids = files.read_json(directory / "doc_ids.json")
  if not isinstance(ids, list) or len(ids) != n:
    raise files.IndexFileError(directory / "doc_ids.json", f"expected a list of {n} ids as the "
                               "manifest says (mismatched store)")
  load = lambda name, dt, shape: files.load_array(directory, name, dtype=dt, shape=shape)  # noqa
  offsets = load("offsets.npy", np.int64, (n + 1,))
  if offsets[0] != 0 or offsets[-1] != t or np.any(np.diff(offsets) < 0):
    raise files.IndexFileError(directory / "offsets.npy", f"offsets must rise from 0 to the "
                               f"manifest's {t} tokens")
  shapes = {"salience": (np.float32, (t,)), "token_ids": (np.int32, (t,)),
            "pooled": (np.float32, (n, pooled_dim))}
  extra = {name: load(f"{name}.npy", *shape) if name in fields else None
           for name, shape in shapes.items()}
  vectors, scales, codebook = load_vector_arrays(directory, dtype, t, h)
  metadata = files.load_metadata(directory, n) if "metadata" in fields else None
  return TokenStore(ids, offsets, vectors, scales=scales, codebook=codebook,
                    unit_norm=unit_norm, metadata=metadata, **extra)
