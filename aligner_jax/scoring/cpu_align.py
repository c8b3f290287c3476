"""The fused CPU kernel of the hard alignment scores, called through the XLA FFI.

Same semantics as `fast_align.grouped_scores` (see `alignment.py`'s docstring) and the same
group layout, for top_k / top_p with or without saliences (counts up to MAX_COUNT) on float32,
bfloat16 or float16 documents. The kernel (`native/align_cpu.cc`, compiled by `make install`)
computes each document's similarity tile in registers, keeps the count largest values per query
row while it goes, and writes one score per query and document: S is never materialised, and
padded document tokens and query rows are never computed. Queries are passed as float32 (exact
for bfloat16 / float16 inputs); products accumulate in float32.

The backward pass recomputes the scores with the XLA fast path
(`fast_align.with_fast_gradients`), so gradients are those of the reference selection.
"""

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.scoring import fast_align
from aligner_jax.scoring import native
from aligner_jax.scoring import similarity

KINDS = ("top_k", "top_p")
MAX_COUNT = 32  # the kernel keeps at most this many values per row (align_cpu.cc kMaxCount)
DOC_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def unsupported(alignment, doc_len: int, *arrays) -> str | None:
  """Why the kernel cannot compute this call (None when it can).

  Args:
    alignment: a parsed Alignment.
    doc_len: m, the documents' padded length.
    *arrays: the token vectors (q, d), for their dtypes.
  """
  if alignment.kind not in KINDS:
    return f"alignment {alignment} (the kernel computes {' and '.join(KINDS)})"
  if alignment.max_count(doc_len) > MAX_COUNT:
    return (f"alignment {alignment} on documents of {doc_len} tokens (it selects more than "
            f"{MAX_COUNT} entries per row)")
  for x in arrays:
    if not any(x.dtype == dt for dt in DOC_DTYPES):
      return f"{x.dtype} inputs (the kernel reads float32, bfloat16 and float16)"
  return None


def _forward(alignment, q, u_q, d, u_d, q_mask, d_mask, q_ids, d_ids):
  """Scores [G, Bq, C] through the kernel (arguments as in `grouped_scores`)."""
  del q_ids, d_ids  # top_k / top_p use no token ids
  max_count = alignment.max_count(d.shape[2])
  count = alignment.count(jnp.sum(d_mask, axis=-1)).astype(jnp.int32)
  weighted = u_d is not None
  u_doc = (jnp.where(d_mask, u_d, 0.0).astype(jnp.float32) if weighted
           else jnp.zeros((0,), jnp.float32))
  groups, num_q = q.shape[:2]
  num_d = d.shape[1]
  call = jax.ffi.ffi_call(native.TARGET,
                          jax.ShapeDtypeStruct((groups, num_q, num_d), jnp.float32),
                          vmap_method="broadcast_all")
  out = call(q.astype(jnp.float32), jnp.where(q_mask, u_q, 0.0).astype(jnp.float32), d,
             d_mask.astype(jnp.uint8), u_doc, count,
             max_count=np.int64(max_count), weighted=np.int32(weighted))
  return out.astype(similarity.score_dtype(q, d))


_scores = fast_align.with_fast_gradients(_forward)


def grouped_scores(q, q_mask, u_q, d, d_mask, u_d, alignment) -> jax.Array:
  """`fast_align.grouped_scores` through the CPU kernel (top_k / top_p; no chunk size).

  Args:
    q: [G, Bq, n, h]; q_mask: [G, Bq, n] bool; u_q: [G, Bq, n] query saliences (0 on padding).
    d: [G, C, m, h] float32 / bfloat16 / float16; d_mask: [G, C, m] bool; u_d: [G, C, m]
      (0 on padding) or None (= d_mask).
    alignment: a parsed top_k or top_p Alignment.
  Returns:
    [G, Bq, C] float32.
  """
  problem = unsupported(alignment, d.shape[2], q, d)
  if problem:
    raise ValueError(f"the CPU kernel does not compute {problem}")
  native.ALIGN.require()
  return _scores(alignment, q, u_q, d, u_d, q_mask, d_mask, None, None)
