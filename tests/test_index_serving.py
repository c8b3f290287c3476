"""Serving an index: memory-mapped shards give the in-memory results, the searched-row maps,
shards searched in parallel equal one after another, and `python -m aligner_jax.index verify`."""

import pathlib
import shutil
import subprocess
import sys

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import build_token_index
from aligner_jax.index import from_padded
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index.searched_rows import SearchedRows
from aligner_jax.index.shard_search import keep_top_k
from aligner_jax.index.shard_search import merge_results

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_store(num_docs=240, max_len=20, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(24, dim)).astype(np.float32)
  lengths = rng.integers(1, max_len + 1, num_docs)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, 24, (num_docs, max_len))] + 0.3 * rng.normal(
      size=(num_docs, max_len, dim)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  token_ids = rng.integers(0, 500, (num_docs, max_len)).astype(np.int32)
  return from_padded([f"d{i}" for i in range(num_docs)], vectors, mask, salience=salience,
                     token_ids=token_ids, pooled=vectors.mean(1))


def _memmaps(index):
  for shard in index.shards:
    s = shard.store
    for array in (s.vectors, s.scales, s.salience, s.token_ids, s.pooled):
      if array is not None:
        yield array


@pytest.mark.parametrize("config", [
    IndexConfig(backend="exact", vector_dtype="float16", max_shard_tokens=700),
    IndexConfig(backend="exact", vector_dtype="int8", prune_doc_ratio=0.5,
                refine_tokens="all", max_shard_tokens=900),
    IndexConfig(backend="exact", vector_dtype="pq:4", prune_doc_ratio=0.5, fields=("salience",),
                max_shard_tokens=900),
    IndexConfig(backend="scann", vector_dtype="float16", reorder="stored", prune_doc_ratio=0.6,
                refine_tokens="all", max_shard_tokens=1000, expected_k=100),
], ids=["float16", "int8-all", "pq", "scann-stored-all"])
def test_mapped_shards_are_read_only_and_answer_as_in_memory(tmp_path, config):
  store = make_store()
  built = build_token_index(store, config)
  save_index(built, tmp_path / "idx")
  loaded = load_index(tmp_path / "idx")
  assert len(loaded.shards) > 1
  mapped = list(_memmaps(loaded))
  assert mapped and all(isinstance(a, np.memmap) and not a.flags.writeable for a in mapped)
  with pytest.raises(ValueError, match="read-only"):
    loaded.shards[0].store.vectors[0] = 0
  q = store.dequantize(np.arange(0, store.num_tokens, 23))
  for x, y in zip(built.search_tokens(q, 60), loaded.search_tokens(q, 60)):
    np.testing.assert_array_equal(x, y)
  docs = np.array([3, -1, 150, 239, 0, 77])
  length = int(loaded.doc_lengths.max())
  for native in (False, True):
    a = built.gather_padded(docs, length, native_dtype=native)
    b = loaded.gather_padded(docs, length, native_dtype=native)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(built.shards, loaded.shards):
    np.testing.assert_array_equal(a.store.dequantize(), b.store.dequantize())
    rows = np.arange(0, b.store.num_tokens, 3)
    np.testing.assert_array_equal(a.store.select_rows(rows).dequantize(),
                                  b.store.select_rows(rows).dequantize())
  if "pooled" in config.fields:
    np.testing.assert_array_equal(built.pooled(), loaded.pooled())


@pytest.mark.parametrize("backend", ["exact", "scann"])
def test_parallel_shard_search_equals_sequential(tmp_path, backend):
  store = make_store(num_docs=400, seed=3)
  config = IndexConfig(backend=backend, vector_dtype="float16", max_shard_tokens=600,
                       expected_k=100)
  save_index(build_token_index(store, config), tmp_path / "idx")
  one_by_one = load_index(tmp_path / "idx", search_threads=1)
  threads = load_index(tmp_path / "idx", search_threads=3)
  assert len(threads.shards) > 5
  q = store.dequantize(np.arange(0, store.num_tokens, 13))
  for k in (1, 50, 400):
    a, b = one_by_one.search_tokens(q, k), threads.search_tokens(q, k)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.all(np.diff(a[1], axis=1) <= 0)  # best first
  if backend == "exact":  # and what one shard holding everything finds
    whole = build_token_index(store, IndexConfig(backend="exact", vector_dtype="float16"))
    d1, s1 = whole.search_tokens(q, 50)
    d2, s2 = threads.search_tokens(q, 50)
    # Blocks of other sizes may sum in another order in the BLAS (one float32 ulp apart).
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert np.mean(d1 == d2) >= 0.99  # equal up to the order of near-equal scores


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 5), st.integers(1, 12))
def test_merge_is_a_stable_sort_of_every_shard_cut_to_k(seed, shards, k):
  """Scores with many ties (a few distinct values): the merge keeps exactly what one stable
  sort of all shards' results keeps, in that order."""
  rng = np.random.default_rng(seed)
  parts = []
  for s in range(shards):
    width = int(rng.integers(0, k + 1))
    scores = np.sort(rng.integers(0, 4, (3, width)).astype(np.float32), axis=1)[:, ::-1]
    docs = rng.integers(0, 1000, (3, width)) + 1000 * s
    parts.append((docs, scores))
  if sum(p[0].shape[1] for p in parts) < k:
    return
  docs = np.concatenate([p[0] for p in parts], 1)
  scores = np.concatenate([p[1] for p in parts], 1)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  d, s = merge_results(iter(parts), k)
  np.testing.assert_array_equal(d, np.take_along_axis(docs, order, 1))
  np.testing.assert_array_equal(s, np.take_along_axis(scores, order, 1))


def test_keep_top_k_keeps_column_order_and_breaks_ties_by_column():
  scores = np.array([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0]], np.float32)
  docs = np.arange(6)[None]
  d, s = keep_top_k(docs, scores, 4)
  np.testing.assert_array_equal(d, [[1, 2, 3, 4]])
  np.testing.assert_array_equal(s, [[3.0, 2.0, 3.0, 2.0]])


@pytest.mark.parametrize("num_rows", [0, 1, 7, 8, 511, 512, 513, 5000, 70_001])
def test_searched_rows_match_a_table_per_token(num_rows):
  rng = np.random.default_rng(num_rows)
  cuts = np.sort(rng.integers(0, num_rows + 1, max(1, num_rows // 9)))
  offsets = np.concatenate([[0], cuts, [num_rows]]).astype(np.int64)
  doc_of_row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
  for fraction in (0.0, 0.3, 1.0):
    rows = np.flatnonzero(rng.random(num_rows) < fraction)
    searched = SearchedRows.from_rows(offsets, rows)
    every = np.arange(searched.size)
    assert searched.masked and searched.size == len(rows)
    np.testing.assert_array_equal(searched.stored_rows(every), rows)
    np.testing.assert_array_equal(searched.documents(every), doc_of_row[rows])
    np.testing.assert_array_equal(searched.rank(np.arange(num_rows + 1)),
                                  np.searchsorted(rows, np.arange(num_rows + 1)))
    keep = np.zeros(num_rows, bool)
    keep[rows] = True
    np.testing.assert_array_equal(searched.packed_mask(), np.packbits(keep))
    # Two offsets per document, a bit and a 64th of a count per row: no table per token.
    assert searched.nbytes <= 16 * len(offsets) + num_rows / 8 + num_rows / 64 + 136
  plain = SearchedRows.from_rows(offsets, None)
  assert not plain.masked and plain.size == num_rows
  np.testing.assert_array_equal(plain.documents(np.arange(num_rows)), doc_of_row)


def test_a_mask_marking_rows_past_the_end_is_refused():
  with pytest.raises(ValueError, match="past the 5 stored"):
    SearchedRows(np.array([0, 5]), np.array([0b11111100], np.uint8))
  with pytest.raises(ValueError, match="expected"):
    SearchedRows(np.array([0, 5]), np.zeros(2, np.uint8))


def _verify(index_dir):
  return subprocess.run([sys.executable, "-m", "aligner_jax.index", "verify", str(index_dir)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_verify_command_prints_each_shard_and_fails_on_a_problem(tmp_path):
  store = make_store(seed=5)
  save_index(build_token_index(store, IndexConfig(backend="exact", max_shard_tokens=800)),
             tmp_path / "idx")
  good = _verify(tmp_path / "idx")
  assert good.returncode == 0, good.stderr
  lines = good.stdout.splitlines()
  shards = sorted(p.name for p in (tmp_path / "idx").glob("shard-*"))
  assert len(shards) > 2
  assert lines == [f"{name}: OK" for name in shards] + [f"{len(shards)} of {len(shards)} "
                                                        "shards OK"]
  bad = pathlib.Path(shutil.copytree(tmp_path / "idx", tmp_path / "bad"))
  target = bad / shards[1] / "vectors.npy"
  data = bytearray(target.read_bytes())
  data[-3] ^= 0x40
  target.write_bytes(bytes(data))
  result = _verify(bad)
  assert result.returncode == 1
  lines = result.stdout.splitlines()
  assert lines[0] == f"{shards[0]}: OK"
  assert lines[1].startswith(f"{shards[1]}: PROBLEM: {target}: SHA-256")
  assert lines[-1].endswith("; 1 with a problem")
  missing = _verify(tmp_path / "nothing")
  assert missing.returncode == 2 and "not a readable index" in missing.stderr


@pytest.mark.parametrize("threads", [1, 4])
def test_shards_load_in_parallel_and_the_first_broken_one_is_named(tmp_path, threads):
  store = make_store(num_docs=400, seed=3)
  config = IndexConfig(backend="scann", vector_dtype="float16", max_shard_tokens=600,
                       expected_k=100)
  save_index(build_token_index(store, config), tmp_path / "idx")
  shards = sorted((tmp_path / "idx").glob("shard-*"))
  assert len(shards) > 4
  loaded = load_index(tmp_path / "idx", search_threads=threads)
  assert loaded.doc_ids == store.doc_ids  # shards in listing order
  for shard in (shards[3], shards[1]):
    (shard / "offsets.npy").unlink()
  with pytest.raises(IndexFileError, match="missing") as err:
    load_index(tmp_path / "idx", search_threads=threads)
  assert f"{shards[1].name}/offsets.npy" in str(err.value)
