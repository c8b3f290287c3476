"""Token stores, pruning, the exact and ScaNN backends, and the token index's search."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.index import concatenate
from aligner_jax.index import from_padded
from aligner_jax.index import prune_budget
from aligner_jax.index import prune_store
from aligner_jax.index import top_salience_mask
from aligner_jax.index.backends import ExactSearcher
from aligner_jax.index.backends import pack_nibbles
from aligner_jax.index.backends import scann_settings
from aligner_jax.index.backends import unpack_nibbles
from aligner_jax.index.token_store import aligned_zeros
from aligner_jax.index.token_store import quantize_int8
from aligner_jax.scoring import prune_tokens


def clustered_tokens(num_docs, max_len, dim, *, seed=0, num_clusters=64, noise=0.5):
  """Padded token vectors drawn around shared centres (what real token vectors look like)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
  lengths = rng.integers(1, max_len + 1, num_docs)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, num_clusters, (num_docs, max_len))]
  vectors = vectors + noise * rng.normal(size=vectors.shape).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  return vectors, mask, salience


def test_from_padded_and_gather_round_trip():
  vectors, mask, salience = clustered_tokens(20, 9, 8, seed=1)
  ids = np.arange(20 * 9).reshape(20, 9).astype(np.int32)
  store = from_padded([f"d{i}" for i in range(20)], vectors, mask, salience=salience,
                      token_ids=ids, pooled=vectors[:, 0])
  assert store.num_tokens == mask.sum()
  np.testing.assert_array_equal(store.lengths, mask.sum(1))
  docs = np.array([3, -1, 0, 19])
  g = store.gather_padded(docs, 12)
  for k, d in enumerate(docs):
    if d < 0:
      assert not g["mask"][k].any()
      continue
    n = mask[d].sum()
    np.testing.assert_array_equal(g["mask"][k], np.arange(12) < n)
    np.testing.assert_array_equal(g["vectors"][k, :n], vectors[d, :n])
    np.testing.assert_array_equal(g["vectors"][k, n:], 0.0)
    np.testing.assert_array_equal(g["salience"][k, :n], salience[d, :n])
    np.testing.assert_array_equal(g["token_ids"][k, :n], ids[d, :n])
  with pytest.raises(ValueError, match="does not fit"):
    store.gather_padded(np.array([int(np.argmax(mask.sum(1)))]), 1)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8", "pq:2"])
def test_gather_native_dtype_keeps_floats_and_is_aligned(dtype):
  vectors, mask, _ = clustered_tokens(12, 7, 8, seed=2)
  store = from_padded([f"d{i}" for i in range(12)], vectors, mask).with_vector_dtype(dtype)
  docs = np.array([4, -1, 0, 11])
  plain = store.gather_padded(docs, 8)
  native = store.gather_padded(docs, 8, native_dtype=True)
  expected = dtype if dtype in ("float16", "float32") else "float32"
  assert plain["vectors"].dtype == np.float32 and native["vectors"].dtype == expected
  # The same values either way; padding and empty candidates are zero.
  np.testing.assert_array_equal(native["vectors"].astype(np.float32), plain["vectors"])
  np.testing.assert_array_equal(plain["vectors"][~plain["mask"]], 0.0)
  for k, d in enumerate(docs[docs >= 0]):
    rows = store.doc_tokens(int(d))
    n = rows.stop - rows.start
    np.testing.assert_array_equal(plain["vectors"][np.flatnonzero(docs >= 0)[k], :n],
                                  store.dequantize(rows))
  for g in (plain, native):
    assert g["vectors"].ctypes.data % 64 == 0


def test_aligned_zeros_are_adopted_by_jax_without_a_copy():
  import jax
  x = aligned_zeros((3, 5, 7), np.float32)
  assert x.ctypes.data % 64 == 0 and x.shape == (3, 5, 7) and not x.any()
  assert aligned_zeros((0, 4), np.float16).shape == (0, 4)
  device = jax.device_put(x)
  x[1, 2, 3] = 5.0  # visible through the aliased device buffer: no copy was made
  assert float(device[1, 2, 3]) == 5.0


def test_concatenate_keeps_documents_in_order():
  v, m, s = clustered_tokens(10, 5, 4, seed=2)
  a = from_padded([f"a{i}" for i in range(4)], v[:4], m[:4], salience=s[:4])
  b = from_padded([f"b{i}" for i in range(6)], v[4:], m[4:], salience=s[4:])
  both = concatenate([a, b])
  whole = from_padded([f"a{i}" for i in range(4)] + [f"b{i}" for i in range(6)], v, m,
                      salience=s)
  np.testing.assert_array_equal(both.offsets, whole.offsets)
  np.testing.assert_array_equal(both.vectors, whole.vectors)
  assert both.doc_ids == whole.doc_ids


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 16), st.integers(0, 10_000))
def test_int8_error_is_within_half_a_step(t, h, seed):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=(t, h)) * rng.uniform(0.01, 100, size=(t, 1))).astype(np.float32)
  x[0] = 0.0  # an all-zero vector stays exact
  codes, scales = quantize_int8(x)
  assert codes.dtype == np.int8 and scales.dtype == np.float32
  err = np.abs(codes.astype(np.float32) * scales[:, None] - x)
  assert np.all(err <= scales[:, None] / 2 * (1 + 1e-5) + 1e-30)
  np.testing.assert_array_equal(codes[0], 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=20),
       st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0]))
def test_prune_budget_is_the_exact_ceiling(lengths, ratio):
  from fractions import Fraction
  exact = [min(n, -(-Fraction(str(ratio)) * n // 1)) for n in lengths]
  np.testing.assert_array_equal(prune_budget(np.array(lengths), ratio), exact)
  assert prune_budget(30, 0.1) == 3 and prune_budget(10, 0.4) == 4


def _reference_kept(salience, mask, ratio):
  """Brute force: per document, the ⌈ratio·m⌉ most salient valid tokens (earlier on ties)."""
  keep = np.zeros_like(mask)
  for i in range(len(mask)):
    valid = np.flatnonzero(mask[i])
    budget = prune_budget(len(valid), ratio)
    ranked = sorted(valid, key=lambda j: (-float(salience[i, j]), j))
    keep[i, ranked[:budget]] = True
  return keep


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 10), st.sampled_from([0.1, 0.2, 0.5, 0.8, 1.0]),
       st.integers(0, 10_000), st.booleans())
def test_pruning_keeps_top_salience_tokens(num_docs, max_len, ratio, seed, ties):
  rng = np.random.default_rng(seed)
  vectors = rng.normal(size=(num_docs, max_len, 3)).astype(np.float32)
  mask = rng.random((num_docs, max_len)) < 0.8
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  if ties:
    salience = np.round(salience * 2) / 2
  want = _reference_kept(salience, mask, ratio)
  np.testing.assert_array_equal(top_salience_mask(salience, mask, ratio), want)
  store = from_padded([str(i) for i in range(num_docs)], vectors, mask, salience=salience)
  pruned = prune_store(store, ratio)
  np.testing.assert_array_equal(pruned.lengths, want.sum(1))
  np.testing.assert_array_equal(pruned.vectors, vectors[want])
  np.testing.assert_array_equal(pruned.salience, salience[want])


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 1.0])
def test_pruning_matches_the_scorers_prune_tokens(ratio):
  rng = np.random.default_rng(int(ratio * 10))
  mask = rng.random((16, 30)) < 0.8
  salience = np.round(rng.random((16, 30)) * 3) / 3  # ties included
  np.testing.assert_array_equal(top_salience_mask(salience, mask, ratio),
                                np.asarray(prune_tokens(mask, salience, ratio)))


def test_pruning_without_salience_is_refused():
  v, m, _ = clustered_tokens(3, 4, 2)
  store = from_padded(["a", "b", "c"], v, m)
  with pytest.raises(ValueError, match="needs token saliences"):
    prune_store(store, 0.5)
  assert prune_store(store, 1.0) is store


def test_exact_searcher_matches_brute_force():
  rng = np.random.default_rng(3)
  db = rng.normal(size=(1000, 16)).astype(np.float32)
  db[7] = db[8]  # a tie: the lower row comes first
  q = rng.normal(size=(5, 16)).astype(np.float32)
  q[0] = db[7]
  rows, scores = ExactSearcher(len(db), lambda r: db[r]).search(q, 50)
  full = q @ db.T
  for i in range(len(q)):
    want = np.lexsort((np.arange(len(db)), -full[i]))[:50]
    np.testing.assert_array_equal(rows[i], want)
    np.testing.assert_allclose(scores[i], full[i, want], rtol=1e-6)
  assert list(rows[0, :2]) == [7, 8]
  rows, _ = ExactSearcher(len(db), lambda r: db[r]).search(q, 5000)
  assert rows.shape == (5, 1000)  # k is capped by the number of vectors


def test_scann_settings_scale_with_size():
  small, large = scann_settings(10_000), scann_settings(1_000_000)
  assert small.num_leaves == 100 and large.num_leaves == 1000
  assert 1 <= small.leaves_to_search <= small.num_leaves
  assert large.leaves_to_search >= 0.2 * large.num_leaves
  assert scann_settings(48_000, expected_k=4000).leaves_to_search >= 0.6 * 219
  assert large.training_sample_size == 100_000 and small.training_sample_size == 10_000
  with pytest.raises(ValueError, match="reorder"):
    scann_settings(100, reorder="bogus")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 20), st.integers(1, 13), st.integers(0, 2**32 - 1))
def test_nibble_packing_round_trips_and_halves_the_bytes(rows, blocks, seed):
  codes = np.random.default_rng(seed).integers(0, 16, (rows, blocks)).astype(np.uint8)
  packed = pack_nibbles(codes)
  assert packed.shape == (rows, (blocks + 1) // 2) and packed.dtype == np.uint8
  np.testing.assert_array_equal(unpack_nibbles(packed, blocks), codes)
  # Byte j holds blocks 2j (low nibble) and 2j + 1 (high nibble).
  if rows and blocks >= 2:
    assert packed[0, 0] == codes[0, 0] + 16 * codes[0, 1]


def _recall(approx_rows, exact_rows):
  return np.mean([len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approx_rows, exact_rows)])


@pytest.mark.parametrize("reorder", ["stored", "int8"])
def test_scann_recall_against_exact_on_clustered_vectors(reorder):
  vectors, mask, salience = clustered_tokens(1500, 24, 32, seed=4)
  store = from_padded([str(i) for i in range(1500)], vectors, mask, salience=salience)
  config = IndexConfig(backend="scann", vector_dtype="float32", reorder=reorder,
                       expected_k=500)
  index = build_token_index(store, config)
  exact = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32"))
  rng = np.random.default_rng(5)
  queries = vectors[mask][rng.integers(0, store.num_tokens, 100)]
  queries = queries + 0.3 * rng.normal(size=queries.shape).astype(np.float32)
  ann_rows, ann_scores = index.shards[0].searcher.search(queries, 500)
  ex_rows, ex_scores = exact.shards[0].searcher.search(queries, 500)
  recall = _recall(ann_rows, ex_rows)
  assert recall >= 0.95, recall
  # Scores are exact inner products with the stored vectors after reordering (up to int8).
  tol = 1e-5 if reorder == "stored" else 0.02
  valid = ann_rows >= 0
  full = queries @ store.dequantize().T
  np.testing.assert_allclose(ann_scores[valid], np.take_along_axis(full, np.maximum(ann_rows, 0),
                                                                   1)[valid], atol=tol)
  # Document-level candidates through the token → document map.
  docs, _ = index.search_tokens(queries, 500)
  doc_of_row = np.repeat(np.arange(store.num_docs), store.lengths)
  np.testing.assert_array_equal(docs[valid], doc_of_row[ann_rows[valid]])


def test_pruned_index_searches_only_kept_tokens_but_refines_per_config():
  vectors, mask, salience = clustered_tokens(30, 10, 8, seed=6)
  store = from_padded([str(i) for i in range(30)], vectors, mask, salience=salience)
  kept = top_salience_mask(salience, mask, 0.3)
  for refine_tokens, stored in (("kept", kept), ("all", mask)):
    index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32",
                                                 prune_doc_ratio=0.3,
                                                 refine_tokens=refine_tokens))
    assert index.num_ann_tokens == kept.sum()
    np.testing.assert_array_equal(index.doc_lengths, stored.sum(1))
    # Searching for every kept vector finds its own document first; pruned ones are absent.
    docs, scores = index.search_tokens(vectors[kept], 1)
    np.testing.assert_array_equal(docs[:, 0], np.nonzero(kept)[0])
    ann_vectors = index.shards[0].searcher.vectors_fn(np.arange(index.num_ann_tokens))
    np.testing.assert_array_equal(ann_vectors, vectors[kept])
    assert index.num_original_tokens == mask.sum()


@pytest.mark.parametrize("with_salience", [True, False])  # per-shard path / one pass
def test_shards_merge_to_the_global_top_k(with_salience):
  vectors, mask, salience = clustered_tokens(200, 12, 16, seed=7)
  store = from_padded([str(i) for i in range(200)], vectors, mask,
                      salience=salience if with_salience else None)
  one = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32"))
  many = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float32",
                                              max_shard_tokens=300))
  assert len(many.shards) > 3
  assert many.doc_ids == one.doc_ids
  q = np.random.default_rng(8).normal(size=(20, 16)).astype(np.float32)
  d1, s1 = one.search_tokens(q, 40)
  d2, s2 = many.search_tokens(q, 40)
  np.testing.assert_allclose(s1, s2, rtol=1e-6)
  np.testing.assert_array_equal(d1, d2)
  docs = np.array([5, 150, -1, 199, 150, 0])
  for native_dtype in (False, True):
    g1 = one.gather_padded(docs, 12, native_dtype=native_dtype)
    g2 = many.gather_padded(docs, 12, native_dtype=native_dtype)
    assert set(g1) == set(g2) == {"vectors", "mask"} | ({"salience"} if with_salience else set())
    for key in g1:
      np.testing.assert_array_equal(g1[key], g2[key])
    # Each document's own tokens, zeros after them and in the padding slot.
    for slot, doc in enumerate(docs):
      n = 0 if doc < 0 else int(mask[doc].sum())
      np.testing.assert_array_equal(g2["mask"][slot], np.arange(12) < n)
      if n:
        np.testing.assert_array_equal(g2["vectors"][slot, :n], vectors[doc][mask[doc]])
      assert not g2["vectors"][slot, n:].any()
  with pytest.raises(ValueError, match="does not fit"):
    many.gather_padded(docs, 2)
