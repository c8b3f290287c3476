"""Ragged per-document token stores: the vectors refinement scores, and how they are quantised.

A `TokenStore` holds the token vectors of N documents back to back: document i owns rows
`offsets[i]:offsets[i + 1]` of `vectors` (only valid tokens are stored, never padding). Next
to each row it may keep the token's salience and vocabulary id, and next to each document its
pooled vector (the dense path) and its metadata (a JSON object, e.g. a BEIR corpus row's
`metadata`, which filtered search reads).

Vector formats (`VECTOR_DTYPES`, what encoding writes; any of them or "pq:M" in an index):
  "float32"  exact.
  "float16"  2 bytes per dimension; the default for refinement.
  "int8"     1 byte per dimension plus one float32 scale per vector: x ≈ scale · q with
             scale = max|x| / 127, so the error per dimension is at most scale / 2.
  "pq:M"     product quantisation (`pq.py`): M bytes per vector ([T, M] uint8 codes) plus one
             codebook [M, 256, h/M] float32 per store, trained by k-means on a sample.
`dequantize` always returns float32 (PQ codes decoded to their centroids).
"""

import dataclasses
import hashlib
import json
import re
from typing import Any, Sequence

import numpy as np

from aligner_jax.index import pq

VECTOR_DTYPES = ("float32", "float16", "int8")
_PQ_FORMAT = re.compile(r"pq:([1-9][0-9]*)")
# XLA's CPU client adopts a host buffer without copying only when its data is this aligned.
_ALIGN_BYTES = 64


def aligned_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
  """A zeroed array whose data starts on a 64-byte boundary.

  `jax.device_put` on the CPU aliases such an array instead of copying it, which NumPy's own
  allocations (only 16-byte aligned) do not allow.
  """
  dtype = np.dtype(dtype)
  size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  buffer = np.zeros(size + _ALIGN_BYTES, np.uint8)
  start = -buffer.ctypes.data % _ALIGN_BYTES
  return buffer[start:start + size].view(dtype).reshape(shape)


def check_vector_dtype(dtype: str) -> str:
  """A plain storage dtype (what the encoder writes): one of `VECTOR_DTYPES`."""
  if dtype not in VECTOR_DTYPES:
    raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")
  return dtype


def pq_subspaces(fmt: str) -> int | None:
  """M of a "pq:M" format, None for the plain dtypes."""
  match = _PQ_FORMAT.fullmatch(fmt) if isinstance(fmt, str) else None
  return int(match.group(1)) if match else None


def check_vector_format(fmt: str) -> str:
  """A refinement vector format: one of `VECTOR_DTYPES` or "pq:M" (M ≥ 1)."""
  if pq_subspaces(fmt) is None and fmt not in VECTOR_DTYPES:
    raise ValueError(f"vector format must be one of {VECTOR_DTYPES} or 'pq:M' (M sub-spaces "
                     f"of 8-bit codes), got {fmt!r}")
  return fmt


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric per-vector int8 quantisation.

  Args:
    x: [T, h] float.

  Returns:
    (codes [T, h] int8, scales [T] float32) with x ≈ codes · scales[:, None].
  """
  x = np.asarray(x, np.float32)
  amax = np.max(np.abs(x), axis=-1) if x.size else np.zeros(x.shape[:-1], np.float32)
  scales = (amax / 127.0).astype(np.float32)
  # An all-zero vector keeps scale 0 and codes 0; dividing by 1 avoids 0/0.
  safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
  codes = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
  return codes, scales


def encode_vectors(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
  """Float vectors [T, h] in plain storage dtype `dtype`: (stored [T, h], scales [T] | None)."""
  check_vector_dtype(dtype)
  if dtype == "int8":
    return quantize_int8(x)
  return np.ascontiguousarray(x, dtype=np.dtype(dtype)), None


@dataclasses.dataclass
class TokenStore:
  """Token vectors of N documents, stored contiguously (see the module docstring).

  Attributes:
    doc_ids: N document ids.
    offsets: [N + 1] int64, non-decreasing, offsets[0] = 0, offsets[-1] = T.
    vectors: [T, h] float32 | float16 | int8.
    scales: [T] float32 for int8 vectors, else None.
    salience: [T] float32 token saliences u^d, or None when the model has none.
    token_ids: [T] int32 vocabulary ids (COIL's exact-match alignment needs them), or None.
    pooled: [N, h'] float32 pooled document vectors for the dense path, or None.
    codebook: [M, 256, h/M] float32 when `vectors` are [T, M] uint8 PQ codes, else None.
    unit_norm: PQ codes of unit-norm vectors: decoding rescales each decoded vector to norm 1.
      `with_vector_dtype` sets it when every encoded vector has norm 1 ± 1e-3 (L2-normalised
      encoder outputs), which removes the radial part of the quantisation error at no cost
      in bytes (bench/README.md, storage, has the effect on nDCG@10).
    metadata: N JSON objects (dicts), one per document, or None when there is none.
  """
  doc_ids: list[str]
  offsets: np.ndarray
  vectors: np.ndarray
  scales: np.ndarray | None = None
  salience: np.ndarray | None = None
  token_ids: np.ndarray | None = None
  pooled: np.ndarray | None = None
  codebook: np.ndarray | None = None
  unit_norm: bool = False
  metadata: list[dict[str, Any]] | None = None

  def __post_init__(self):
    self.offsets = np.asarray(self.offsets, np.int64)
    n, t = len(self.doc_ids), self.vectors.shape[0]
    problems = []
    if self.offsets.shape != (n + 1,):
      problems.append(f"offsets has shape {self.offsets.shape}, expected ({n + 1},)")
    elif self.offsets[0] != 0 or self.offsets[-1] != t or np.any(np.diff(self.offsets) < 0):
      problems.append(f"offsets must rise from 0 to the {t} stored tokens")
    if self.vectors.ndim != 2:
      problems.append(f"vectors must be [T, h], got shape {self.vectors.shape}")
    if self.vectors.dtype == np.int8 and (self.scales is None or self.scales.shape != (t,)):
      problems.append("int8 vectors need scales of shape [T]")
    if self.codebook is not None:
      cb = self.codebook
      if (cb.ndim != 3 or cb.shape[1] != pq.NUM_CENTROIDS or cb.dtype != np.float32 or
          self.vectors.dtype != np.uint8 or self.vectors.shape[1:] != cb.shape[:1]):
        problems.append(f"PQ codes {self.vectors.dtype}{list(self.vectors.shape)} do not fit "
                        f"the codebook {cb.dtype}{list(cb.shape)} (expected uint8 [T, M] codes "
                        f"and a float32 [M, {pq.NUM_CENTROIDS}, h/M] codebook)")
    elif self.vectors.dtype == np.uint8:
      problems.append("uint8 vectors are PQ codes and need a codebook")
    if self.unit_norm and self.codebook is None:
      problems.append("unit_norm applies to PQ codes only")
    for name in ("scales", "salience", "token_ids"):
      value = getattr(self, name)
      if value is not None and value.shape != (t,):
        problems.append(f"{name} has shape {value.shape}, expected ({t},)")
    if self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != n):
      problems.append(f"pooled has shape {self.pooled.shape}, expected ({n}, h)")
    if self.metadata is not None:
      self.metadata = list(self.metadata)
      if len(self.metadata) != n or not all(isinstance(m, dict) for m in self.metadata):
        problems.append(f"metadata must be {n} dicts, one per document, got "
                        f"{len(self.metadata)} items")
    if problems:
      raise ValueError("inconsistent TokenStore: " + "; ".join(problems))

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  @property
  def num_tokens(self) -> int:
    return int(self.vectors.shape[0])

  @property
  def dim(self) -> int:
    if self.codebook is not None:
      return int(self.codebook.shape[0] * self.codebook.shape[2])
    return int(self.vectors.shape[1])

  @property
  def vector_dtype(self) -> str:
    """The vector format: a numpy dtype name or "pq:M"."""
    if self.codebook is not None:
      return f"pq:{self.codebook.shape[0]}"
    return str(self.vectors.dtype)

  @property
  def lengths(self) -> np.ndarray:
    """[N] int64 number of stored tokens per document."""
    return np.diff(self.offsets)

  def dequantize(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """float32 vectors of `rows` (all rows when None): [len(rows), h]."""
    sel = slice(None) if rows is None else rows
    v = self.vectors[sel]
    if self.codebook is not None:
      decoded = pq.decode(v, self.codebook)
      return pq.to_unit_norm(decoded) if self.unit_norm else decoded
    if self.vectors.dtype == np.int8:
      return v.astype(np.float32) * self.scales[sel][..., None]
    return v.astype(np.float32)

  def select_documents(self, docs: np.ndarray) -> "TokenStore":
    """A store of documents `docs` [k] (sorted local numbers) with all their rows, in order."""
    docs = np.asarray(docs, np.int64)
    lengths = self.offsets[docs + 1] - self.offsets[docs]
    rows = document_rows(self.offsets, docs)
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return dataclasses.replace(
        self, doc_ids=[self.doc_ids[d] for d in docs],
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        vectors=self.vectors[rows], scales=pick(self.scales), salience=pick(self.salience),
        token_ids=pick(self.token_ids),
        pooled=None if self.pooled is None else self.pooled[docs],
        metadata=None if self.metadata is None else [self.metadata[d] for d in docs])

  def doc_of_rows(self, rows: np.ndarray) -> np.ndarray:
    """Document of each stored row `rows` [...] (int64, same shape), from the offsets."""
    return np.searchsorted(self.offsets, rows, side="right") - 1

  def select_rows(self, rows: np.ndarray) -> "TokenStore":
    """A store with only `rows` (sorted, any subset) kept; documents keep their order."""
    rows = np.asarray(rows, np.int64)
    counts = np.bincount(self.doc_of_rows(rows), minlength=self.num_docs)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return dataclasses.replace(self, doc_ids=list(self.doc_ids), offsets=offsets,
                               vectors=self.vectors[rows], scales=pick(self.scales),
                               salience=pick(self.salience), token_ids=pick(self.token_ids))

  def with_vector_dtype(self, dtype: str, *, pq_sample_size: int = 65_536,
                        pq_seed: int = 0) -> "TokenStore":
    """The same store with vectors re-encoded in format `dtype` (a no-op when already so).

    "pq:M" trains a codebook on `pq_sample_size` rows (seed `pq_seed`) of this store.
    """
    check_vector_format(dtype)
    if dtype == self.vector_dtype:
      return self
    x = self.dequantize()
    m = pq_subspaces(dtype)
    if m is not None:
      if not self.num_tokens:
        raise ValueError("cannot train a PQ codebook on a store without tokens")
      codebook = pq.train_codebook(x, m, sample_size=pq_sample_size, seed=pq_seed)
      return dataclasses.replace(self, vectors=pq.encode(x, codebook), scales=None,
                                 codebook=codebook, unit_norm=pq.all_unit_norm(x))
    vectors, scales = encode_vectors(x, dtype)
    return dataclasses.replace(self, vectors=vectors, scales=scales, codebook=None,
                               unit_norm=False)

  def padded_dtype(self, native_dtype: bool) -> np.dtype:
    """The dtype `gather_padded` gives vectors: the stored float dtype when `native_dtype`,
    else float32 (int8 and PQ vectors are always dequantised)."""
    floats = self.codebook is None and self.vectors.dtype != np.int8
    return self.vectors.dtype if native_dtype and floats else np.dtype(np.float32)

  def gather_padded(self, docs: np.ndarray, length: int, *,
                    native_dtype: bool = False) -> dict[str, np.ndarray]:
    """Documents `docs` as padded arrays for the alignment scorer.

    Args:
      docs: [K] int document rows (-1 = an empty padding candidate).
      length: m, the padded length (>= the longest selected document).
      native_dtype: keep float16 / float32 vectors in their stored dtype (a plain copy, ten
        times faster than converting float16 in NumPy; the consumer converts, e.g. inside its
        jitted scorer). int8 and PQ vectors are always dequantised to float32.

    Returns:
      {"vectors": [K, m, h] float32 (or the stored float dtype), 64-byte aligned so that
       `jax.device_put` aliases it instead of copying, "mask": [K, m] bool,
       "salience": [K, m] float32 (if any), "token_ids": [K, m] int32 (if any)}.
    """
    docs = np.asarray(docs, np.int64)
    out = padded_buffers(len(docs), length, self.dim, self.padded_dtype(native_dtype),
                         salience=self.salience is not None,
                         token_ids=self.token_ids is not None)
    self.fill_padded(out, np.arange(len(docs)), docs)
    return out

  def fill_padded(self, out: dict[str, np.ndarray], slots: np.ndarray,
                  docs: np.ndarray) -> None:
    """Writes documents `docs` [k] (-1: leave the slot empty) into slots `slots` [k] of the
    zeroed `padded_buffers` `out`; only the documents' own rows of the store are read."""
    slots, docs = np.asarray(slots, np.int64), np.asarray(docs, np.int64)
    slots, docs = slots[docs >= 0], docs[docs >= 0]
    starts, stops = self.offsets[docs], self.offsets[docs + 1]
    lens = stops - starts
    length = out["mask"].shape[1]
    if lens.size and lens.max() > length:
      raise ValueError(f"document of {lens.max()} tokens does not fit padded length {length}")
    vectors = out["vectors"]
    floats = self.codebook is None and self.vectors.dtype != np.int8
    # Float vectors: one contiguous slice per document (`copy_documents`). Decoding int8 / PQ
    # has a fixed cost per call: one call decodes every document's rows.
    which, pos = np.nonzero(np.arange(length)[None, :] < lens[:, None])
    rows = starts[which] + pos
    if floats:
      copy_documents(vectors, slots, np.zeros(len(slots), np.int64), starts, lens,
                     [self.vectors])
    elif len(rows):
      vectors[slots[which], pos] = self.dequantize(rows)
    out["mask"][slots[which], pos] = True
    for name in ("salience", "token_ids"):
      if name in out and getattr(self, name) is not None:
        out[name][slots[which], pos] = getattr(self, name)[rows]

  def doc_tokens(self, doc: int) -> slice:
    return slice(int(self.offsets[doc]), int(self.offsets[doc + 1]))


def copy_documents(out: np.ndarray, slots: np.ndarray, parts: np.ndarray, starts: np.ndarray,
                   lengths: np.ndarray, stored: Sequence[np.ndarray]) -> None:
  """out[slots[i], :lengths[i]] = stored[parts[i]][starts[i]:starts[i] + lengths[i]] for each
  document i: one contiguous slice each (documents are stored back to back), cast by the
  assignment itself — a memcpy per document, cheaper than gathering their rows one by one."""
  plain = [np.asarray(x) for x in stored]  # slicing a np.memmap builds an object per slice
  for slot, part, start, n in zip(slots.tolist(), parts.tolist(), starts.tolist(),
                                  lengths.tolist()):
    if n:
      out[slot, :n] = plain[part][start:start + n]


def document_rows(offsets: np.ndarray, docs: np.ndarray) -> np.ndarray:
  """The rows of documents `docs` [k] (in that order) of ragged `offsets` [N + 1]: [Σ len]."""
  docs = np.asarray(docs, np.int64)
  starts, lengths = offsets[docs], offsets[docs + 1] - offsets[docs]
  before = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return (np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))).astype(np.int64)


_HASH_ROWS = 1 << 16  # rows hashed per update: memory-mapped stores are read a block at a time


def content_sha256(store: TokenStore) -> str:
  """SHA-256 of everything a store holds (ids, offsets, every array's dtype, shape and bytes,
  the unit-norm flag, the metadata when there is any): the same documents give the same
  digest whether the store was loaded, memory-mapped or built in memory."""
  digest = hashlib.sha256(json.dumps(store.doc_ids).encode("utf-8"))
  digest.update(f"|unit_norm={store.unit_norm}".encode())
  if store.metadata is not None:  # absent from digests of stores without metadata
    digest.update(b"|metadata=" + metadata_jsonl(store.metadata).encode("utf-8"))
  for name in ("offsets", "vectors", "scales", "salience", "token_ids", "pooled", "codebook"):
    array = getattr(store, name)
    if array is None:
      digest.update(f"|{name}=None".encode())
      continue
    digest.update(f"|{name}={array.dtype.str}{list(array.shape)}".encode())
    for start in range(0, max(len(array), 1), _HASH_ROWS):
      digest.update(np.ascontiguousarray(array[start:start + _HASH_ROWS]).data)
  return digest.hexdigest()


def metadata_jsonl(metadata: Sequence[dict[str, Any]]) -> str:
  """Documents' metadata as JSON lines, one object per document (keys sorted)."""
  return "".join(json.dumps(m, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
                 for m in metadata)


def padded_buffers(count: int, length: int, dim: int, dtype: np.dtype, *, salience: bool,
                   token_ids: bool) -> dict[str, np.ndarray]:
  """Zeroed `gather_padded` outputs for `count` documents: vectors [count, length, dim] of
  `dtype` (64-byte aligned), mask [count, length] bool, and the optional salience float32 /
  token_ids int32 [count, length]."""
  out = {"vectors": aligned_zeros((count, length, dim), dtype),
         "mask": np.zeros((count, length), bool)}
  if salience:
    out["salience"] = np.zeros((count, length), np.float32)
  if token_ids:
    out["token_ids"] = np.zeros((count, length), np.int32)
  return out


def from_padded(doc_ids: Sequence[str], vectors: np.ndarray, mask: np.ndarray, *,
                salience: np.ndarray | None = None, token_ids: np.ndarray | None = None,
                pooled: np.ndarray | None = None, vector_dtype: str = "float32") -> TokenStore:
  """A `TokenStore` from padded encoder output, keeping only the valid tokens.

  Args:
    doc_ids: N ids.
    vectors: [N, L, h] float token vectors.
    mask: [N, L] bool, True on valid tokens.
    salience: [N, L] float saliences or None.
    token_ids: [N, L] int vocabulary ids or None.
    pooled: [N, h'] float pooled vectors or None.
    vector_dtype: storage format, one of `VECTOR_DTYPES`.
  """
  vectors = np.asarray(vectors)
  mask = np.asarray(mask, bool)
  if vectors.ndim != 3 or mask.shape != vectors.shape[:2] or len(doc_ids) != vectors.shape[0]:
    raise ValueError(f"expected vectors [N, L, h] and mask [N, L] for {len(doc_ids)} ids, got "
                     f"{vectors.shape} and {mask.shape}")
  lengths = mask.sum(axis=1)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  stored, scales = encode_vectors(vectors[mask], vector_dtype)
  return TokenStore(
      doc_ids=list(doc_ids), offsets=offsets, vectors=stored, scales=scales,
      salience=None if salience is None else np.asarray(salience, np.float32)[mask],
      token_ids=None if token_ids is None else np.asarray(token_ids, np.int32)[mask],
      pooled=None if pooled is None else np.asarray(pooled, np.float32))


def concatenate(stores: Sequence[TokenStore]) -> TokenStore:
  """Stores of disjoint document sets joined in order (all must agree on what they hold)."""
  if not stores:
    raise ValueError("concatenate needs at least one store")
  first = stores[0]
  for s in stores[1:]:
    if first.codebook is not None and (not np.array_equal(s.codebook, first.codebook) or
                                       s.unit_norm != first.unit_norm):
      raise ValueError("PQ stores with different codebooks (or unit-norm decoding) cannot be "
                       "concatenated; decode them (with_vector_dtype) first")
    if (s.vector_dtype != first.vector_dtype or s.dim != first.dim or
        (s.salience is None) != (first.salience is None) or
        (s.token_ids is None) != (first.token_ids is None) or
        (s.pooled is None) != (first.pooled is None)):
      raise ValueError("stores disagree on vector format, dimension or which fields they hold")
  cat = lambda name: (None if getattr(first, name) is None  # noqa: E731
                      else np.concatenate([getattr(s, name) for s in stores]))
  offsets = [np.zeros(1, np.int64)]
  base = 0
  for s in stores:
    offsets.append(s.offsets[1:] + base)
    base += s.num_tokens
  metadata = None
  if any(s.metadata is not None for s in stores):
    metadata = [m for s in stores for m in (s.metadata or [{}] * s.num_docs)]
  return TokenStore(sum((s.doc_ids for s in stores), []), np.concatenate(offsets),
                    cat("vectors"), cat("scales"), cat("salience"), cat("token_ids"),
                    cat("pooled"), first.codebook, first.unit_norm, metadata)
