"""The fast path of `align_scores`: chunked flat GEMMs with fused masked reductions.

Same semantics as the reference path in `alignment.py` (see its docstring); this module only
decides how the work is laid out:
  * Documents are processed in chunks of `chunk` documents (`lax.map`), so memory stays bounded
    (K = 1000 candidates of m = 256 tokens never materialise a [K, m, n] block at once). The
    default chunk keeps one block near `CHUNK_ELEMENTS` floats, which also keeps it in cache.
  * Inside a chunk, S is one flat GEMM (chunk·m, h) @ (h, B·n) laid out [chunk, m, B·n], and every
    reduction runs over the middle (document-token) axis; the `einsum('kmh,nh->knm')` layout with
    a last-axis reduction measured 2-4x slower on CPU.
  * top-1 is a masked max (an argmax + gather when document saliences weight the selected token);
    top-k with small k finds the k-th largest value by repeated max-and-remove (counting ties),
    then selects with ties to the lower index; full-row `lax.top_k` is avoided. Only "da" and
    large top-p counts materialise sorted or LP-weighted blocks.
  * Each chunk is rematerialised in the backward pass (`jax.checkpoint`), so training memory is
    bounded by one chunk too.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aligner_jax.scoring import salience as salience_lib
from aligner_jax.scoring import similarity

CHUNK_ELEMENTS = 1 << 18  # floats per [chunk, m, B·n] block; ~1 MiB was fastest on CPU
MAX_ITERATIVE_K = 16  # above this many alignments per row, the k-th value comes from a sort


def default_chunk(num_docs: int, doc_len: int, rows: int) -> int:
  """Documents per chunk so that a [chunk, m, rows] block holds about CHUNK_ELEMENTS floats."""
  return max(1, min(num_docs, CHUNK_ELEMENTS // max(1, doc_len * rows)))


def _map_chunks(fn, chunk: int, arrays: dict) -> tuple:
  """fn over consecutive chunks of the leading axis of every array in `arrays` (None skipped).

  Chunks are read with `dynamic_slice` from the whole arrays (slicing off a remainder first
  would copy them); a ragged end is covered by one last chunk that overlaps its predecessor,
  and each document's result is read from the chunk that owns it.
  """
  present = {key: val for key, val in arrays.items() if val is not None}
  total = next(iter(present.values())).shape[0]
  if chunk >= total:
    return fn(present)
  num_chunks = -(-total // chunk)
  starts = np.minimum(np.arange(num_chunks) * chunk, total - chunk)

  def body(start):
    return fn({key: lax.dynamic_slice_in_dim(val, start, chunk, axis=0)
               for key, val in present.items()})

  out = lax.map(body, jnp.asarray(starts, jnp.int32))
  flat = jax.tree.map(lambda x: x.reshape(num_chunks * chunk, *x.shape[2:]), out)
  if total % chunk == 0:
    return flat
  docs = np.arange(total)
  owner = np.minimum(docs // chunk, num_chunks - 1)
  rows = owner * chunk + docs - starts[owner]
  return jax.tree.map(lambda x: x[rows], flat)


def _kth_largest(x: jax.Array, count: jax.Array, max_count: int) -> jax.Array:
  """The count-th largest entry (with multiplicity) along axis 1 of x [c, m, r]; -inf if count = 0.

  Args:
    x: [c, m, r] with -inf on excluded positions.
    count: [c, 1] int, at most the number of finite entries.
    max_count: static upper bound of `count`.
  Returns:
    [c, r].
  """
  if max_count > MAX_ITERATIVE_K:
    desc = -jnp.sort(-x, axis=1)
    picked = jnp.take_along_axis(desc, jnp.maximum(count - 1, 0)[:, :, None], axis=1)[:, 0]
    return jnp.where(count > 0, picked, -jnp.inf)
  remaining = jnp.broadcast_to(count, (x.shape[0], x.shape[2]))
  kth = jnp.full(remaining.shape, -jnp.inf, x.dtype)
  for _ in range(max_count):
    top = jnp.max(x, axis=1)
    kth = jnp.where(remaining > 0, top, kth)
    remaining = remaining - jnp.sum(x == top[:, None, :], axis=1)
    x = jnp.where(x >= top[:, None, :], -jnp.inf, x)
  return kth


def _topk_weights(s, allowed, count, max_count):
  """0/1 float weights [c, m, r] of the count largest allowed entries per column (ties → low j)."""
  x = jnp.where(allowed, s, -jnp.inf)
  kth = lax.stop_gradient(_kth_largest(lax.stop_gradient(x), count, max_count))[:, None, :]
  above = x > kth
  tied = allowed & (x == kth)
  need = count[:, :, None] - jnp.sum(above, axis=1, keepdims=True)
  tie_rank = jnp.cumsum(tied, axis=1) - tied
  return (above | (tied & (tie_rank < need))).astype(s.dtype)


def _block_rows(s, d_mask, u_d, same_id, alignment):
  """Per query row: Σ_j Ã_ij u_j S_ij and Σ_j Ã_ij u_j for one chunk.

  Args:
    s: [c, m, r] similarities of c documents against r query rows.
    d_mask: [c, m] bool.
    u_d: [c, m] float document saliences (0 on padding), or None for "1 on valid tokens".
    same_id: [c, m, r] bool token-id matches (coil), else None.
    alignment: the Alignment.
  Returns:
    (num, den): [c, r] each, in `s.dtype`.
  """
  m_valid = jnp.sum(d_mask, axis=1, keepdims=True)  # [c, 1]
  allowed = d_mask[:, :, None]
  if same_id is not None:
    allowed = allowed & same_id
  max_count = alignment.max_count(s.shape[1])
  if alignment.kind == "da":
    s_rows = jnp.swapaxes(s, 1, 2)  # [c, r, m]: the LP runs over the last axis
    count = alignment.count(m_valid)  # [c, 1], broadcast over the r rows
    lam = salience_lib.lp_exact(s_rows, d_mask[:, None, :], count, eps=alignment.eps)
    w = lam if u_d is None else lam * u_d[:, None, :]
    return jnp.sum(w * s_rows, axis=2), jnp.sum(w, axis=2)
  if max_count == 1:
    x = jnp.where(allowed, s, -jnp.inf)
    if u_d is None:
      top = jnp.max(x, axis=1)
      has = top > -jnp.inf
      return jnp.where(has, top, 0.0), has.astype(s.dtype)
    best = jnp.argmax(x, axis=1)  # first maximum: ties to the lower index
    top = jnp.take_along_axis(s, best[:, None, :], axis=1)[:, 0]
    has = jnp.take_along_axis(jnp.broadcast_to(allowed, s.shape), best[:, None, :], axis=1)[:, 0]
    w = jnp.where(has, jnp.take_along_axis(u_d, best, axis=1), 0.0)
    return w * top, w
  count = alignment.count(m_valid)
  w = _topk_weights(s, jnp.broadcast_to(allowed, s.shape), count, max_count)
  if u_d is not None:
    w = w * u_d[:, :, None]
  return jnp.sum(w * s, axis=1), jnp.sum(w, axis=1)


def _first_token_scores(q, q_mask, u_q, d, d_mask, u_d, alignment):
  """cls / me_bert: only the first query token aligns, with one of the first K document tokens."""
  width = 1 if alignment.kind == "cls" else min(alignment.k, d.shape[1])
  s = jnp.einsum("bh,ckh->bck", q[:, 0], d[:, :width],
                 preferred_element_type=similarity.score_dtype(q, d))
  valid = q_mask[:, 0, None, None] & d_mask[None, :, :width]  # [B, C, width]
  best = jnp.argmax(jnp.where(valid, s, -jnp.inf), axis=-1)[..., None]
  top = jnp.take_along_axis(s, best, axis=-1)[..., 0]
  has = jnp.take_along_axis(valid, best, axis=-1)[..., 0]
  u_doc = jnp.broadcast_to(u_d[None, :, :width], s.shape)
  w = jnp.where(has, u_q[:, 0, None] * jnp.take_along_axis(u_doc, best, axis=-1)[..., 0], 0.0)
  return similarity.safe_ratio(w * top, w)


def pairs_scores(q, q_mask, u_q, d, d_mask, u_d, alignment, *, q_ids=None, d_ids=None,
                 chunk_size: int | None = None) -> jax.Array:
  """All-pairs scores through the chunked engine.

  Args:
    q: [B, n, h]; q_mask: [B, n] bool; u_q: [B, n] float32 (0 on padding).
    d: [C, m, h]; d_mask: [C, m] bool; u_d: [C, m] float32 (0 on padding) or None (= d_mask).
    alignment: a parsed Alignment.
    q_ids / d_ids: [B, n] / [C, m] int token ids (coil).
    chunk_size: documents per chunk; None picks `default_chunk`.
  Returns:
    [B, C] in `score_dtype(q, d)` (float32 unless an input is float64).
  """
  if alignment.kind in ("cls", "me_bert"):
    u_doc = d_mask.astype(jnp.float32) if u_d is None else u_d
    return _first_token_scores(q, q_mask, u_q, d, d_mask, u_doc, alignment)
  num_q, n, h = q.shape
  num_d, m, _ = d.shape
  rows = num_q * n
  q_flat = q.reshape(rows, h)
  u_rows = u_q.reshape(rows)
  qid_flat = None if q_ids is None else q_ids.reshape(rows)
  chunk = chunk_size or default_chunk(num_d, m, rows)
  acc_dtype = similarity.score_dtype(q, d)

  @jax.checkpoint
  def block(xs):
    dc = xs["d"]
    size = dc.shape[0]
    s = lax.dot_general(dc.reshape(size * m, h), q_flat, (((1,), (1,)), ((), ())),
                        preferred_element_type=acc_dtype).reshape(size, m, rows)
    same_id = None
    if alignment.needs_token_ids:
      same_id = xs["ids"][:, :, None] == qid_flat[None, None, :]
    num, den = _block_rows(s, xs["mask"], xs.get("u"), same_id, alignment)
    # Query rows carry the query salience; rows of one query sum to that query's totals.
    num = jnp.sum((num * u_rows).reshape(size, num_q, n), axis=-1)
    den = jnp.sum((den * u_rows).reshape(size, num_q, n), axis=-1)
    return num, den

  num, den = _map_chunks(block, chunk, {"d": d, "mask": d_mask, "u": u_d,
                                        "ids": d_ids if alignment.needs_token_ids else None})
  return similarity.safe_ratio(num, den).T
