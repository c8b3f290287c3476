"""Encoding texts into token vectors, saliences and pooled vectors for the index and retrieval.

Texts are tokenised with the model's vocabulary, framed with its special tokens and truncated
to `max_length` (`vocabulary.frame`, the reference tokenizer's behaviour). The encoder runs
under a data-parallel mesh (`Partitioner`): each batch is split over the mesh's devices.

A mesh of this process's own devices (`Partitioner(devices=jax.local_devices())`, what the
encode job uses) needs no other process: texts are encoded in order of length with each batch
padded to a multiple of `length_bucket` (short texts cost less). A mesh spanning several
processes runs in lockstep: every process contributes rows of its own texts to each global
batch and keeps its own rows of the output, and every batch is padded to `max_length`, since
all processes must run the same shapes. Outputs are in the input order either way; padding
never changes a real token's vector (attention is masked). Each text keeps the positions of the
model's output mask: its real tokens, or, for a model with a `Framing` (ColBERT's marker
tokens, query expansion, skip list; models/framing.py), what the framing keeps of them, with
the framed ids; `Encoder.output_lengths` counts them before encoding.
"""

import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import encode_vectors
from aligner_jax.models.framing import kept_lengths
from aligner_jax.retrieval.passages import Passages
from aligner_jax.retrieval.passages import document_of
from aligner_jax.retrieval.passages import split_documents
from aligner_jax.retrieval.token_retrieval import QueryBatch

# (params, input_ids [B, L] int32, mask [B, L] bool) -> Encoded-like with vectors, mask,
# salience (or None) and pooled.
EncodeFn = Callable[[Any, jax.Array, jax.Array], Any]


def tokenize(vocabulary: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
  """Ids of each text, framed with the model's special tokens and truncated to max_length."""
  if hasattr(vocabulary, "encode_batch"):
    raw = vocabulary.encode_batch(list(texts))
  else:
    raw = [list(vocabulary.encode(t)) for t in texts]
  if hasattr(vocabulary, "frame"):
    return [vocabulary.frame(list(ids), max_length) for ids in raw]
  return [list(ids)[:max_length] for ids in raw]


def token_strings(vocabulary: Any, ids: Sequence[int]) -> list[str]:
  """Display strings of token ids (WordPiece "##x" / SentencePiece "▁x" pieces kept)."""
  tok = getattr(vocabulary, "tokenizer", None)
  if tok is not None and hasattr(tok, "id_to_token"):
    return [tok.id_to_token(int(i)) or f"<{int(i)}>" for i in ids]
  if tok is not None and hasattr(tok, "id_to_piece"):
    return [tok.id_to_piece(int(i)) for i in ids]
  return [vocabulary.decode([int(i)]) for i in ids]


def make_encode_fn(module: Any, side: str) -> EncodeFn:
  """`(params, ids, mask) -> Encoded` for a `DualEncoder`'s query or document side; its
  `framing` attribute is the side's `Framing` (or None), which tells `Encoder` how many
  vectors each text keeps before it is encoded."""
  if side not in ("query", "doc"):
    raise ValueError(f"side must be 'query' or 'doc', got {side!r}")
  method = "encode_queries" if side == "query" else "encode_documents"

  def encode(params, ids, mask):
    return module.apply({"params": params}, ids, mask, method=method)

  encode.framing = module.framing(side) if hasattr(module, "framing") else None
  return encode


class Encoder:
  """Runs an `EncodeFn` over token id lists in padded, device-sharded batches."""

  def __init__(self, encode_fn: EncodeFn, params: Any, *, batch_size: int = 32,
               pad_id: int = 0, length_bucket: int = 32, partitioner: Any = None):
    from aligner_jax.partitioning import Partitioner  # pylint: disable=g-import-not-at-top
    self.partitioner = partitioner or Partitioner(1)
    here = jax.process_index()
    # A mesh of other processes' devices too means global batches run in lockstep.
    self.lockstep = any(d.process_index != here for d in self.partitioner.mesh.devices.flat)
    hosts = jax.process_count() if self.lockstep else 1
    local = max(1, self.partitioner.data_size // hosts)
    # Each process's share of a global batch must split evenly over its devices.
    self.host_batch = max(local, int(math.ceil(batch_size / hosts / local)) * local)
    self.pad_id = pad_id
    self.length_bucket = length_bucket
    with self.partitioner.context():
      self.params = jax.device_put(params, self.partitioner.replicated())
    self._fn = jax.jit(encode_fn)
    self.framing = getattr(encode_fn, "framing", None)

  def output_lengths(self, token_lists: Sequence[Sequence[int]], max_length: int
                     ) -> np.ndarray:
    """[N] int64: the vectors `encode` returns per text (its real tokens, up to max_length,
    or what the model's framing keeps of them)."""
    return kept_lengths(self.framing, token_lists, max_length)

  def _run(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray | None]:
    if self.lockstep:
      batch = self.partitioner.shard_batch({"ids": ids, "mask": mask})
    else:
      batch = {k: jax.device_put(v, self.partitioner.batch_sharding(v.ndim))
               for k, v in (("ids", ids), ("mask", mask))}
    with self.partitioner.context():
      out = self._fn(self.params, batch["ids"], batch["mask"])
    local = lambda x: None if x is None else _local_rows(x)  # noqa: E731
    return {"vectors": local(out.vectors), "mask": local(out.mask),
            "salience": local(out.salience), "pooled": local(out.pooled),
            "token_ids": local(getattr(out, "token_ids", None))}

  def encode(self, token_lists: Sequence[Sequence[int]], max_length: int,
             progress: Callable[[str], None] | None = None,
             sink: Callable[[int, dict[str, np.ndarray]], None] | None = None
             ) -> list[dict[str, np.ndarray]] | None:
    """Per text {"vectors": [l, h], "salience": [l] | None, "pooled": [h'],
    "token_ids": [l]} over the l positions the model keeps (its ≤ max_length real tokens, or
    what the model's framing makes of them: `output_lengths`), in input order; or, with `sink`,
    each text's dict is handed to `sink(position, dict)` as soon as it is encoded (nothing is
    kept, so a large corpus can be written straight into its final arrays)."""
    lengths = np.array([min(len(t), max_length) for t in token_lists], np.int64)
    multi = self.lockstep
    order = np.arange(len(token_lists)) if multi else np.argsort(-lengths, kind="stable")
    # Every process runs the same number of steps (its slice may be one row shorter).
    num_steps = math.ceil(max(1, len(token_lists)) / self.host_batch)
    if multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      num_steps = int(np.max(multihost_utils.process_allgather(np.array(num_steps))))
    results: list[dict[str, np.ndarray] | None] = [None] * len(token_lists)
    start_time = time.time()
    for step in range(num_steps):
      rows = order[step * self.host_batch:(step + 1) * self.host_batch]
      if multi or not len(rows):
        width = max_length
      else:
        longest = max(1, int(lengths[rows].max()))
        width = min(max_length, int(math.ceil(longest / self.length_bucket)) * self.length_bucket)
      ids = np.full((self.host_batch, width), self.pad_id, np.int32)
      mask = np.zeros((self.host_batch, width), bool)
      for r, row in enumerate(rows):
        t = list(token_lists[row])[:width]
        ids[r, :len(t)] = t
        mask[r, :len(t)] = True
      out = self._run(ids, mask)
      token_ids = ids if out["token_ids"] is None else out["token_ids"]
      for r, row in enumerate(rows):
        keep = out["mask"][r]
        item = {
            "vectors": out["vectors"][r][keep], "pooled": out["pooled"][r],
            "salience": None if out["salience"] is None else out["salience"][r][keep],
            "token_ids": token_ids[r][keep]}
        if sink is None:
          results[row] = {k: None if v is None else v.copy() for k, v in item.items()}
        else:
          sink(int(row), item)
      if progress is not None and ((step + 1) % 20 == 0 or step + 1 == num_steps):
        done = min((step + 1) * self.host_batch, len(token_lists))
        rate = done / max(time.time() - start_time, 1e-9)
        progress(f"encoded {done}/{len(token_lists)} texts ({rate:.1f}/s)")
    return None if sink is not None else results  # type: ignore[return-value]


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array sharded over its leading axis, in order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, parts = set(), []
  for s in shards:
    start = s.index[0].start or 0
    if start not in seen:  # replicated over the model axis: keep one copy
      seen.add(start)
      parts.append(np.asarray(s.data))
  return np.concatenate(parts)


def encode_corpus(encoder: Encoder, vocabulary: Any, doc_ids: Sequence[str],
                  texts: Sequence[str], *, max_length: int = 256,
                  vector_dtype: str = "float16", keep_token_ids: bool = True,
                  progress: Callable[[str], None] | None = None,
                  passages: Passages | None = None,
                  metadata: Sequence[dict[str, Any]] | None = None) -> TokenStore:
  """Documents -> a `TokenStore` of their real tokens (salience and pooled when present).

  Each batch is written straight into the final (quantised) arrays, so memory stays near the
  size of the store itself. With `passages`, a document longer than `max_length` is stored as
  overlapping passages `<doc id>#<k>` (passages.py) instead of being cut. `metadata`: one
  JSON object per document (a passage keeps its document's), stored when any is non-empty.
  """
  if len(doc_ids) != len(texts):
    raise ValueError(f"{len(doc_ids)} document ids but {len(texts)} texts")
  if metadata is not None and len(metadata) != len(doc_ids):
    raise ValueError(f"{len(doc_ids)} document ids but {len(metadata)} metadata objects")
  kept = list(metadata) if metadata is not None and any(metadata) else None
  if passages is None:
    token_lists = tokenize(vocabulary, texts, max_length)
  else:
    of_document = dict(zip(doc_ids, kept)) if kept is not None else None
    doc_ids, token_lists = split_documents(vocabulary, doc_ids, texts, max_length,
                                           passages.overlap)
    if of_document is not None:
      kept = [of_document[document_of(pid)[0]] for pid in doc_ids]
  lengths = encoder.output_lengths(token_lists, max_length)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  total = int(offsets[-1])
  arrays: dict[str, np.ndarray | None] = {}

  def sink(row: int, item: dict[str, np.ndarray]) -> None:
    if not arrays:  # the first item tells the widths and which fields the model has
      dim = item["vectors"].shape[-1]
      arrays["vectors"] = np.zeros((total, dim), np.dtype(vector_dtype))
      arrays["scales"] = np.zeros(total, np.float32) if vector_dtype == "int8" else None
      arrays["salience"] = (np.zeros(total, np.float32) if item["salience"] is not None
                            else None)
      arrays["token_ids"] = np.zeros(total, np.int32) if keep_token_ids else None
      arrays["pooled"] = np.zeros((len(token_lists), item["pooled"].shape[-1]), np.float32)
    sl = slice(int(offsets[row]), int(offsets[row + 1]))
    stored, scales = encode_vectors(item["vectors"], vector_dtype)
    arrays["vectors"][sl] = stored
    if scales is not None:
      arrays["scales"][sl] = scales
    if arrays["salience"] is not None:
      arrays["salience"][sl] = item["salience"]
    if arrays["token_ids"] is not None:
      arrays["token_ids"][sl] = item["token_ids"]
    arrays["pooled"][row] = item["pooled"]

  encoder.encode(token_lists, max_length, progress, sink=sink)
  if not arrays:
    raise ValueError("no documents to encode")
  return TokenStore(doc_ids=list(doc_ids), offsets=offsets, metadata=kept, **arrays)


def encode_queries(encoder: Encoder, vocabulary: Any, query_ids: Sequence[str],
                   texts: Sequence[str], *, max_length: int = 64,
                   progress: Callable[[str], None] | None = None) -> QueryBatch:
  """Queries -> a padded `QueryBatch` (length = the longest query)."""
  encoded = encoder.encode(tokenize(vocabulary, texts, max_length), max_length, progress)
  b = len(encoded)
  n = max([len(e["vectors"]) for e in encoded] + [1])
  dim = encoded[0]["vectors"].shape[-1]
  vectors = np.zeros((b, n, dim), np.float32)
  mask = np.zeros((b, n), bool)
  token_ids = np.zeros((b, n), np.int32)
  has_sal = encoded[0]["salience"] is not None
  salience = np.zeros((b, n), np.float32) if has_sal else None
  for i, e in enumerate(encoded):
    length = len(e["vectors"])
    vectors[i, :length] = e["vectors"]
    mask[i, :length] = True
    token_ids[i, :length] = e["token_ids"]
    if has_sal:
      salience[i, :length] = e["salience"]
  pooled = np.stack([e["pooled"] for e in encoded]).astype(np.float32)
  return QueryBatch(list(query_ids), vectors, mask, salience, token_ids, pooled)
