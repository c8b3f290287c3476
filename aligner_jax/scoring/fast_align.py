"""The fast path of `align_scores`: chunked flat GEMMs with fused masked reductions.

Same semantics as the reference path in `alignment.py` (see its docstring); this module only
decides how the work is laid out. Work is organised in G independent groups, each a set of
queries against a set of documents: all pairs is one group, per-query candidates are one group
per query (so candidates need no `vmap`, which would turn the rare-tie `lax.cond` into a select).

  * Documents are processed in chunks (`lax.map` over `dynamic_slice`s, no copy of the inputs),
    so memory stays bounded: K = 1000 candidates of m = 256 tokens never materialise a
    [K, m, n] block. The default chunk keeps a block near `CHUNK_ELEMENTS` floats (1 MiB) in
    chunks of equal size, so a ragged end recomputes less than one document per chunk. Each
    chunk's GEMM and every pass over its block is one kernel call, so fewer, larger chunks pay
    less per-call overhead, up to a point where larger blocks stop helping (bench/README.md
    has the block sizes that were compared).
  * Inside a chunk S is one flat GEMM (chunk·m, h) @ (h, n) per group, laid out [chunk, m, n],
    and reductions run over the middle (document-token) axis; the `einsum('kmh,nh->knm')`
    layout with a last-axis reduction is several times slower. XLA's CPU backend materialises the
    input of every reduction, so the cost of a selection is the number of passes over the block.
  * top-1 is a masked max. Every other hard selection (top-1 weighted by document saliences,
    top-k and top-p for counts ≤ MAX_ITERATIVE_K) takes the count-th largest *distinct* value
    as a threshold (one masked max per selected entry, no counting) and counts the entries
    reaching it once: when that count is exact in every column of the chunk, no selected value
    repeats and the entries above the threshold are the selection. A chunk where a value repeats
    (`lax.cond`, rare with float vectors) takes the exact kernels instead: argmax + gather for
    top-1, max-and-remove with counts for top-k, with an index-ordered pick (a cumulative sum)
    only when ties cross the cut. Ties go to the lower document index; without saliences tied
    entries are interchangeable. Larger counts use `lax.top_k` on the transposed block.
  * "da" runs the exact LP (bisection, elementwise passes only) on the transposed block.
  * Each chunk is rematerialised in the backward pass (`jax.checkpoint`), so training memory is
    bounded by one chunk as well.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from aligner_jax.scoring import salience as salience_lib
from aligner_jax.scoring import similarity

CHUNK_ELEMENTS = 1 << 18  # floats per [groups·chunk, m, rows] block
MAX_ITERATIVE_K = 16  # above this many alignments per row, `lax.top_k` is cheaper


def default_chunk(num_docs: int, doc_len: int, rows: int, groups: int = 1) -> int:
  """Documents per chunk: a [groups·chunk, m, rows] block of at most ~CHUNK_ELEMENTS, in chunks
  of equal size (100 documents by 45 would compute 135; by 34, 102)."""
  most = max(1, min(num_docs, CHUNK_ELEMENTS // max(1, groups * doc_len * rows)))
  num_chunks = -(-num_docs // most)
  return -(-num_docs // num_chunks)


def _map_chunks(fn, chunk: int, total: int, arrays: dict) -> tuple:
  """fn over consecutive chunks of axis 1 (documents) of every array in `arrays` (None skipped).

  `fn` returns arrays with the chunk's documents on axis 0. Chunks are read with `dynamic_slice`
  from the whole arrays (slicing off a remainder first would copy them); a ragged end is covered
  by one last chunk that overlaps its predecessor, and each document's result is read from the
  chunk that owns it. Returns fn's outputs for all `total` documents, documents on axis 0.
  """
  present = {key: val for key, val in arrays.items() if val is not None}
  if chunk >= total:
    return fn(present)
  num_chunks = -(-total // chunk)
  starts = np.minimum(np.arange(num_chunks) * chunk, total - chunk)

  def body(start):
    return fn({key: lax.dynamic_slice_in_dim(val, start, chunk, axis=1)
               for key, val in present.items()})

  out = lax.map(body, jnp.asarray(starts, jnp.int32))
  flat = jax.tree.map(lambda x: x.reshape(num_chunks * chunk, *x.shape[2:]), out)
  if total % chunk == 0:
    return flat
  docs = np.arange(total)
  owner = np.minimum(docs // chunk, num_chunks - 1)
  rows = owner * chunk + docs - starts[owner]
  return jax.tree.map(lambda x: x[rows], flat)


def _top1(s, allowed):
  """Largest allowed entry per column of s [x, m, r]; returns (Σ S, count) per column, [x, r]."""
  top = jnp.max(jnp.where(allowed, s, -jnp.inf), axis=1)
  has = top > -jnp.inf
  return jnp.where(has, top, 0.0), has.astype(s.dtype)


def _top1_argmax(s, allowed, u_d):
  """top-1 weighted by the chosen token's salience, exact under ties; (Σ w S, Σ w) [x, r]."""
  masked = jnp.where(allowed, s, -jnp.inf)
  best = jnp.argmax(masked, axis=1)  # first maximum: ties to the lower index
  top = jnp.take_along_axis(s, best[:, None, :], axis=1)[:, 0]
  has = jnp.take_along_axis(jnp.broadcast_to(allowed, s.shape), best[:, None, :], axis=1)[:, 0]
  w = jnp.where(has, jnp.take_along_axis(u_d, best, axis=1), 0.0)
  return w * top, w


def _distinct_tops(x, max_count):
  """The `max_count` largest distinct values of every column of x [x, m, r], largest first.

  tops[i] [x, r] is the (i+1)-th largest distinct value, -inf when a column has fewer. Each is
  one masked max over the block (a select and a reduction, no counting), and its gradient goes
  to the entry holding it, as `jnp.max`'s does.
  """
  top = jnp.max(x, axis=1)
  tops = [top]
  for _ in range(max_count - 1):
    below = x < lax.stop_gradient(top)[:, None, :]
    top = jnp.max(jnp.where(below, x, -jnp.inf), axis=1)
    tops.append(top)
  return tops


def _topk_threshold(s, allowed, count, max_count, u_d):
  """The `count` largest allowed entries per column; (Σ w S, Σ w) [x, r].

  The count-th largest distinct value is a threshold: when, in every column of the block,
  exactly `count` entries reach it, no value among the top `count` repeats and those entries are
  the selection, whatever the tie rule. Otherwise (a repeated value, e.g. quantised vectors or a
  repeated token) the whole block takes the exact kernel, which implements the tie rule. Costs
  `max_count` masked maxima and one counting pass, against ~3 passes per selected entry for
  max-and-remove with counts.

  Args:
    s: [x, m, r]; allowed: bool, broadcastable to s; u_d: [x, m] or None (weight 1).
    count: [x, 1] int alignments per column, or None for top-1 (one wherever a column has an
      allowed entry; `allowed` may then differ per column, as COIL's does).
  """
  x = jnp.where(allowed, s, -jnp.inf)
  tops = _distinct_tops(x, max_count)
  if count is None:
    count_r = (tops[0] > -jnp.inf).astype(jnp.int32)
  else:
    count_r = jnp.broadcast_to(count, tops[0].shape)  # [x, r]
  kth = jnp.full(count_r.shape, jnp.inf, s.dtype)  # +inf selects nothing (count 0)
  for i, top in enumerate(tops):
    kth = jnp.where(count_r == i + 1, lax.stop_gradient(top), kth)
  chosen = lax.stop_gradient(x) >= kth[:, None, :]
  reached = jnp.sum(jnp.where(chosen, 1.0, 0.0).astype(s.dtype), axis=1)
  distinct = jnp.all(reached == count_r)

  def by_threshold(s):
    if u_d is None:  # the sum of the selected values is the sum of the top `count` tops
      num = sum(jnp.where(i < count_r, top, 0.0) for i, top in enumerate(tops))
      return num, count_r.astype(s.dtype)
    w = jnp.where(chosen, u_d[:, :, None], 0.0)
    if max_count == 1:  # Σ w S = S_max · Σ w without a third pass over the block
      den = jnp.sum(w, axis=1)
      return jnp.where(count_r > 0, tops[0], 0.0) * den, den
    return jnp.sum(w * s, axis=1), jnp.sum(w, axis=1)

  def exact(s):
    if count is None:
      return _top1_argmax(s, allowed, u_d)
    return _topk_exact(s, jnp.broadcast_to(allowed, s.shape), count, max_count, u_d)

  return lax.cond(distinct, by_threshold, exact, s)


def _topk_exact(s, allowed, count, max_count, u_d):
  """As `_topk_threshold` by max-and-remove with counts, exact under ties; (num, den) [x, r]."""
  x = jnp.where(allowed, s, -jnp.inf)
  remaining = jnp.broadcast_to(count, (s.shape[0], s.shape[2]))
  if u_d is None:
    # Without saliences only values matter: each step takes the current maximum as often as it
    # occurs (up to the remaining count); jnp.max splits the gradient among tied entries.
    num = jnp.zeros(remaining.shape, s.dtype)
    for _ in range(max_count):
      top = jnp.max(x, axis=1)
      take = jnp.minimum(jnp.sum(x == top[:, None, :], axis=1), remaining)
      num = num + jnp.where(take > 0, top, 0.0) * take
      remaining = remaining - take
      x = jnp.where(x >= top[:, None, :], -jnp.inf, x)
    return num, jnp.broadcast_to(count, num.shape).astype(s.dtype)
  # With saliences the chosen positions matter: find the count-th largest value, take what is
  # above it and the first (by index) of the entries equal to it.
  probe = lax.stop_gradient(x)
  kth = jnp.full(remaining.shape, -jnp.inf, s.dtype)
  for _ in range(max_count):
    top = jnp.max(probe, axis=1)
    kth = jnp.where(remaining > 0, top, kth)
    remaining = remaining - jnp.sum(probe == top[:, None, :], axis=1)
    probe = jnp.where(probe >= top[:, None, :], -jnp.inf, probe)
  kth = kth[:, None, :]
  above = x > kth
  tied = allowed & (x == kth)
  need = count[:, :, None] - jnp.sum(above, axis=1, keepdims=True)
  split = jnp.any(jnp.sum(tied, axis=1, keepdims=True) > need)
  chosen = lax.cond(split, lambda t: t & (jnp.cumsum(t, axis=1) <= need), lambda t: t, tied)
  w = (above | chosen).astype(s.dtype) * u_d[:, :, None]
  return jnp.sum(w * s, axis=1), jnp.sum(w, axis=1)


def _topk_sorted(s, allowed, count, max_count, u_d):
  """As `_topk_iterative` through `lax.top_k` on the transposed block (for large counts)."""
  s_rows = jnp.swapaxes(s, 1, 2)  # [x, r, m]
  masked = jnp.where(jnp.swapaxes(allowed, 1, 2), s_rows, -jnp.inf)
  _, idx = lax.top_k(lax.stop_gradient(masked), max_count)  # ties to the lower index
  vals = jnp.take_along_axis(s_rows, idx, axis=2)
  w = jnp.broadcast_to((jnp.arange(max_count) < count[:, :, None]).astype(s.dtype), vals.shape)
  if u_d is not None:
    w = w * jnp.take_along_axis(jnp.broadcast_to(u_d[:, None, :], s_rows.shape), idx, axis=2)
  return jnp.sum(w * vals, axis=2), jnp.sum(w, axis=2)


def _block_rows(s, d_mask, u_d, same_id, alignment):
  """Per query row: Σ_j Ã_ij u_j S_ij and Σ_j Ã_ij u_j for one chunk.

  Args:
    s: [x, m, r] similarities of x documents against r query rows.
    d_mask: [x, m] bool.
    u_d: [x, m] document saliences (0 on padding), or None for "1 on valid tokens".
    same_id: [x, m, r] bool token-id matches (coil), else None.
    alignment: the Alignment.
  Returns:
    (num, den): [x, r] each, in `s.dtype`.
  """
  m_valid = jnp.sum(d_mask, axis=1, keepdims=True)  # [x, 1]
  allowed = d_mask[:, :, None]
  if same_id is not None:
    allowed = allowed & same_id
  max_count = alignment.max_count(s.shape[1])
  if alignment.kind == "da":
    s_rows = jnp.swapaxes(s, 1, 2)  # [x, r, m]: the LP runs over the last axis
    count = alignment.count(m_valid)  # [x, 1], broadcast over the r rows
    lam = salience_lib.lp_exact(s_rows, d_mask[:, None, :], count, eps=alignment.eps)
    w = lam if u_d is None else lam * u_d[:, None, :]
    return jnp.sum(w * s_rows, axis=2), jnp.sum(w, axis=2)
  if max_count == 1:
    if u_d is None:
      return _top1(s, allowed)
    return _topk_threshold(s, allowed, None, 1, u_d)
  count = alignment.count(m_valid)
  if max_count <= MAX_ITERATIVE_K:
    return _topk_threshold(s, allowed, count, max_count, u_d)
  return _topk_sorted(s, jnp.broadcast_to(allowed, s.shape), count, max_count, u_d)


def _first_token_scores(q, q_mask, u_q, d, d_mask, u_d, alignment):
  """cls / me_bert: only the first query token aligns, with one of the first K document tokens.

  Shapes as in `grouped_scores`; returns [G, Bq, C].
  """
  width = 1 if alignment.kind == "cls" else min(alignment.k, d.shape[2])
  s = jnp.einsum("gbh,gckh->gbck", q[:, :, 0], d[:, :, :width],
                 preferred_element_type=similarity.score_dtype(q, d))
  valid = q_mask[:, :, 0, None, None] & d_mask[:, None, :, :width]  # [G, Bq, C, width]
  best = jnp.argmax(jnp.where(valid, s, -jnp.inf), axis=-1)[..., None]
  top = jnp.take_along_axis(s, best, axis=-1)[..., 0]
  has = jnp.take_along_axis(valid, best, axis=-1)[..., 0]
  u_doc = jnp.broadcast_to(u_d[:, None, :, :width], s.shape)
  w = jnp.where(has, u_q[:, :, 0, None] * jnp.take_along_axis(u_doc, best, axis=-1)[..., 0], 0.0)
  return similarity.safe_ratio(w * top, w)


def grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment, *, q_ids=None, d_ids=None,
                   chunk_size: int | None = None) -> jax.Array:
  """Scores of every query of a group against every document of the same group.

  Args:
    q: [G, Bq, n, h]; q_mask: [G, Bq, n] bool; u_q: [G, Bq, n] query saliences (0 on padding).
    d: [G, C, m, h]; d_mask: [G, C, m] bool; u_d: [G, C, m] (0 on padding) or None (= d_mask).
    alignment: a parsed Alignment.
    q_ids / d_ids: [G, Bq, n] / [G, C, m] int token ids (coil).
    chunk_size: documents per chunk; None picks `default_chunk`.
  Returns:
    [G, Bq, C] in `score_dtype(q, d)` (float32 unless an input is float64).
  """
  if alignment.kind in ("cls", "me_bert"):
    u_doc = d_mask.astype(u_q.dtype) if u_d is None else u_d
    return _first_token_scores(q, q_mask, u_q, d, d_mask, u_doc, alignment)
  groups, num_q, n, h = q.shape
  num_d, m = d.shape[1:3]
  rows = num_q * n
  q_flat = q.reshape(groups, rows, h)
  u_rows = u_q.reshape(groups, 1, rows)
  qid_flat = None if q_ids is None else q_ids.reshape(groups, 1, 1, rows)
  chunk = chunk_size or default_chunk(num_d, m, rows, groups)
  acc_dtype = similarity.score_dtype(q, d)

  @jax.checkpoint
  def block(xs):
    size = xs["d"].shape[1]
    s = lax.dot_general(xs["d"].reshape(groups, size * m, h), q_flat,
                        (((2,), (2,)), ((0,), (0,))), preferred_element_type=acc_dtype)
    s = s.reshape(groups * size, m, rows)
    same_id = None
    if alignment.needs_token_ids:
      same_id = (xs["ids"][..., None] == qid_flat).reshape(groups * size, m, rows)
    u = xs.get("u")
    num, den = _block_rows(s, xs["mask"].reshape(groups * size, m),
                           None if u is None else u.reshape(groups * size, m), same_id, alignment)
    # Query rows carry the query salience; the rows of one query sum to that query's totals.
    num = jnp.sum((num.reshape(groups, size, rows) * u_rows).reshape(groups, size, num_q, n), -1)
    den = jnp.sum((den.reshape(groups, size, rows) * u_rows).reshape(groups, size, num_q, n), -1)
    return jnp.swapaxes(num, 0, 1), jnp.swapaxes(den, 0, 1)  # documents first: [size, G, Bq]

  num, den = _map_chunks(block, chunk, num_d, {
      "d": d, "mask": d_mask, "u": u_d, "ids": d_ids if alignment.needs_token_ids else None})
  return jnp.transpose(similarity.safe_ratio(num, den), (1, 2, 0))


def with_fast_gradients(forward):
  """A kernel's `forward(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids)` -> [G, Bq, C]
  with the gradients of this path: the backward pass recomputes the scores with
  `grouped_scores` (rematerialised per chunk) and differentiates that, so a kernel's gradients
  are those of the reference selection. `alignment` is static; masks and ids get no gradient.
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def scores(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids):
    return forward(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids)

  def scores_fwd(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids):
    args = (q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids)
    return forward(alignment, *args), args

  def scores_bwd(alignment, args, grad):
    q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids = args

    def xla(q, u_q, d, u_d):
      return grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment, q_ids=q_ids, d_ids=d_ids)

    _, vjp = jax.vjp(xla, q, u_q, d, u_d)
    return vjp(grad) + (None, None, None, None)

  scores.defvjp(scores_fwd, scores_bwd)
  return scores
