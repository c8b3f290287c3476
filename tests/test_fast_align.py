"""Tests of the fast path's selection kernels (aligner_jax/scoring/fast_align.py).

The threshold selection (count-th largest distinct value, one counting pass) must give exactly
what max-and-remove with counts gives, and fall back to it whenever a value repeats among the
selected ones; the end-to-end tie semantics are held to NumPy loops in test_alignment.py.
"""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aligner_jax.scoring import alignment as alignment_lib
from aligner_jax.scoring import fast_align

settings = hypothesis.settings(max_examples=10, deadline=None, derandomize=True)


def block(seed, x, m, r, *, ties, empty_doc=True):
  """A [x, m, r] similarity block, its [x, m] mask and [x, m] saliences (0 on padding)."""
  rng = np.random.default_rng(seed)
  if ties:
    s = rng.integers(-2, 3, (x, m, r)).astype(np.float32)
  else:
    s = rng.standard_normal((x, m, r)).astype(np.float32)
  mask = rng.random((x, m)) < 0.7
  if empty_doc:
    mask[-1] = False
  u = np.where(mask, rng.uniform(0.1, 1.0, (x, m)), 0.0).astype(np.float32)
  return s, mask, u


def numpy_topk(s, mask, count, u):
  """Σ u S and Σ u over the `count` largest allowed entries per column (ties: lower index)."""
  x, m, r = s.shape
  num, den = np.zeros((x, r)), np.zeros((x, r))
  for i in range(x):
    valid = [j for j in range(m) if mask[i, j]]
    for col in range(r):
      order = sorted(valid, key=lambda j: (-s[i, j, col], j))[:count[i]]
      num[i, col] = sum(u[i, j] * s[i, j, col] for j in order)
      den[i, col] = sum(u[i, j] for j in order)
  return num, den


_threshold = jax.jit(fast_align._topk_threshold, static_argnums=(3,))
_exact = jax.jit(fast_align._topk_exact, static_argnums=(3,))


def test_distinct_tops_match_numpy():
  s, mask, _ = block(0, 3, 9, 4, ties=True)
  x = np.where(mask[:, :, None], s, -np.inf)
  tops = jax.jit(fast_align._distinct_tops, static_argnums=1)(jnp.asarray(x), 4)
  for i in range(3):
    for col in range(4):
      want = sorted(set(x[i, :, col][mask[i]].tolist()), reverse=True)[:4]
      want += [-np.inf] * (4 - len(want))
      np.testing.assert_array_equal([float(t[i, col]) for t in tops], want)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("saliences", [False, True])
@pytest.mark.parametrize("max_count", [1, 3])
def test_threshold_matches_exact_and_numpy(ties, saliences, max_count):
  s, mask, u = block(1, 4, 11, 5, ties=ties)
  # Per document: 0 (the empty one), fewer than max_count, or max_count alignments.
  count = np.minimum(np.array([max_count, 1, max_count, max_count]), mask.sum(1))[:, None]
  u_d = jnp.asarray(u) if saliences else None
  args = (jnp.asarray(s), jnp.asarray(mask)[:, :, None], jnp.asarray(count, jnp.int32))
  got = _threshold(*args, max_count, u_d)
  want = numpy_topk(s, mask, count[:, 0], u if saliences else mask.astype(np.float32))
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-6)
  for g, e in zip(got, _exact(*args, max_count, u_d)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6)


@settings
@hypothesis.given(st.integers(1, 6), st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_candidates_mixing_tied_and_distinct_chunks(k, saliences, quantised, seed):
  # One document per chunk: documents whose tokens repeat take the exact branch, the others the
  # threshold branch, in the same call.
  rng = np.random.default_rng(seed)
  num_q, cands, n, m, h = 2, 5, 3, 8, 4
  q = rng.standard_normal((num_q, n, h)).astype(np.float32)
  d = rng.standard_normal((num_q, cands, m, h)).astype(np.float32)
  if quantised:
    d = np.round(d * 2) / 2
  d[:, ::2, 1] = d[:, ::2, 0]  # repeated tokens in every other candidate
  qm = rng.random((num_q, n)) < 0.8
  dm = rng.random((num_q, cands, m)) < 0.8
  kw = {}
  if saliences:
    kw = dict(q_salience=rng.random((num_q, n)).astype(np.float32),
              d_salience=rng.random((num_q, cands, m)).astype(np.float32))
  spec = f"top_k:{k}"
  fast = alignment_lib.align_scores_candidates(q, qm, d, dm, spec, chunk_size=1, **kw)
  dense = alignment_lib.align_scores_candidates(q, qm, d, dm, spec, method="dense", **kw)
  np.testing.assert_allclose(np.asarray(fast), np.asarray(dense), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec,saliences", [("top_k:1", True), ("top_k:3", False),
                                            ("top_k:3", True), ("top_p:0.4", True)])
def test_threshold_gradients_match_dense(spec, saliences):
  rng = np.random.default_rng(3)
  q = rng.standard_normal((2, 3, 4)).astype(np.float32)
  d = rng.standard_normal((2, 4, 7, 4)).astype(np.float32)
  qm = np.array([[True, True, False], [True, True, True]])
  dm = rng.random((2, 4, 7)) < 0.8
  ds = rng.uniform(0.1, 1.0, (2, 4, 7)).astype(np.float32)
  grads = []
  for method in ("fast", "dense"):
    def loss(q, d, ds, method=method):
      kw = dict(d_salience=ds) if saliences else {}
      return jnp.sum(jnp.sin(alignment_lib.align_scores_candidates(
          q, qm, d, dm, spec, method=method, chunk_size=2, **kw)))
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, d, ds))
  for fast, dense in zip(*grads):
    np.testing.assert_allclose(fast, dense, atol=1e-5)


@pytest.mark.parametrize("num_docs,doc_len,rows", [(1000, 256, 32), (100, 180, 32), (7, 10, 3),
                                                   (3, 512, 64)])
def test_default_chunks_are_even_and_bounded(num_docs, doc_len, rows):
  chunk = fast_align.default_chunk(num_docs, doc_len, rows)
  num_chunks = -(-num_docs // chunk)
  assert 1 <= chunk <= num_docs
  assert num_chunks * chunk - num_docs < num_chunks  # overlap below one document per chunk
  assert chunk * doc_len * rows <= max(fast_align.CHUNK_ELEMENTS, doc_len * rows)
