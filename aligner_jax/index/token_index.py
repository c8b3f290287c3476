"""The token index: salience-pruned document tokens in per-shard MIPS indexes, plus the stored
vectors that refinement scores (ALIGNER §2.1, §3.2, §4.1).

Building (`build_token_index`): each input `TokenStore` (e.g. one encoding shard) is split into
shards of whole documents; each document keeps its top-β^d tokens by salience
(`prune_doc_ratio`), which are what the MIPS backend ("scann" or "exact") searches. Refinement
reads each shard's stored vectors: by default the kept tokens (`refine_tokens="kept"`, the
storage saving the paper reports), or every token (`"all"`, the paper's "full model with all
token vectors" at the cost of storage).

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
  scann/          the ScaNN files (`searcher.serialize`), for the ScaNN backend
Document numbers are global: shard s's local document i is `doc_base[s] + i`. A corpus
larger than memory is built one shard at a time from its encoded shards (`shard_tasks.py`,
`index_staging.py`), into the same files.
"""

import dataclasses
import pathlib
from typing import Any, Sequence

import numpy as np

from aligner_jax.index import files
from aligner_jax.index import pruning
from aligner_jax.index.backends import ExactSearcher
from aligner_jax.index.backends import ScannSearcher
from aligner_jax.index.backends import ScannSettings
from aligner_jax.index.backends import scann_settings
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import check_vector_format
from aligner_jax.index.token_store import content_sha256
from aligner_jax.index.token_store_io import load_vector_arrays
from aligner_jax.index.token_store_io import unit_norm_flag
from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json

SHARD_KIND = "token_index_shard"
INDEX_KIND = "token_index"
# 2: PQ vectors, no per-token document map (derived from the offsets), ann_keep bit mask.
VERSION = 2
INDEX_JSON = "index.json"
BACKENDS = ("scann", "exact")
REFINE_TOKENS = ("kept", "all")
FIELDS = ("salience", "token_ids", "pooled")
_DEQUANTIZE_BLOCK = 1 << 16  # rows converted to float32 at a time for ScaNN


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """How a token index is built. ScaNN fields left None are scaled with the shard size.

  Attributes:
    backend: "scann" (tree + AH + reorder) or "exact" (brute force over the stored vectors,
      PQ codes included).
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
      see `backends.scann_settings`.
    training_threads: ScaNN training threads (0: all cores).
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
  training_threads: int = 0

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

  def __init__(self, store: TokenStore, ann_doc: np.ndarray, ann_rows: np.ndarray | None,
               searcher: ExactSearcher | ScannSearcher, original_tokens: int,
               source_sha256: str | None = None):
    self.store = store
    self.ann_doc = np.asarray(ann_doc, np.int32)
    self.ann_rows = None if ann_rows is None else np.asarray(ann_rows, np.int64)
    self.searcher = searcher
    self.original_tokens = int(original_tokens)
    # `content_sha256` of the documents the shard was built from (None for a loaded shard);
    # recorded in the manifest so a resumed build knows a finished shard is still current.
    self.source_sha256 = source_sha256

  @property
  def num_ann_tokens(self) -> int:
    return len(self.ann_doc)

  def search(self, queries: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Local document of each of the k nearest searched tokens: ([Q, k'] int64, [Q, k'])."""
    rows, scores = self.searcher.search(queries, k, **kwargs)
    docs = np.where(rows >= 0, self.ann_doc[np.maximum(rows, 0)], -1).astype(np.int64)
    return docs, scores


def _ann_vectors_fn(store: TokenStore, ann_rows: np.ndarray | None):
  if ann_rows is None:
    return store.dequantize
  return lambda rows: store.dequantize(ann_rows[rows])


def _make_searcher(config: IndexConfig, store: TokenStore, ann_rows: np.ndarray | None,
                   size: int) -> ExactSearcher | ScannSearcher:
  vectors_fn = _ann_vectors_fn(store, ann_rows)
  if config.backend == "exact":
    return ExactSearcher(size, vectors_fn)
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


def _ann_doc(store: TokenStore, ann_rows: np.ndarray | None) -> np.ndarray:
  """[T_ann] int32 document of each searched token, from the offsets."""
  doc_of_row = np.repeat(np.arange(store.num_docs, dtype=np.int32), store.lengths)
  return doc_of_row if ann_rows is None else doc_of_row[ann_rows]


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
  ann_doc = _ann_doc(refine, ann_rows)
  searcher = _make_searcher(config, refine, ann_rows, len(ann_doc))
  return IndexShard(refine, ann_doc, ann_rows, searcher, original_tokens=store.num_tokens,
                    source_sha256=source_sha256)


def document_groups(lengths: np.ndarray, max_tokens: int | None,
                    ratio: float) -> list[tuple[int, int]]:
  """[start, stop) of consecutive groups of whole documents (stored `lengths` [N]) with at
  most `max_tokens` searched tokens each (a longer document is a group of its own)."""
  if max_tokens is None:
    return [(0, len(lengths))]
  kept = pruning.prune_budget(lengths, ratio)
  groups, start, acc = [], 0, 0
  for i, n in enumerate(kept):
    if acc and acc + n > max_tokens:
      groups.append((start, i))
      start, acc = i, 0
    acc += int(n)
  groups.append((start, len(lengths)))
  return groups


def slice_documents(store: TokenStore, start: int, stop: int) -> TokenStore:
  """Documents [start, stop) of `store` as a store of views (no copy, memory maps stay maps)."""
  lo, hi = store.offsets[start], store.offsets[stop]
  cut = lambda x: None if x is None else x[lo:hi]  # noqa: E731
  return dataclasses.replace(
      store, doc_ids=store.doc_ids[start:stop], offsets=store.offsets[start:stop + 1] - lo,
      vectors=store.vectors[lo:hi], scales=cut(store.scales), salience=cut(store.salience),
      token_ids=cut(store.token_ids),
      pooled=None if store.pooled is None else store.pooled[start:stop])


def split_documents(store: TokenStore, max_tokens: int | None,
                    ratio: float) -> list[TokenStore]:
  """Consecutive groups of whole documents with at most `max_tokens` searched tokens each."""
  if max_tokens is None:
    return [store]
  return [slice_documents(store, a, b)
          for a, b in document_groups(store.lengths, max_tokens, ratio)]


class TokenIndex:
  """All shards of an index; documents are numbered globally in shard order."""

  def __init__(self, shards: Sequence[IndexShard], config: IndexConfig):
    if not shards:
      raise ValueError("an index needs at least one shard")
    self.shards = list(shards)
    self.config = config
    self.doc_base = np.concatenate(
        [[0], np.cumsum([s.store.num_docs for s in self.shards])]).astype(np.int64)
    self.doc_ids: list[str] = sum((s.store.doc_ids for s in self.shards), [])
    self.doc_lengths = np.concatenate([s.store.lengths for s in self.shards])
    dims = {s.store.dim for s in self.shards}
    if len(dims) != 1:
      raise ValueError(f"shards disagree on the vector dimension: {sorted(dims)}")

  @property
  def num_docs(self) -> int:
    return int(self.doc_base[-1])

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

  def search_tokens(self, queries: np.ndarray, k: int,
                    **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Global document of each of the k nearest searched tokens over all shards.

    Args:
      queries: [Q, h] float32 query token vectors.
      k: K′, capped by the number of searched tokens.
      **kwargs: backend search options (ScaNN: leaves_to_search, reorder_factor).

    Returns:
      (docs [Q, k'] int64 with -1 for unfilled results, scores [Q, k'] float32), best first.
    """
    k = min(int(k), self.num_ann_tokens)
    docs, scores = [], []
    for base, shard in zip(self.doc_base, self.shards):
      d, s = shard.search(queries, k, **kwargs)
      docs.append(np.where(d >= 0, d + base, -1))
      scores.append(s)
    docs, scores = np.concatenate(docs, 1), np.concatenate(scores, 1)
    if len(self.shards) > 1 and docs.shape[1] > k:
      order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
      docs, scores = np.take_along_axis(docs, order, 1), np.take_along_axis(scores, order, 1)
    return docs, scores

  def gather_padded(self, docs: np.ndarray, length: int, *,
                    native_dtype: bool = False) -> dict[str, np.ndarray]:
    """Refinement inputs of global documents `docs` [K] (-1 = padding); see TokenStore."""
    docs = np.asarray(docs, np.int64)
    if len(self.shards) == 1:
      return self.shards[0].store.gather_padded(docs, length, native_dtype=native_dtype)
    shard_of = np.searchsorted(self.doc_base, docs, side="right") - 1
    out = None
    for s, shard in enumerate(self.shards):
      sel = (shard_of == s) & (docs >= 0)
      local = np.where(sel, docs - self.doc_base[s], -1)
      part = shard.store.gather_padded(local, length, native_dtype=native_dtype)
      if out is None:
        out = part
      else:
        for key, value in part.items():
          out[key][sel] = value[sel]  # in place: keeps the first part's aligned buffers
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
    if shard.ann_rows is not None:
      keep = np.zeros(s.num_tokens, bool)
      keep[shard.ann_rows] = True
      files.save_array(tmp, "ann_keep.npy", np.packbits(keep))
    shard.searcher.save(tmp)
    manifest_config = {"index": config.to_json(), "vector_dtype": s.vector_dtype,
                       "pq_unit_norm": s.unit_norm,
                       "has_salience": s.salience is not None,
                       "has_token_ids": s.token_ids is not None,
                       "has_ann_keep": shard.ann_rows is not None,
                       "backend": shard.searcher.kind,
                       "backend_settings": shard.searcher.settings()}
    if shard.source_sha256 is not None:
      manifest_config["source_sha256"] = shard.source_sha256
    manifest = files.write_manifest(tmp, kind=SHARD_KIND, version=VERSION,
                                    config=manifest_config, counts=_shard_counts(shard))
  return manifest


def save_index(index: TokenIndex, directory: str | pathlib.Path) -> dict[str, Any]:
  """Writes every shard and `index.json` into `directory` atomically; returns index.json."""
  directory = pathlib.Path(directory)
  with atomic_dir(directory) as tmp:
    listing = []
    for i, shard in enumerate(index.shards):
      name = shard_dir_name(i)
      save_shard(shard, tmp / name, index.config)
      listing.append(listing_entry(tmp, name))
    info = index_info(tmp, listing, index.config)
    write_json(tmp / INDEX_JSON, info)
  return info


def shard_dir_name(position: int) -> str:
  """The directory of the index's `position`-th shard (global document order)."""
  return f"shard-{position:05d}"


def listing_entry(directory: pathlib.Path, name: str) -> dict[str, Any]:
  """The `index.json` entry of the saved shard `directory / name`: from its manifest."""
  manifest_path = directory / name / files.MANIFEST
  counts = files.read_json(manifest_path)["counts"]
  return {"name": name, "manifest_sha256": files.sha256_file(manifest_path),
          **{key: counts[key] for key in _COUNT_KEYS}}


def index_info(directory: pathlib.Path, listing: list[dict[str, Any]],
               config: IndexConfig) -> dict[str, Any]:
  """`index.json`: the shard list and totals, including bytes per stored and original token."""
  total_bytes = sum(files.read_json(directory / e["name"] / files.MANIFEST)["total_bytes"]
                    for e in listing)
  totals = {k: sum(e[k] for e in listing)
            for k in ("documents", "tokens", "ann_tokens", "original_tokens")}
  return {"format": files.FORMAT, "kind": INDEX_KIND, "version": VERSION,
          "config": config.to_json(), "shards": listing, "counts": totals,
          "total_bytes": total_bytes,
          "bytes_per_original_token": total_bytes / max(totals["original_tokens"], 1),
          "bytes_per_searched_token": total_bytes / max(totals["ann_tokens"], 1)}


def index_exists(directory: str | pathlib.Path) -> bool:
  return (pathlib.Path(directory) / INDEX_JSON).is_file()


def load_shard(directory: str | pathlib.Path,
               expect_config: IndexConfig | None = None) -> IndexShard:
  """Loads one shard after verifying its files against its manifest."""
  directory = pathlib.Path(directory)
  manifest = files.verify_dir(directory, kind=SHARD_KIND, version=VERSION)
  mpath = directory / files.MANIFEST
  try:
    mc, counts = manifest["config"], manifest["counts"]
    config = IndexConfig.from_json(mc["index"])
    n, t, t_ann, h = (int(counts[k]) for k in ("documents", "tokens", "ann_tokens", "dim"))
    dtype = mc["vector_dtype"]
    check_vector_format(dtype)
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(mpath, f"manifest config/counts are malformed ({e})") from None
  if expect_config is not None and config != expect_config:
    raise files.IndexFileError(mpath, f"shard was built with {config} but the index says "
                               f"{expect_config} (mismatched shard)")
  doc_ids = files.read_json(directory / "doc_ids.json")
  if not isinstance(doc_ids, list) or len(doc_ids) != n:
    raise files.IndexFileError(directory / "doc_ids.json", f"expected a list of {n} document "
                               f"ids as the manifest says (mismatched shard)")
  load = lambda name, dt, shape: files.load_array(directory, name, dtype=dt, shape=shape)  # noqa
  offsets = load("offsets.npy", np.int64, (n + 1,))
  if offsets[0] != 0 or offsets[-1] != t or np.any(np.diff(offsets) < 0):
    raise files.IndexFileError(directory / "offsets.npy", f"offsets must rise from 0 to the "
                               f"manifest's {t} tokens")
  vectors, scales, codebook = load_vector_arrays(directory, dtype, t, h)
  salience = load("salience.npy", np.float32, (t,)) if mc.get("has_salience") else None
  token_ids = load("token_ids.npy", np.int32, (t,)) if mc.get("has_token_ids") else None
  pooled_dim = int(counts.get("pooled_dim", 0))
  pooled = load("pooled.npy", np.float32, (n, pooled_dim)) if pooled_dim else None
  ann_rows = None
  if mc.get("has_ann_keep"):
    packed = load("ann_keep.npy", np.uint8, ((t + 7) // 8,))
    bits = np.unpackbits(packed)
    if bits[t:].any() or int(bits.sum()) != t_ann:
      raise files.IndexFileError(directory / "ann_keep.npy", f"the mask marks "
                                 f"{int(bits[:t].sum())} of {t} rows (+{int(bits[t:].sum())} "
                                 f"past the end) but the manifest says {t_ann} are searched")
    ann_rows = np.flatnonzero(bits[:t]).astype(np.int64)
  elif t_ann != t:
    raise files.IndexFileError(mpath, f"{t_ann} searched tokens of {t} stored without a mask "
                               "of the searched rows (ann_keep.npy)")
  try:
    unit_norm = unit_norm_flag(mc, dtype)
  except ValueError as e:
    raise files.IndexFileError(mpath, str(e)) from None
  store = TokenStore(doc_ids, offsets, vectors, scales, salience, token_ids, pooled, codebook,
                     unit_norm)
  ann_doc = _ann_doc(store, ann_rows)
  vectors_fn = _ann_vectors_fn(store, ann_rows)
  if mc.get("backend") == "scann":
    try:
      settings = ScannSettings(**mc["backend_settings"])
    except TypeError as e:
      raise files.IndexFileError(mpath, f"ScaNN settings are malformed ({e})") from None
    searcher = ScannSearcher.load(directory, settings, t_ann, vectors_fn)
  elif mc.get("backend") == "exact":
    searcher = ExactSearcher(t_ann, vectors_fn)
  else:
    raise files.IndexFileError(mpath, f"unknown backend {mc.get('backend')!r}")
  return IndexShard(store, ann_doc, ann_rows, searcher,
                    original_tokens=int(counts.get("original_tokens", t)))


def load_index(directory: str | pathlib.Path) -> TokenIndex:
  """Loads and verifies an index written by `save_index`.

  Raises:
    IndexFileError: naming the file, when anything is missing, corrupted or inconsistent.
  """
  directory = pathlib.Path(directory)
  info_path = directory / INDEX_JSON
  info = files.read_json(info_path)
  if (not isinstance(info, dict) or info.get("format") != files.FORMAT or
      info.get("kind") != INDEX_KIND):
    raise files.IndexFileError(info_path, f"not an {files.FORMAT} token index listing")
  if info.get("version") != VERSION:
    raise files.IndexFileError(info_path, f"index version {info.get('version')} is not the "
                               f"supported version {VERSION}; rebuild the index")
  try:
    config = IndexConfig.from_json(info["config"])
    listing = list(info["shards"])
  except (KeyError, TypeError, ValueError) as e:
    raise files.IndexFileError(info_path, f"malformed index listing ({e})") from None
  shards = []
  for entry in listing:
    shard_dir = directory / entry["name"]
    manifest_path = shard_dir / files.MANIFEST
    if manifest_path.is_file() and files.sha256_file(manifest_path) != entry["manifest_sha256"]:
      raise files.IndexFileError(manifest_path, "manifest differs from the one index.json "
                                 "lists (a shard from another build was mixed in)")
    shard = load_shard(shard_dir, expect_config=config)
    for key, value in _shard_counts(shard).items():
      if entry.get(key) != value:
        raise files.IndexFileError(info_path, f"{entry['name']}: {key} = {entry.get(key)} "
                                   f"but the shard holds {value} (mismatched shard)")
    shards.append(shard)
  return TokenIndex(shards, config)
