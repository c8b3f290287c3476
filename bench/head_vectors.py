"""The cached MiniLM vectors mapped through a trained frozen-encoder head, for the benchmarks.

A head trained on the encode cache's all-MiniLM-L6-v2 token vectors (the frozen-encoder regime
of docs/reproduction.md: R4's 128-d ColBERT projection, R2's ALIGNER head with saliences) turns
them into the vectors that model retrieves with:
  apply_head        a loaded corpus store and query batch, mapped in memory (bench_storage)
  write_head_cache  the mapped corpus and one split's queries written once as an encode cache
                    of their own, in the encode job's layout (`corpus-00000-of-00001/`,
                    `queries-<split>/`, the `index.token_store_io` format, the source
                    manifests' settings such as doc_length / query_length kept), so a benchmark
                    that reads an encode cache (bench_end_to_end, its torch peers included)
                    runs on them unchanged
The cache directory's name carries a hash of the head file and of the source manifests, so a
retrained head or a re-encoded source never reuses a stale mapping.
"""

import argparse
import dataclasses
import hashlib
import json
import pathlib
from typing import Callable

HEAD_KINDS = ("colbert", "aligner")
DEFAULT_DIM = 128
DOC_LENGTH = 256  # the shared cache's document token limit
# Set by `save_token_store` itself; everything else in a source manifest's config is kept.
_STORE_OWN_CONFIG = ("vector_dtype", "pq_unit_norm", "fields")


def add_head_args(parser: argparse.ArgumentParser, what: str) -> None:
  """`--head`, `--head-kind`, `--head-dim`; `what` says what happens to the mapped vectors."""
  parser.add_argument("--head", default=None,
                      help="a trained frozen-encoder head (.npz with its .json beside it) that "
                           f"maps the cached vectors first; {what}")
  parser.add_argument("--head-kind", default="colbert", choices=HEAD_KINDS)
  parser.add_argument("--head-dim", type=int, default=DEFAULT_DIM,
                      help="the head's projection width")


def head_suffix(kind: str, dim: int) -> str:
  """What a result name gets appended for vectors from a `kind` head of width `dim`."""
  return f"_{kind}{dim}"


def apply_head(npz_path: str | pathlib.Path, kind: str, dim: int, corpus, queries, *,
               doc_length: int = DOC_LENGTH, vector_dtype: str = "float16") -> tuple:
  """The corpus and queries mapped through a head trained on the frozen vectors
  (`repro.frozen`, e.g. R4's ColBERT projection or R2's ALIGNER head).

  Args:
    npz_path: the head's parameters; its training history (.json) must sit beside it.
    kind, dim: the head's kind (HEAD_KINDS) and projection width.
    corpus: TokenStore of the cached document vectors [T, H].
    queries: QueryBatch of the cached query vectors [B, n, H].
    doc_length: at least the longest document (documents are padded to it in batches).
    vector_dtype: storage format of the mapped corpus vectors.

  Returns:
    (TokenStore of [T, dim] document vectors with the head's saliences when it has them and
    the corpus's token ids, QueryBatch of [B, n, dim] query vectors).
  """
  from repro.frozen import head_eval as frozen_eval  # pylint: disable=g-import-not-at-top
  from repro.frozen import heads  # pylint: disable=g-import-not-at-top
  from repro.frozen import trained_heads as store  # pylint: disable=g-import-not-at-top
  npz = pathlib.Path(npz_path)
  loaded = store.load_head(npz, npz.with_suffix(".json"))
  if loaded is None:
    raise SystemExit(f"{npz}: no trained head there (the .npz and its .json history are both "
                     "needed; heads are written by the gin/experiments/repro_r* jobs)")
  params, _ = loaded
  config = heads.HeadConfig(kind=kind, projection_dim=dim)
  module = heads.build_module(config)
  mapped = frozen_eval.head_store(module, params, corpus, doc_length=doc_length,
                                  vector_dtype=vector_dtype)
  mapped = dataclasses.replace(mapped, token_ids=corpus.token_ids)
  return mapped, frozen_eval.head_queries(module, params, queries)


def _manifest(directory: pathlib.Path) -> dict:
  return json.loads((directory / "manifest.json").read_text())


def head_cache_dir(encoded_dir: str | pathlib.Path, npz_path: str | pathlib.Path, kind: str,
                   dim: int, out_root: str | pathlib.Path, split: str = "test") -> pathlib.Path:
  """`out_root/<head file stem>-<hash>`: the hash covers the head's bytes, its kind and width,
  the split and the source cache's manifests (which hold every file's checksum)."""
  from aligner_jax.eval import inputs  # pylint: disable=g-import-not-at-top
  encoded, npz = pathlib.Path(encoded_dir), pathlib.Path(npz_path)
  if not npz.is_file():
    raise SystemExit(f"{npz}: no such head file")
  sources = inputs.corpus_shards(encoded) + [encoded / f"queries-{split}"]
  digest = hashlib.sha256(npz.read_bytes())
  digest.update(json.dumps([kind, dim, split]).encode())
  for source in sources:
    digest.update((source / "manifest.json").read_bytes())
  return pathlib.Path(out_root) / f"{npz.stem}-{digest.hexdigest()[:12]}"


def is_complete(directory: pathlib.Path, split: str = "test") -> bool:
  return all((directory / d / "manifest.json").is_file()
             for d in ("corpus-00000-of-00001", f"queries-{split}"))


def write_head_cache(encoded_dir: str | pathlib.Path, npz_path: str | pathlib.Path, kind: str,
                     dim: int, out_root: str | pathlib.Path, *, split: str = "test",
                     log: Callable[[str], None] = print) -> pathlib.Path:
  """The encode cache `encoded_dir` (corpus shards and `queries-<split>/`) mapped through the
  head, written once under `out_root` (see `head_cache_dir`) and reused after; returns it.

  The corpus becomes one shard; the stores keep the source's vector format and manifest
  settings, plus `head`, `head_kind` and `head_dim`. The directory appears whole or not at all.
  """
  from aligner_jax.eval import inputs  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store import from_padded  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store_io import load_token_store  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store_io import save_token_store  # pylint: disable=g-import-not-at-top
  from aligner_jax.io import atomic_dir  # pylint: disable=g-import-not-at-top
  from repro.frozen import cache  # pylint: disable=g-import-not-at-top
  encoded, npz = pathlib.Path(encoded_dir), pathlib.Path(npz_path)
  out = head_cache_dir(encoded, npz, kind, dim, out_root, split)
  if is_complete(out, split):
    log(f"head vectors read from {out}")
    return out
  shards = inputs.corpus_shards(encoded)
  query_dir = cache.query_dir(encoded, split)
  corpus = cache.load_corpus(encoded)
  queries = cache.store_to_queries(load_token_store(query_dir))
  doc_config = {k: v for k, v in _manifest(shards[0])["config"].items()
                if k not in _STORE_OWN_CONFIG}
  query_config = {k: v for k, v in _manifest(query_dir)["config"].items()
                  if k not in _STORE_OWN_CONFIG}
  head_config = {"head": npz.name, "head_kind": kind, "head_dim": dim}
  log(f"mapping {corpus.num_docs} documents ({corpus.num_tokens} tokens) and "
      f"{len(queries.ids)} {split} queries through {npz.name}")
  mapped, mapped_queries = apply_head(npz, kind, dim, corpus, queries,
                                      doc_length=max(int(corpus.lengths.max()), 1),
                                      vector_dtype=corpus.vector_dtype)
  q_store = from_padded(mapped_queries.ids, mapped_queries.vectors, mapped_queries.mask,
                        salience=mapped_queries.salience, token_ids=mapped_queries.token_ids,
                        pooled=mapped_queries.pooled, vector_dtype=corpus.vector_dtype)
  with atomic_dir(out) as tmp:
    save_token_store(mapped, tmp / "corpus-00000-of-00001", **{**doc_config, **head_config})
    save_token_store(q_store, tmp / f"queries-{split}", **{**query_config, **head_config})
  log(f"wrote {out}")
  return out

