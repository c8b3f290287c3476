"""Pallas kernel of the alignment score: S tile -> masked selection -> Σ S⊙A / Σ A, S never in HBM.

Same semantics as `fast_align.grouped_scores` (see `alignment.py`'s docstring) and the same
group layout: G independent groups, each Bq queries against C documents.

Layout of one grid step (group g, query block i, document block j):
  * `rows` = bq queries × n tokens of query block i, flattened: q [rows, h], and a weight matrix
    wq [rows, bq] that holds each row's query salience in its query's column (0 on padding), so
    per-query totals are one masked column sum;
  * tc documents of block j, visited one at a time (`fori_loop`): S_t = q · d_tᵀ [rows, m] lives
    only in VMEM / registers, the selection runs over its last axis, and each query's Σ S⊙A and
    Σ A for document t are reduced to one score written to out[t] [1, bq].
  * Every block's last two dimensions are whole array dimensions (TPU's tiling rule); documents
    and queries are padded up to multiples of the block sizes, and on GPU (Triton blocks must be
    powers of two) the token and width axes are padded to powers of two, padding masked out.

Selections, per query row of S_t (reductions over the document-token axis):
  * top-1 without document saliences: a masked max (ties need no rule: only the value counts).
  * top_k / top_p / salience-weighted top-1 / coil: `count` rounds of "take the largest entry,
    the first by index among equal ones", so ties go to the lower document index as in the
    reference; each round also adds that entry's salience-weighted value.
  * da: the exact entropic LP of `salience.py` (bisection, closed form) on the tile.
  * cls / me_bert align one query token with at most K document tokens: they stay on the XLA
    path (`fast_align`), which is a single small einsum.

The backward pass recomputes the scores with the XLA fast path (`jax.vjp` of
`fast_align.grouped_scores`, itself rematerialised per chunk), so gradients are those of the
reference selection.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from aligner_jax.scoring import dispatch
from aligner_jax.scoring import fast_align
from aligner_jax.scoring import salience as salience_lib
from aligner_jax.scoring import similarity

DOCS_PER_STEP = 8  # documents per grid step (tc)
ROWS_PER_STEP = 128  # query rows (queries × tokens) per grid step, at least one query
UNROLLED_ROUNDS = 4  # selections of up to this many entries per row are unrolled
MIN_GPU_TILE = 16  # Triton's dot needs every dimension >= 16


def _gpu() -> bool:
  return jax.default_backend() == "gpu"


def _tile(size: int) -> int:
  """An axis' padded size: itself, or on GPU the next power of two (at least MIN_GPU_TILE)."""
  if not _gpu():
    return size
  return max(MIN_GPU_TILE, 1 << (size - 1).bit_length())


def _pad(x, sizes, value=0):
  """x zero- (or `value`-) padded at the end of every axis up to `sizes`."""
  pads = [(0, size - dim) for dim, size in zip(x.shape, sizes)]
  return jnp.pad(x, pads, constant_values=value) if any(p for _, p in pads) else x


def _compiler_params():
  if jax.default_backend() == "tpu":
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
  if _gpu():
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4)
  return None


def _first_max(x, iota, width):
  """Per row of x [r, m]: (largest value [r, 1], the lowest index holding it [r, 1])."""
  top = jnp.max(x, axis=-1, keepdims=True)
  first = jnp.min(jnp.where(x == top, iota, width), axis=-1, keepdims=True)
  return top, first


def _select_rows(s, allowed, u, count, alignment, max_count):
  """Σ_j Ã_ij u_j S_ij and Σ_j Ã_ij u_j per row of one tile.

  Args:
    s: [r, m] similarities (accumulation dtype).
    allowed: [r, m] bool, entries that may be selected.
    u: [1, m] document weights (saliences, or 1 on valid tokens), or None for 1.
    count: [1, 1] int32 entries to select per row (top_k / top_p / da).
    alignment: the Alignment (static).
    max_count: static upper bound of `count`.
  Returns:
    (num, den): [r, 1] each.
  """
  if alignment.kind == "da":
    lam = salience_lib.lp_exact_primal(s, allowed, count.astype(s.dtype), alignment.eps)
    w = lam if u is None else lam * u
    return jnp.sum(w * s, axis=-1, keepdims=True), jnp.sum(w, axis=-1, keepdims=True)
  x = jnp.where(allowed, s, -jnp.inf)
  if max_count == 1 and u is None:
    top = jnp.max(x, axis=-1, keepdims=True)
    has = top > -jnp.inf
    return jnp.where(has, top, 0.0), has.astype(s.dtype)
  width = s.shape[-1]
  iota = lax.broadcasted_iota(jnp.int32, s.shape, 1)
  weight = jnp.ones((1, width), s.dtype) if u is None else u

  def take(i, carry):
    x, num, den = carry
    top, first = _first_max(x, iota, width)
    pick = (iota == first) & (top > -jnp.inf) & (i < count)
    w = jnp.where(pick, weight, 0.0)
    return (jnp.where(pick, -jnp.inf, x), num + jnp.sum(w * s, axis=-1, keepdims=True),
            den + jnp.sum(w, axis=-1, keepdims=True))

  zero = jnp.zeros((s.shape[0], 1), s.dtype)
  carry = (x, zero, zero)
  if max_count <= UNROLLED_ROUNDS:
    for i in range(max_count):
      carry = take(i, carry)
  else:
    carry = lax.fori_loop(0, max_count, take, carry)
  return carry[1], carry[2]


def _kernel(*refs, alignment, weighted, coil, max_count, docs, acc_dtype):
  """One grid step; refs as built in `_forward` (optional ones only when used)."""
  refs = list(refs)
  q_ref, wq_ref = refs.pop(0), refs.pop(0)
  qid_ref = refs.pop(0) if coil else None
  d_ref, dm_ref = refs.pop(0), refs.pop(0)
  ud_ref = refs.pop(0) if weighted else None
  did_ref = refs.pop(0) if coil else None
  cnt_ref, out_ref = refs
  q = q_ref[...]
  wq = wq_ref[...]

  def doc(t, carry):
    s = lax.dot_general(q, d_ref[t], (((1,), (1,)), ((), ())),
                        preferred_element_type=acc_dtype)  # [rows, m]
    allowed = jnp.broadcast_to(dm_ref[t] > 0, s.shape)
    if coil:
      allowed = allowed & (qid_ref[...] == did_ref[t])
    u = ud_ref[t] if weighted else None
    num, den = _select_rows(s, allowed, u, cnt_ref[t], alignment, max_count)
    num = jnp.sum(num * wq, axis=0, keepdims=True)  # [1, bq]
    den = jnp.sum(den * wq, axis=0, keepdims=True)
    ok = den > 0
    out_ref[t] = jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0).astype(out_ref.dtype)
    return carry

  lax.fori_loop(0, docs, doc, 0)


def _query_blocks(q, u_q, q_ids):
  """Queries padded and grouped into blocks of bq: q [G, nbq, rows, h'], wq [G, nbq, rows, bq],
  ids [G, nbq, rows, 1] or None; returns them with bq."""
  groups, num_q, n, h = q.shape
  n_p, h_p = _tile(n), _tile(h)
  bq = max(1, min(num_q, ROWS_PER_STEP // n_p))
  if _gpu():
    bq = 1 << (bq.bit_length() - 1)  # a power of two
  nbq = -(-num_q // bq)
  rows = bq * n_p
  q = _pad(q, (groups, nbq * bq, n_p, h_p)).reshape(groups, nbq, rows, h_p)
  u = _pad(u_q, (groups, nbq * bq, n_p)).reshape(groups, nbq, rows, 1)
  owner = jnp.arange(rows)[:, None] // n_p == jnp.arange(bq)[None, :]
  wq = jnp.where(owner, u, 0.0)
  if q_ids is not None:
    q_ids = _pad(q_ids.astype(jnp.int32), (groups, nbq * bq, n_p), -1)
    q_ids = q_ids.reshape(groups, nbq, rows, 1)
  return q, wq, q_ids, bq


def _forward(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids):
  """Scores [G, Bq, C] through the kernel (arguments as in `grouped_scores`)."""
  groups, num_q = q.shape[:2]
  num_d, m = d.shape[1:3]
  acc_dtype = similarity.score_dtype(q, d)
  common = jnp.result_type(q, d)  # one operand type for the MXU / tensor-core dot
  q, d = q.astype(common), d.astype(common)
  u_q = jnp.where(q_mask, u_q, 0.0).astype(acc_dtype)
  qb, wq, qid, bq = _query_blocks(q, u_q, q_ids)
  nbq, rows, h_p = qb.shape[1:]
  tc = min(DOCS_PER_STEP, num_d)
  if _gpu():
    tc = 1 << (tc.bit_length() - 1)
  c_p, m_p = -(-num_d // tc) * tc, _tile(m)
  coil = alignment.needs_token_ids
  weighted = u_d is not None
  count = (jnp.ones((groups, num_d), jnp.int32) if coil
           else alignment.count(jnp.sum(d_mask, axis=-1)).astype(jnp.int32))
  row_of_docs = lambda x, fill=0: _pad(x, (groups, c_p, m_p), fill)[:, :, None, :]  # noqa: E731
  operands = [qb, wq] + ([qid] if coil else [])
  operands += [_pad(d, (groups, c_p, m_p, h_p)), row_of_docs(d_mask.astype(acc_dtype))]
  if weighted:
    operands.append(row_of_docs(jnp.where(d_mask, u_d, 0.0).astype(acc_dtype)))
  if coil:
    operands.append(row_of_docs(d_ids.astype(jnp.int32), -2))
  operands.append(_pad(count, (groups, c_p))[:, :, None, None])

  query_spec = lambda width: pl.BlockSpec((None, None, rows, width),  # noqa: E731
                                          lambda g, i, j: (g, i, 0, 0))
  doc_spec = lambda shape: pl.BlockSpec((None, tc) + shape,  # noqa: E731
                                        lambda g, i, j: (g, j, 0, 0))
  in_specs = [query_spec(h_p), query_spec(bq)] + ([query_spec(1)] if coil else [])
  in_specs += [doc_spec((m_p, h_p)), doc_spec((1, m_p))]
  in_specs += [doc_spec((1, m_p))] * (int(weighted) + int(coil)) + [doc_spec((1, 1))]
  kernel = functools.partial(
      _kernel, alignment=alignment, weighted=weighted, coil=coil,
      max_count=alignment.max_count(m), docs=tc, acc_dtype=acc_dtype)
  out = pl.pallas_call(
      kernel, grid=(groups, nbq, c_p // tc), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, None, tc, 1, bq), lambda g, i, j: (g, i, j, 0, 0)),
      out_shape=jax.ShapeDtypeStruct((groups, nbq, c_p, 1, bq), acc_dtype),
      compiler_params=_compiler_params(),
      interpret=dispatch.interpret(dispatch.ALIGN_BACKENDS))(*operands)
  out = jnp.swapaxes(out[:, :, :, 0, :], 2, 3).reshape(groups, nbq * bq, c_p)
  return out[:, :num_q, :num_d]


_scores = fast_align.with_fast_gradients(_forward)


def grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment, *, q_ids=None,
                   d_ids=None) -> jax.Array:
  """`fast_align.grouped_scores` through the Pallas kernel (same arguments, no chunk size).

  Args:
    q: [G, Bq, n, h]; q_mask: [G, Bq, n] bool; u_q: [G, Bq, n] query saliences (0 on padding).
    d: [G, C, m, h]; d_mask: [G, C, m] bool; u_d: [G, C, m] (0 on padding) or None (= d_mask).
    alignment: a parsed Alignment.
    q_ids / d_ids: [G, Bq, n] / [G, C, m] int token ids (coil).
  Returns:
    [G, Bq, C] in `score_dtype(q, d)`.
  """
  if alignment.kind in ("cls", "me_bert"):
    return fast_align.grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment)
  if not alignment.needs_token_ids:
    q_ids = d_ids = None
  return _scores(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids)
