"""The token index: salience-pruned document tokens in per-shard MIPS indexes, plus the stored
vectors that refinement scores (ALIGNER §2.1, §3.2, §4.1).

Building (`build_token_index`): each input `TokenStore` (e.g. one encoding shard) is split into
shards of whole documents; each document keeps its top-β^d tokens by salience
(`prune_doc_ratio`), which are what the MIPS backend ("scann", "ivf" or "exact") searches.
Refinement reads each shard's stored vectors: by default the kept tokens
(`refine_tokens="kept"`, the storage saving the paper reports), or every token (`"all"`, the
paper's "full model with all token vectors" at the cost of storage).

Refinement vectors are float32 / float16 / int8 or product-quantised ("pq:M": M bytes per
token plus a codebook per shard, trained on the shard's stored tokens). The "exact" backend
scans the stored vectors themselves, so with PQ the MIPS stage runs on the PQ codes and the
index holds no second copy; ScaNN keeps its own AH codes (and, unless `reorder` is "stored" or
"none", its own reorder copy). `fields` says which extras are kept: token saliences (needed by
salience-weighted refinement), vocabulary ids (COIL) and pooled vectors (the dense path).

On disk (`save_index`, `load_index`), INDEX_DIR holds `index.json` (config, shard list with the
SHA-256 of each shard manifest, totals) and one directory per shard:
  manifest.json   config (with `source_sha256`, the digest of the documents the shard was
                  built from), counts, bytes and SHA-256 of every file (see `files.py`)
  doc_ids.json    [N] document ids
  offsets.npy     [N + 1] int64 refinement rows of each document; also the token → document
                  map (a searched row's document is found from the offsets, no id per token)
  vectors.npy     [T, h] float16 | int8 | float32 refinement vectors (+ scales.npy [T] for
                  int8), or [T, M] uint8 PQ codes (+ codebook.npy [M, 256, h/M] float32)
  salience.npy    [T] float32 (when the model has saliences and "salience" is in `fields`)
  token_ids.npy   [T] int32 (when stored and kept; COIL needs them)
  pooled.npy      [N, h'] float32 pooled vectors for the dense path (when present and kept)
  ann_keep.npy    [⌈T / 8⌉] uint8 bit mask of the searched rows (only for refine_tokens="all"
                  with β^d < 1; otherwise every stored row is searched)
  metadata.jsonl  [N] JSON objects, the documents' metadata (when they have any)
  scann/          the ScaNN files (`searcher.serialize`), for the ScaNN backend
  ivf/            cell centroids and lists of residual codes, for the IVF backend (`ivf.py`;
                  the cells of all IVF shards are searched together)
An IVF index of more than `ivf.COARSE_MIN` cells in all also holds `coarse-<key>/`, the
grouping of all its cells that chooses the cells to search, computed when the index is
written rather than at every load (`coarse_level.py`; "coarse" in `index.json`).
Document numbers are global: shard s's local document i is `doc_base[s] + i`. A corpus
larger than memory is built one shard at a time from its encoded shards (`shard_tasks.py`,
`index_staging.py`), into the same files. A published index changes in generations
(`generations.py`): `index.json` then also names its generation, the shards added since the
build (`shard-g<generation>-<i>`), each shard's deleted documents (`tombstones/`,
`tombstones.py`) and the files kept for readers of the previous generation; `load_index`
marks deleted documents in `TokenIndex.deleted` and searches skip them (`masked_search.py`).
"""

import concurrent.futures
import contextlib
import dataclasses
import itertools
import os
import pathlib
import re
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from aligner_jax.index import coarse_level
from aligner_jax.index import files
from aligner_jax.index import ivf
from aligner_jax.index import masked_search
from aligner_jax.index import pruning
from aligner_jax.index import shard_search
from aligner_jax.index import tombstones
from aligner_jax.index.backends import ExactSearcher
from aligner_jax.index.backends import ScannSearcher
from aligner_jax.index.backends import ScannSettings
from aligner_jax.index.backends import check_scann_files
from aligner_jax.index.backends import scann_settings
from aligner_jax.index.searched_rows import SearchedRows
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import check_vector_format
from aligner_jax.index.token_store import content_sha256
from aligner_jax.index.token_store import copy_documents
from aligner_jax.index.token_store import metadata_jsonl
from aligner_jax.index.token_store import padded_buffers
from aligner_jax.index.token_store_io import load_vector_arrays
from aligner_jax.index.token_store_io import unit_norm_flag
from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json

SHARD_KIND = "token_index_shard"
INDEX_KIND = "token_index"
# 2: PQ vectors, no per-token document map (derived from the offsets), ann_keep bit mask.
VERSION = 2
INDEX_JSON = "index.json"
ENCODER_KEY = "encoder"
_SEGMENT = re.compile(r"shard-g([0-9]{6})-[0-9]{5}")
_LOAD_ATTEMPTS = 3
BACKENDS = ("scann", "ivf", "exact")
REFINE_TOKENS = ("kept", "all")
FIELDS = ("salience", "token_ids", "pooled")
_DEQUANTIZE_BLOCK = 1 << 16  # rows converted to float32 at a time for ScaNN


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """How a token index is built. ScaNN fields left None are scaled with the shard size.

  Attributes:
    backend: "scann" (tree + AH + reorder), "ivf" (k-means cells of int8 residual codes,
      memory-mapped, the cells of all shards searched together: `ivf.py`) or "exact" (brute
      force over the stored vectors, PQ codes included).
    vector_dtype: refinement vector format: "float16" (default), "int8", "float32" or "pq:M"
      (M one-byte sub-space codes per token; M must divide h).
    prune_doc_ratio: β^d in (0, 1]: fraction of each document's tokens searched (by salience).
    refine_tokens: "kept" (refine with the searched tokens) or "all" (store every token).
    fields: extras kept when the encoded documents have them, a subset of
      ("salience", "token_ids", "pooled"); pruning uses saliences either way.
    pq_sample_size: tokens sampled per shard to train PQ codebooks.
    max_shard_tokens: split documents into shards of at most this many searched tokens
      (whole documents; None: one shard per input store).
    num_leaves, leaves_to_search, search_fraction, scan_factor, expected_k, dims_per_block,
    anisotropic_threshold, reorder, reorder_factor, training_sample_size: ScaNN settings,
      see `backends.scann_settings`. The IVF backend reads num_leaves as its number of cells
      per shard and leaves_to_search as the cells probed per query token over the whole
      index (`ivf.ivf_settings`; None: their defaults) and training_sample_size as the least
      k-means sample.
    training_threads: ScaNN training threads. 1 (default) makes a shard's saved bytes a function
      of its input: with several threads ScaNN's AH codebook training and the order of each
      leaf's members vary from run to run (seen from about 1M tokens a shard). 0 uses every
      core, faster for one large shard, not byte-reproducible. Shard tasks (Beam workers)
      give the parallelism of a large build either way.
  """
  backend: str = "scann"
  vector_dtype: str = "float16"
  prune_doc_ratio: float = 1.0
  refine_tokens: str = "kept"
  fields: tuple[str, ...] = FIELDS
  pq_sample_size: int = 16_384
  max_shard_tokens: int | None = None
  num_leaves: int | None = None
  leaves_to_search: int | None = None
  search_fraction: float = 0.2
  scan_factor: float = 8.0
  expected_k: int = 4000
  dims_per_block: int = 2
  anisotropic_threshold: float = 0.2
  reorder: str = "int8"
  reorder_factor: float = 2.0
  training_sample_size: int = 100_000
  training_threads: int = 1

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise ValueError(f"index backend must be one of {BACKENDS}, got {self.backend!r}")
    if self.refine_tokens not in REFINE_TOKENS:
      raise ValueError(f"refine_tokens must be one of {REFINE_TOKENS}, got "
                       f"{self.refine_tokens!r}")
    check_vector_format(self.vector_dtype)
    object.__setattr__(self, "fields", tuple(self.fields))
    unknown = sorted(set(self.fields) - set(FIELDS))
    if unknown:
      raise ValueError(f"index fields must be a subset of {FIELDS}, got unknown {unknown}")
    if self.pq_sample_size < 1:
      raise ValueError(f"pq_sample_size must be positive, got {self.pq_sample_size}")
    pruning.check_ratio(self.prune_doc_ratio, "document pruning ratio β^d")
    if self.max_shard_tokens is not None and self.max_shard_tokens < 1:
      raise ValueError(f"max_shard_tokens must be positive, got {self.max_shard_tokens}")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> "IndexConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in known})


class IndexShard:
  """One shard: its refinement store, the searched tokens and their MIPS searcher."""

  def __init__(self, store: TokenStore, searched: SearchedRows,
               searcher: ExactSearcher | ScannSearcher | ivf.IvfSearcher, original_tokens: int,
               source_sha256: str | None = None):
    self.store = store
    self.searched = searched
    self.searcher = searcher
    self.original_tokens = int(original_tokens)
    # `content_sha256` of the documents the shard was built from (None for a loaded shard);
    # recorded in the manifest so a resumed build knows a finished shard is still current.
    self.source_sha256 = source_sha256

  @property
  def num_ann_tokens(self) -> int:
    return self.searched.size

  def search(self, queries: np.ndarray, k: int, *, threaded: bool = False,
             **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Local document of each of the k nearest searched tokens: ([Q, k'] int64, [Q, k']).

    `threaded`: other shards are searched at the same time, so ScaNN searches this one in the
    calling thread (one level of threads, not threads of threads).
    """
    if self.searcher.kind == "scann":
      kwargs["parallel"] = not threaded
    rows, scores = self.searcher.search(queries, k, **kwargs)
    docs = np.where(rows >= 0, self.searched.documents(np.maximum(rows, 0)), -1)
    return docs.astype(np.int64), scores


def _ann_vectors_fn(store: TokenStore, searched: SearchedRows):
  if not searched.masked:
    return store.dequantize
  return lambda rows: store.dequantize(searched.stored_rows(rows))


def _make_searcher(config: IndexConfig, store: TokenStore,
                   searched: SearchedRows) -> ExactSearcher | ScannSearcher | ivf.IvfSearcher:
  size = searched.size
  vectors_fn = _ann_vectors_fn(store, searched)
  if config.backend == "exact":
    return ExactSearcher(size, vectors_fn)
  if config.backend == "ivf":
    settings = ivf.ivf_settings(size, num_cells=config.num_leaves,
                                cells_to_search=config.leaves_to_search,
                                training_sample_size=config.training_sample_size)
    return ivf.IvfSearcher.build(_float32_rows(vectors_fn, size),
                                 searched.documents(np.arange(size)), settings, vectors_fn)
  settings = scann_settings(
      size, num_leaves=config.num_leaves, leaves_to_search=config.leaves_to_search,
      search_fraction=config.search_fraction, scan_factor=config.scan_factor,
      expected_k=config.expected_k,
      dims_per_block=config.dims_per_block, anisotropic_threshold=config.anisotropic_threshold,
      reorder=config.reorder, reorder_factor=config.reorder_factor,
      training_sample_size=config.training_sample_size)
  return ScannSearcher.build(_float32_rows(vectors_fn, size), settings, vectors_fn,
                             training_threads=config.training_threads)


def _float32_rows(vectors_fn, size: int) -> np.ndarray:
  """[size, h] float32 of the searched rows, filled a block at a time: ScaNN needs float32,
  and converting a block at a time keeps one float32 copy of the shard, not two."""
  first = vectors_fn(np.arange(min(size, _DEQUANTIZE_BLOCK)))
  out = np.empty((size, first.shape[1]), np.float32)
  out[:len(first)] = first
  for start in range(len(first), size, _DEQUANTIZE_BLOCK):
    stop = min(start + _DEQUANTIZE_BLOCK, size)
    out[start:stop] = vectors_fn(np.arange(start, stop))
  return out


def build_shard(store: TokenStore, config: IndexConfig, *,
                source_sha256: str | None = None) -> IndexShard:
  """Prunes, quantises and indexes one shard's documents (`store` holds all their tokens;
  `source_sha256`: its `content_sha256` when the caller has it already)."""
  if store.num_tokens == 0:
    raise ValueError("cannot index a shard without tokens")
  source_sha256 = source_sha256 or content_sha256(store)
  kept = pruning.kept_rows(store, config.prune_doc_ratio)
  everything = len(kept) == store.num_tokens
  refine = store if everything or config.refine_tokens == "all" else store.select_rows(kept)
  ann_rows = None if everything or config.refine_tokens == "kept" else kept
  # Quantised after pruning, so a PQ codebook is trained on the tokens it will encode.
  refine = refine.with_vector_dtype(config.vector_dtype, pq_sample_size=config.pq_sample_size)
  refine = dataclasses.replace(refine, **{f: None for f in FIELDS if f not in config.fields})
  return index_rows(refine, SearchedRows.from_rows(refine.offsets, ann_rows), config,
                    original_tokens=store.num_tokens, source_sha256=source_sha256)


def index_rows(store: TokenStore, searched: SearchedRows, config: IndexConfig, *,
               original_tokens: int, source_sha256: str | None = None) -> IndexShard:
  """A shard over a refinement `store` (already pruned and quantised) whose `searched` rows
  the MIPS backend of `config` indexes: the last step of `build_shard`, and what compaction
  runs over the rows it keeps."""
  return IndexShard(store, searched, _make_searcher(config, store, searched),
                    original_tokens=original_tokens, source_sha256=source_sha256)


def document_groups(lengths: np.ndarray, max_tokens: int | None,
                    ratio: float) -> list[tuple[int, int]]:
  """[start, stop) of consecutive groups of whole documents (stored `lengths` [N]) with at
  most `max_tokens` searched tokens each (a longer document is a group of its own)."""
  if max_tokens is None:
    return [(0, len(lengths))]
  return consecutive_groups(pruning.prune_budget(lengths, ratio), max_tokens)


def consecutive_groups(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
  """[start, stop) of consecutive items whose `sizes` [N] sum to at most `limit` per group (an
  item larger than `limit` is a group of its own); one group [0, 0) when N = 0."""
  groups, start, acc = [], 0, 0
  for i, n in enumerate(sizes):
    if acc and acc + n > limit:
      groups.append((start, i))
      start, acc = i, 0
    acc += int(n)
  groups.append((start, len(sizes)))
  return groups


def slice_documents(store: TokenStore, start: int, stop: int) -> TokenStore:
  """Documents [start, stop) of `store` as a store of views (no copy, memory maps stay maps)."""
  lo, hi = store.offsets[start], store.offsets[stop]
  cut = lambda x: None if x is None else x[lo:hi]  # noqa: E731
  return dataclasses.replace(
      store, doc_ids=store.doc_ids[start:stop], offsets=store.offsets[start:stop + 1] - lo,
      vectors=store.vectors[lo:hi], scales=cut(store.scales), salience=cut(store.salience),
      token_ids=cut(store.token_ids),
      pooled=None if store.pooled is None else store.pooled[start:stop],
      metadata=None if store.metadata is None else store.metadata[start:stop])


def split_documents(store: TokenStore, max_tokens: int | None,
                    ratio: float) -> list[TokenStore]:
  """Consecutive groups of whole documents with at most `max_tokens` searched tokens each."""
  if max_tokens is None:
    return [store]
  return [slice_documents(store, a, b)
          for a, b in document_groups(store.lengths, max_tokens, ratio)]


def shard_threads(count: int, requested: int | None) -> int:
  """Threads for work over `count` shards: `requested`, else one per core, at most one per
  shard."""
  threads = requested or min(count, os.cpu_count() or 1)
  if threads < 1:
    raise ValueError(f"search_threads must be positive, got {requested}")
  return threads


class TokenIndex:
  """All shards of an index; documents are numbered globally in shard order.

  `search_threads` shards are searched at a time (None: one per core, at most one per
  shard; 1: one after another in the caller's thread); see `shard_search`.

  `deleted` [N] bool marks documents that are deleted (or replaced by a later version,
  `generations.py`): they keep their number, so numbers stay positions in shard order, but no
  search returns them. `generation` is the `index.json` generation the index was loaded from.
  """

  def __init__(self, shards: Sequence[IndexShard], config: IndexConfig, *,
               search_threads: int | None = None, deleted: np.ndarray | None = None,
               generation: int = 0,
               coarse_grouping: ivf.CoarseGrouping | None = None):
    if not shards:
      raise ValueError("an index needs at least one shard")
    self.shards = list(shards)
    self.config = config
    self.generation = int(generation)
    self.doc_base = np.concatenate(
        [[0], np.cumsum([s.store.num_docs for s in self.shards])]).astype(np.int64)
    self.doc_ids: list[str] = list(itertools.chain.from_iterable(
        s.store.doc_ids for s in self.shards))
    self.doc_lengths = np.concatenate([s.store.lengths for s in self.shards])
    self.searched_lengths = np.concatenate(
        [masked_search.searched_lengths(s.searched) for s in self.shards])
    n = int(self.doc_base[-1])
    self.deleted = np.zeros(n, bool) if deleted is None else np.asarray(deleted, bool).copy()
    if self.deleted.shape != (n,):
      raise ValueError(f"deleted must be [{n}] bool, one per document, got "
                       f"{self.deleted.shape}")
    self.deleted.flags.writeable = False
    kinds = {(s.store.dim, s.store.padded_dtype(True).str, s.store.salience is None,
              s.store.token_ids is None) for s in self.shards}
    if len(kinds) != 1:
      raise ValueError(f"shards disagree on the vector dimension, format or stored fields: "
                       f"{sorted(kinds)}")
    # Float vectors and nothing else stored per token: refinement gathers each document with
    # one slice of its shard's vectors (`gather_padded`), from its start within the shard.
    self._plain_float_vectors = all(
        s.store.codebook is None and s.store.vectors.dtype != np.int8
        and s.store.salience is None and s.store.token_ids is None for s in self.shards)
    self._doc_start = np.concatenate([s.store.offsets[:-1] for s in self.shards]).astype(
        np.int64)
    # IVF shards are searched as one set of cells (`ivf.IvfIndex`), in chunks of query
    # tokens spread over the threads rather than shard by shard.
    # `coarse_grouping`: the stored coarse level of a saved index (`coarse_level.py`).
    self._ivf = (ivf.IvfIndex([s.searcher.lists for s in self.shards], self.doc_base[:-1],
                              coarse_grouping=coarse_grouping)
                 if all(s.searcher.kind == "ivf" for s in self.shards) else None)
    self.search_threads = shard_threads(
        len(self.shards) if self._ivf is None else os.cpu_count() or 1, search_threads)
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._executor_lock = threading.Lock()  # searches from several threads share one pool

  @property
  def num_docs(self) -> int:
    """N, the number of document numbers (deleted documents included)."""
    return int(self.doc_base[-1])

  @property
  def live(self) -> np.ndarray:
    """[N] bool: the documents that are not deleted."""
    return ~self.deleted

  @property
  def num_live_docs(self) -> int:
    return int(self.num_docs - self.deleted.sum())

  def metadata(self, doc: int) -> dict[str, Any]:
    """The metadata of global document `doc` ({} when it has none)."""
    s = int(np.searchsorted(self.doc_base, doc, side="right") - 1)
    rows = self.shards[s].store.metadata
    return {} if rows is None else rows[doc - int(self.doc_base[s])]

  def document_mask(self, ids: Iterable[str]) -> np.ndarray:
    """[N] bool: the live documents whose id is in `ids` (ids not in the index are ignored)."""
    wanted = set(ids)
    mask = np.fromiter((d in wanted for d in self.doc_ids), bool, count=self.num_docs)
    return mask & self.live

  def metadata_mask(self, predicate: Callable[[dict[str, Any]], bool]) -> np.ndarray:
    """[N] bool: the live documents whose metadata (see `metadata`) satisfies `predicate`."""
    mask = np.zeros(self.num_docs, bool)
    for s, shard in enumerate(self.shards):
      rows = shard.store.metadata or [{}] * shard.store.num_docs
      base = int(self.doc_base[s])
      mask[base:base + len(rows)] = [bool(predicate(m)) for m in rows]
    return mask & self.live

  def searchable(self, allowed: np.ndarray | None = None) -> np.ndarray | None:
    """[N] bool documents a search may return: live and `allowed` (None: all of them, when
    nothing is deleted and no `allowed` is given)."""
    if allowed is None:
      return None if not self.deleted.any() else self.live
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.shape != (self.num_docs,):
      raise ValueError(f"allowed must be a [{self.num_docs}] bool mask over the index's "
                       f"documents, got {allowed.dtype}{list(allowed.shape)}")
    return allowed & self.live

  @property
  def dim(self) -> int:
    return self.shards[0].store.dim

  @property
  def num_ann_tokens(self) -> int:
    return sum(s.num_ann_tokens for s in self.shards)

  @property
  def num_original_tokens(self) -> int:
    return sum(s.original_tokens for s in self.shards)

  @property
  def has_salience(self) -> bool:
    return self.shards[0].store.salience is not None

  @property
  def has_token_ids(self) -> bool:
    return self.shards[0].store.token_ids is not None

  def _pool(self) -> concurrent.futures.ThreadPoolExecutor | None:
    if self.search_threads == 1 or (len(self.shards) == 1 and self._ivf is None):
      return None
    with self._executor_lock:
      if self._executor is None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.search_threads, thread_name_prefix="shard-search")
      return self._executor

  def searchable_tokens(self, allowed: np.ndarray | None = None) -> int:
    """Searched tokens of the documents `searchable(allowed)` admits."""
    mask = self.searchable(allowed)
    return self.num_ann_tokens if mask is None else int(self.searched_lengths[mask].sum())

  def search_tokens(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
                    **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Global document of each of the k nearest searched tokens over all shards, among live
    documents (and those `allowed` admits).

    Args:
      queries: [Q, h] float32 query token vectors.
      k: K′, capped by the number of searchable tokens; each shard returns at most k.
      allowed: [N] bool documents that may be returned (None: every live one). Deleted and
        disallowed documents are skipped inside each shard's search (`masked_search`), so
        each query token still gets its k nearest allowed tokens.
      **kwargs: backend search options (ScaNN: leaves_to_search, reorder_factor; IVF:
        leaves_to_search, the cells probed per query token).

    Returns:
      (docs [Q, k'] int64 with -1 for unfilled results, scores [Q, k'] float32), best first;
      equal scores in shard order, then in each shard's own order (IVF: in the order the
      cells were chosen). IVF indexes search the cells of every shard together; with a mask
      admitting at most `masked_search.DIRECT_FRACTION` of the tokens they scan the allowed
      documents shard by shard instead.
    """
    mask = self.searchable(allowed)
    k = min(int(k), self.searchable_tokens(allowed))
    queries = np.ascontiguousarray(queries, np.float32)
    if k <= 0:
      return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)

    pool = self._pool()
    if self._ivf is not None and (mask is None or self.searchable_tokens(allowed) >
                                  masked_search.DIRECT_FRACTION * self.num_ann_tokens):
      cells = kwargs.get("leaves_to_search") or self.shards[0].searcher.settings_.cells_to_search
      return self._ivf.search(queries, k, cells_to_search=cells, allowed=mask, executor=pool)

    def one(s: int) -> tuple[np.ndarray, np.ndarray]:
      part = None if mask is None else mask[self.doc_base[s]:self.doc_base[s + 1]]
      d, scores = masked_search.search(self.shards[s], queries, k, part,
                                       threaded=pool is not None, **kwargs)
      return np.where(d >= 0, d + self.doc_base[s], -1), scores

    results = shard_search.ordered_map(one, len(self.shards), pool, 2 * self.search_threads)
    return shard_search.merge_results(results, k)

  def gather_padded(self, docs: np.ndarray, length: int, *,
                    native_dtype: bool = False) -> dict[str, np.ndarray]:
    """Refinement inputs of global documents `docs` [K] (-1 = padding); see TokenStore."""
    docs = np.asarray(docs, np.int64)
    first = self.shards[0].store
    out = padded_buffers(len(docs), length, self.dim, first.padded_dtype(native_dtype),
                         salience=self.has_salience, token_ids=self.has_token_ids)
    shard_of = np.searchsorted(self.doc_base, docs, side="right") - 1
    if self._plain_float_vectors:  # one pass over the documents, however many shards
      slots = np.flatnonzero(docs >= 0)
      lens = self.doc_lengths[docs[slots]]
      if lens.size and lens.max() > length:
        raise ValueError(f"document of {lens.max()} tokens does not fit padded length {length}")
      copy_documents(out["vectors"], slots, shard_of[slots], self._doc_start[docs[slots]],
                     lens, [s.store.vectors for s in self.shards])
      out["mask"][slots] = np.arange(length)[None, :] < lens[:, None]
      return out
    for s in np.unique(shard_of[docs >= 0]):
      slots = np.flatnonzero((shard_of == s) & (docs >= 0))
      self.shards[s].store.fill_padded(out, slots, docs[slots] - self.doc_base[s])
    return out

  def pooled(self) -> np.ndarray | None:
    """[N, h'] pooled document vectors over all shards, or None."""
    if any(s.store.pooled is None for s in self.shards):
      return None
    return np.concatenate([s.store.pooled for s in self.shards])


def build_token_index(stores: Sequence[TokenStore] | TokenStore,
                      config: IndexConfig = IndexConfig()) -> TokenIndex:
  """Builds an index over the documents of `stores` (each is split per `max_shard_tokens`)."""
  if isinstance(stores, TokenStore):
    stores = [stores]
  parts = [p for s in stores
           for p in split_documents(s, config.max_shard_tokens, config.prune_doc_ratio)]
  return TokenIndex([build_shard(p, config) for p in parts], config)


# ------------------------------------------------------------------------------------------
# Export and load.


_COUNT_KEYS = ("documents", "tokens", "ann_tokens", "original_tokens", "dim", "pooled_dim")


def _shard_counts(shard: IndexShard) -> dict[str, int]:
  s = shard.store
  return {"documents": s.num_docs, "tokens": s.num_tokens, "ann_tokens": shard.num_ann_tokens,
          "original_tokens": shard.original_tokens, "dim": s.dim,
          "pooled_dim": 0 if s.pooled is None else int(s.pooled.shape[1])}


def save_shard(shard: IndexShard, directory: str | pathlib.Path,
               config: IndexConfig) -> dict[str, Any]:
  """Writes one shard atomically (see the module docstring); returns its manifest."""
  s = shard.store
  with atomic_dir(directory) as tmp:
    write_json(tmp / "doc_ids.json", s.doc_ids)
    files.save_array(tmp, "offsets.npy", s.offsets)
    files.save_array(tmp, "vectors.npy", s.vectors)
    for name in ("scales", "codebook", "salience", "token_ids", "pooled"):
      if getattr(s, name) is not None:
        files.save_array(tmp, f"{name}.npy", getattr(s, name))
    if shard.searched.masked:
      files.save_array(tmp, "ann_keep.npy", shard.searched.packed_mask())
    if s.metadata is not None:
      files.save_metadata(tmp, metadata_jsonl(s.metadata))
    shard.searcher.save(tmp)
    manifest_config = {"index": config.to_json(), "vector_dtype": s.vector_dtype,
                       "pq_unit_norm": s.unit_norm,
                       "has_salience": s.salience is not None,
                       "has_token_ids": s.token_ids is not None,
                       "has_ann_keep": shard.searched.masked,
                       "has_metadata": s.metadata is not None,
                       "backend": shard.searcher.kind,
                       "backend_settings": shard.searcher.settings()}
    if shard.source_sha256 is not None:
      manifest_config["source_sha256"] = shard.source_sha256
    manifest = files.write_manifest(tmp, kind=SHARD_KIND, version=VERSION,
                                    config=manifest_config, counts=_shard_counts(shard))
  return manifest


def save_index(index: TokenIndex, directory: str | pathlib.Path, *,
               encoder: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes every shard and `index.json` into `directory` atomically; returns index.json.
  `encoder`: the record of the model that encoded the documents (see `index_info`)."""
  directory = pathlib.Path(directory)
  with atomic_dir(directory) as tmp:
    listing = []
    for i, shard in enumerate(index.shards):
      name = shard_dir_name(i)
      save_shard(shard, tmp / name, index.config)
      listing.append(listing_entry(tmp, name))
    held = index._ivf.coarse if index._ivf is not None else None  # grouped in memory already
    coarse = coarse_level.write(tmp, listing, index.config.backend,
                                held.grouping if held is not None else None)
    info = index_info(tmp, listing, index.config, encoder=encoder, coarse=coarse)
    write_json(tmp / INDEX_JSON, info)
  return info


def shard_dir_name(position: int) -> str:
  """The directory of the index's `position`-th shard (global document order)."""
  return f"shard-{position:05d}"


def segment_dir_name(generation: int, position: int) -> str:
  """The directory of the `position`-th shard written by `generation` (add or compact)."""
  return f"shard-g{generation:06d}-{position:05d}"


def segment_generation(name: str) -> int | None:
  """The generation that wrote shard directory `name` (None for a built shard)."""
  match = _SEGMENT.fullmatch(name)
  return int(match.group(1)) if match else None


def listing_entry(directory: pathlib.Path, name: str) -> dict[str, Any]:
  """The `index.json` entry of the saved shard `directory / name`: from its manifest."""
  manifest_path = directory / name / files.MANIFEST
  counts = files.read_json(manifest_path)["counts"]
  return {"name": name, "manifest_sha256": files.sha256_file(manifest_path),
          **{key: counts[key] for key in _COUNT_KEYS}}


def index_info(directory: pathlib.Path, listing: list[dict[str, Any]], config: IndexConfig, *,
               generation: int = 0, retained: Sequence[str] = (),
               removed: Sequence[str] = (), encoder: dict[str, Any] | None = None,
               coarse: dict[str, Any] | None = None) -> dict[str, Any]:
  """`index.json`: the shard list and totals, including bytes per stored and original token;
  `generation`, `retained` (files the previous generation lists and this one does not, kept
  for its readers) and `removed` (files its writer removes once it is published): see
  `generations.py`; with `encoder` (a JSON object: which model, vocabulary and lengths
  encoded the documents, `eval.encoder_record`) also that record and its SHA-256
  (`read_encoder`), which every later generation carries over; with `coarse` the entry of
  the stored IVF coarse level (`coarse_level.write`)."""
  total_bytes = sum(files.read_json(directory / e["name"] / files.MANIFEST)["total_bytes"]
                    for e in listing)
  totals = {k: sum(e[k] for e in listing)
            for k in ("documents", "tokens", "ann_tokens", "original_tokens")}
  deleted = sum(e["tombstones"]["deleted"] for e in listing if "tombstones" in e)
  info = {"format": files.FORMAT, "kind": INDEX_KIND, "version": VERSION,
          "config": config.to_json(), "shards": listing, "counts": totals,
          "generation": int(generation), "deleted_documents": deleted,
          "retained": sorted(retained), "removed": sorted(removed), "total_bytes": total_bytes,
          "bytes_per_original_token": total_bytes / max(totals["original_tokens"], 1),
          "bytes_per_searched_token": total_bytes / max(totals["ann_tokens"], 1)}
  if coarse is not None:
    info["coarse"] = coarse
  if encoder is not None:
    info[ENCODER_KEY] = encoder
    info[ENCODER_KEY + "_sha256"] = files.json_sha256(encoder)
  return info


def read_encoder(directory: str | pathlib.Path) -> dict[str, Any] | None:
  """The encoder record of the index in `directory` (see `index_info`), its SHA-256 checked;
  None for an index built without one.

  Raises:
    IndexFileError: naming `index.json`, when it is unreadable or the record does not match
      its checksum.
  """
  path = pathlib.Path(directory) / INDEX_JSON
  info = files.read_json(path)
  if not isinstance(info, dict) or info.get(ENCODER_KEY) is None:
    return None
  record = info[ENCODER_KEY]
  if not isinstance(record, dict) or info.get(ENCODER_KEY + "_sha256") != files.json_sha256(
      record):
    raise files.IndexFileError(path, f"the {ENCODER_KEY!r} record does not match its SHA-256 "
                               "(edited or corrupted)")
  return record


def index_exists(directory: str | pathlib.Path) -> bool:
  return (pathlib.Path(directory) / INDEX_JSON).is_file()


@dataclasses.dataclass(frozen=True)
class _ShardMeta:
  """What a shard's manifest says, parsed and checked."""
  directory: pathlib.Path
  config: dict[str, Any]  # the manifest's "config"
  index_config: IndexConfig
  documents: int
  tokens: int
  ann_tokens: int
  dim: int
  pooled_dim: int
  original_tokens: int
  vector_dtype: str
  unit_norm: bool

  @property
  def manifest_path(self) -> pathlib.Path:
    return self.directory / files.MANIFEST


def _shard_meta(directory: pathlib.Path, manifest: dict[str, Any],
                expect_config: IndexConfig | None) -> _ShardMeta:
  mpath = directory / files.MANIFEST
  try:
    mc, counts = manifest["config"], manifest["counts"]
    n, t, t_ann, h = (int(counts[k]) for k in ("documents", "tokens", "ann_tokens", "dim"))
    dtype = check_vector_format(mc["vector_dtype"])
    meta = _ShardMeta(directory, mc, IndexConfig.from_json(mc["index"]), n, t, t_ann, h,
                      int(counts.get("pooled_dim", 0)), int(counts.get("original_tokens", t)),
                      dtype, unit_norm_flag(mc, dtype))
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(mpath, f"manifest config/counts are malformed ({e})") from None
  if expect_config is not None and meta.index_config != expect_config:
    raise files.IndexFileError(mpath, f"shard was built with {meta.index_config} but the index "
                               f"says {expect_config} (mismatched shard)")
  return meta


def _load_store(meta: _ShardMeta) -> TokenStore:
  """The shard's refinement store, its arrays mapped read-only after header checks."""
  directory, n, t = meta.directory, meta.documents, meta.tokens
  doc_ids = files.read_json(directory / "doc_ids.json")
  if not isinstance(doc_ids, list) or len(doc_ids) != n:
    raise files.IndexFileError(directory / "doc_ids.json", f"expected a list of {n} document "
                               f"ids as the manifest says (mismatched shard)")
  load = lambda name, dt, shape: files.load_array(directory, name, dtype=dt, shape=shape)  # noqa
  # Read, not mapped: searched at every query, and only N + 1 numbers.
  offsets = files.load_array(directory, "offsets.npy", dtype=np.int64, shape=(n + 1,),
                             mmap=False)
  if offsets[0] != 0 or offsets[-1] != t or np.any(np.diff(offsets) < 0):
    raise files.IndexFileError(directory / "offsets.npy", f"offsets must rise from 0 to the "
                               f"manifest's {t} tokens")
  vectors, scales, codebook = load_vector_arrays(directory, meta.vector_dtype, t, meta.dim)
  mc = meta.config
  salience = load("salience.npy", np.float32, (t,)) if mc.get("has_salience") else None
  token_ids = load("token_ids.npy", np.int32, (t,)) if mc.get("has_token_ids") else None
  pooled = (load("pooled.npy", np.float32, (n, meta.pooled_dim)) if meta.pooled_dim
            else None)
  metadata = files.load_metadata(directory, n) if mc.get("has_metadata") else None
  # The PQ codebook (256 · h floats) is read: every decode looks into all of it.
  return TokenStore(doc_ids, offsets, vectors, scales, salience, token_ids, pooled,
                    None if codebook is None else np.array(codebook), meta.unit_norm, metadata)


def _load_searched(meta: _ShardMeta, offsets: np.ndarray) -> SearchedRows:
  """The shard's searched rows: all of them, or those of its `ann_keep.npy` mask."""
  if not meta.config.get("has_ann_keep"):
    if meta.ann_tokens != meta.tokens:
      raise files.IndexFileError(meta.manifest_path, f"{meta.ann_tokens} searched tokens of "
                                 f"{meta.tokens} stored without a mask of the searched rows "
                                 "(ann_keep.npy)")
    return SearchedRows(offsets)
  path = meta.directory / "ann_keep.npy"
  packed = files.load_array(meta.directory, "ann_keep.npy", dtype=np.uint8,
                            shape=((meta.tokens + 7) // 8,), mmap=False)
  try:
    searched = SearchedRows(offsets, packed)
  except ValueError as e:
    raise files.IndexFileError(path, str(e)) from None
  if searched.size != meta.ann_tokens:
    raise files.IndexFileError(path, f"the mask marks {searched.size} of {meta.tokens} rows but "
                               f"the manifest says {meta.ann_tokens} are searched")
  return searched


def _backend(meta: _ShardMeta) -> str:
  backend = meta.config.get("backend")
  if backend not in BACKENDS:
    raise files.IndexFileError(meta.manifest_path, f"unknown backend {backend!r}")
  return backend


def _scann_settings(meta: _ShardMeta) -> ScannSettings:
  try:
    return ScannSettings(**meta.config["backend_settings"])
  except (KeyError, TypeError) as e:
    raise files.IndexFileError(meta.manifest_path, f"ScaNN settings are malformed ({e})") from None


def _ivf_settings(meta: _ShardMeta) -> ivf.IvfSettings:
  try:
    return ivf.IvfSettings(**meta.config["backend_settings"])
  except (KeyError, TypeError) as e:
    raise files.IndexFileError(meta.manifest_path, f"IVF settings are malformed ({e})") from None


def _load_searcher(meta: _ShardMeta, store: TokenStore,
                   searched: SearchedRows) -> ExactSearcher | ScannSearcher | ivf.IvfSearcher:
  vectors_fn = _ann_vectors_fn(store, searched)
  if _backend(meta) == "scann":
    return ScannSearcher.load(meta.directory, _scann_settings(meta), searched.size, vectors_fn)
  if _backend(meta) == "ivf":
    return ivf.IvfSearcher.load(meta.directory, _ivf_settings(meta), searched.size, meta.dim,
                                vectors_fn)
  return ExactSearcher(searched.size, vectors_fn)


def load_shard(directory: str | pathlib.Path, expect_config: IndexConfig | None = None, *,
               verify: bool = False) -> IndexShard:
  """Maps one shard's arrays after checking its files against its manifest: presence, sizes,
  counts, dtypes and shapes (from the `.npy` headers), read from no data file; `verify`
  also compares every file's SHA-256 with the manifest (reads every byte).

  Raises:
    IndexFileError: naming the file, when anything is missing, mismatched or (with
      `verify`) corrupted.
  """
  store, searched, meta = _open_rows(pathlib.Path(directory), expect_config, verify)
  searcher = _load_searcher(meta, store, searched)
  return IndexShard(store, searched, searcher, original_tokens=meta.original_tokens)


def _open_rows(directory: pathlib.Path, expect_config: IndexConfig | None,
               verify: bool) -> tuple[TokenStore, SearchedRows, _ShardMeta]:
  manifest = files.verify_dir(directory, kind=SHARD_KIND, version=VERSION, checksums=verify)
  meta = _shard_meta(directory, manifest, expect_config)
  store = _load_store(meta)
  return store, _load_searched(meta, store.offsets), meta


def open_shard_rows(directory: str | pathlib.Path, expect_config: IndexConfig | None = None
                    ) -> tuple[TokenStore, SearchedRows, int]:
  """A saved shard's refinement store (mapped), its searched rows and its original token
  count, checked as `load_shard` checks them, without loading its MIPS backend."""
  store, searched, meta = _open_rows(pathlib.Path(directory), expect_config, False)
  return store, searched, meta.original_tokens


@dataclasses.dataclass(frozen=True)
class Listing:
  """What an `index.json` says.

  Attributes:
    config: the index settings.
    shards: the shard entries in document order (name, manifest_sha256, counts, and
      "tombstones" when some of its documents are deleted).
    generation: 0 for a built index, then one more for every published change.
    retained: files (shard directories, tombstone files; relative to INDEX_DIR) that only
      the previous generation lists, kept for its readers.
    removed: files that the writer of this generation removes after publishing it (still
      present when it was killed meanwhile; the next writer removes them).
    coarse: the stored IVF coarse level (name, key, manifest_sha256; `coarse_level.py`), or
      None when the index is listed without one.
  """
  config: IndexConfig
  shards: list[dict[str, Any]]
  generation: int
  retained: tuple[str, ...] = ()
  removed: tuple[str, ...] = ()
  coarse: dict[str, Any] | None = None

  def files(self) -> set[str]:
    """Every shard directory, tombstone file and coarse level this generation lists."""
    return ({e["name"] for e in self.shards} |
            {e["tombstones"]["file"] for e in self.shards if "tombstones" in e} |
            ({self.coarse["name"]} if self.coarse is not None else set()))


def read_listing(directory: str | pathlib.Path) -> Listing:
  """INDEX_DIR's `index.json`, checked.

  Raises:
    IndexFileError: naming it, when it is missing, malformed or of another version.
  """
  info_path = pathlib.Path(directory) / INDEX_JSON
  info = files.read_json(info_path)
  if (not isinstance(info, dict) or info.get("format") != files.FORMAT or
      info.get("kind") != INDEX_KIND):
    raise files.IndexFileError(info_path, f"not an {files.FORMAT} token index listing")
  if info.get("version") != VERSION:
    raise files.IndexFileError(info_path, f"index version {info.get('version')} is not the "
                               f"supported version {VERSION}; rebuild the index")
  try:
    config = IndexConfig.from_json(info["config"])
    listing = [dict(e) for e in info["shards"]]
    generation = int(info.get("generation", 0))
    retained = tuple(str(r) for r in info.get("retained", ()))
    removed = tuple(str(r) for r in info.get("removed", ()))
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(info_path, f"malformed index listing ({e})") from None
  for entry in listing:
    if not all(isinstance(entry.get(k), str) for k in ("name", "manifest_sha256")):
      raise files.IndexFileError(info_path, f"malformed index listing: shard entry {entry} "
                                 "lacks its name or manifest_sha256")
    if "tombstones" in entry:
      tombstones.check_entry(info_path, entry["name"], entry["tombstones"])
  coarse = info.get("coarse")
  if coarse is not None:
    coarse_level.check_entry(info_path, coarse)
  return Listing(config, listing, generation, retained, removed, coarse)


def _check_listed_counts(directory: pathlib.Path, entry: dict[str, Any],
                         counts: dict[str, int]) -> None:
  for key, value in counts.items():
    if entry.get(key) != value:
      raise files.IndexFileError(directory / INDEX_JSON, f"{entry['name']}: {key} = "
                                 f"{entry.get(key)} but the shard holds {value} (mismatched "
                                 "shard)")


def _listed_generation(directory: pathlib.Path) -> int | None:
  try:
    return read_listing(directory).generation
  except files.IndexFileError:
    return None


def load_index(directory: str | pathlib.Path, *, verify: bool = False,
               search_threads: int | None = None) -> TokenIndex:
  """Loads the current generation of an index written by `save_index` (and changed by
  `generations.py`), its arrays mapped read-only (see `load_shard`; `verify` compares every
  file's SHA-256 too), its deleted documents marked in `TokenIndex.deleted`.
  `search_threads`: shards loaded, then searched, at a time (see `TokenIndex`).

  `index.json` is read once, so the index is one generation whatever writers do meanwhile.
  When a file of it disappears while loading because writers published two more generations
  and removed it, the load starts again from the newer `index.json`.

  Raises:
    IndexFileError: naming the file, when anything is missing, mismatched or (with
      `verify`) corrupted.
  """
  directory = pathlib.Path(directory)
  for attempt in range(_LOAD_ATTEMPTS):
    listing = read_listing(directory)
    try:
      return _load_listing(directory, listing, verify=verify, search_threads=search_threads)
    except files.IndexFileError:
      if attempt + 1 < _LOAD_ATTEMPTS and _listed_generation(directory) != listing.generation:
        continue
      raise
  raise AssertionError("unreachable")


def _load_listing(directory: pathlib.Path, listing: Listing, *, verify: bool,
                  search_threads: int | None) -> TokenIndex:
  entries = listing.shards

  def one(i: int) -> tuple[IndexShard, np.ndarray]:
    entry = entries[i]
    files.check_listed_manifest(directory, entry)
    shard = load_shard(directory / entry["name"], expect_config=listing.config, verify=verify)
    _check_listed_counts(directory, entry, _shard_counts(shard))
    deleted = tombstones.read(directory, entry.get("tombstones"), shard.store.num_docs,
                              verify=verify)
    return shard, deleted

  # Shards load in parallel: ScaNN spends a load building its per-leaf structures from its
  # files, with the GIL released. Results (and the first error) come in listing order.
  threads = shard_threads(len(entries), search_threads)
  with (concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="shard-load")
        if threads > 1 else contextlib.nullcontext()) as pool:
    loaded = list(shard_search.ordered_map(one, len(entries), pool, threads))
  grouping = None
  if listing.coarse is not None:
    num_cells = sum(len(shard.searcher.lists.centroids) for shard, _ in loaded
                    if shard.searcher.kind == "ivf")
    grouping = coarse_level.load(directory, listing.coarse, entries, num_cells,
                                 loaded[0][0].store.dim, verify=verify)
  return TokenIndex([shard for shard, _ in loaded], listing.config,
                    search_threads=search_threads,
                    deleted=np.concatenate([deleted for _, deleted in loaded]),
                    generation=listing.generation, coarse_grouping=grouping)


def _verify_shard(directory: pathlib.Path, entry: dict[str, Any], config: IndexConfig) -> None:
  """Every check of `load_shard(verify=True)` on one listed shard, without loading ScaNN."""
  files.check_listed_manifest(directory, entry)
  shard_dir = directory / entry["name"]
  store, searched, meta = _open_rows(shard_dir, config, True)
  if _backend(meta) == "scann":
    _scann_settings(meta)
    check_scann_files(shard_dir, searched.size)
  elif _backend(meta) == "ivf":
    ivf.load_lists(shard_dir, _ivf_settings(meta), searched.size, store.dim)
  counts = {"documents": store.num_docs, "tokens": store.num_tokens,
            "ann_tokens": searched.size, "original_tokens": meta.original_tokens,
            "dim": store.dim, "pooled_dim": meta.pooled_dim}
  _check_listed_counts(directory, entry, counts)
  tombstones.read(directory, entry.get("tombstones"), store.num_docs, verify=True)


def verify_index(directory: str | pathlib.Path) -> dict[str, str | None]:
  """Checks every file of the index in `directory` against its manifest, SHA-256 included.

  Returns:
    {shard name: None when it is sound, else the problem}, in `index.json`'s order (a shard's
    tombstones and metadata are checked with it), one for the stored coarse level when
    `index.json` lists one (`coarse_level.py`), plus an entry for each shard directory
    present but not listed, unless it is kept for readers of the previous generation, or is
    what a change killed before or after publishing left (a later generation's shard, or
    one `index.json` says its writer removes): the next writer removes those.

  Raises:
    IndexFileError: when `index.json` itself is missing or unreadable.
  """
  directory = pathlib.Path(directory)
  listing = read_listing(directory)
  report: dict[str, str | None] = {}
  for entry in listing.shards:
    try:
      _verify_shard(directory, entry, listing.config)
      report[entry["name"]] = None
    except files.IndexFileError as e:
      report[entry["name"]] = str(e)
  if listing.coarse is not None:
    name = listing.coarse["name"]
    try:
      coarse_level.load(directory, listing.coarse, listing.shards,
                        *coarse_level.listed_cells(directory, listing.shards), verify=True)
      report[name] = None
    except files.IndexFileError as e:
      report[name] = str(e)
  known = listing.files() | set(listing.retained) | set(listing.removed)
  for extra in sorted(p.name for p in directory.glob("shard-*") if p.name not in known):
    if (segment_generation(extra) or 0) > listing.generation:
      continue
    report[extra] = f"{directory / extra}: shard directory not listed in {INDEX_JSON}"
  return report
