"""Product-quantised refinement vectors ("pq:M") and the compact index layout: codes against a
brute-force nearest-centroid reference, index round trips, refusal of corrupted PQ shards."""

import dataclasses
import json
import pathlib
import shutil

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import build_token_index
from aligner_jax.index import concatenate
from aligner_jax.index import from_padded
from aligner_jax.index import load_index
from aligner_jax.index import pq
from aligner_jax.index import save_index
from aligner_jax.index.token_index import load_shard
from aligner_jax.index.token_index import verify_index
from aligner_jax.index.token_store import check_vector_format
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.io import write_json


def clustered_store(num_docs=120, max_len=12, dim=16, *, seed=0, num_clusters=40):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_clusters, dim)).astype(np.float32)
  lengths = rng.integers(1, max_len + 1, num_docs)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, num_clusters, (num_docs, max_len))]
  vectors = vectors + 0.3 * rng.normal(size=vectors.shape).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
  return from_padded([f"doc-{i}" for i in range(num_docs)], vectors, mask,
                     salience=rng.random(mask.shape).astype(np.float32),
                     token_ids=rng.integers(0, 500, mask.shape).astype(np.int32),
                     pooled=vectors.mean(1))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.sampled_from([(8, 1), (8, 2), (8, 8), (12, 3), (6, 6)]),
       st.integers(0, 10_000))
def test_codes_are_the_brute_force_nearest_centroids(t, shape, seed):
  h, m = shape
  rng = np.random.default_rng(seed)
  codebook = rng.normal(size=(m, pq.NUM_CENTROIDS, h // m)).astype(np.float32)
  x = rng.normal(size=(t, h)).astype(np.float32)
  codes = pq.encode(x, codebook)
  assert codes.dtype == np.uint8 and codes.shape == (t, m)
  sub = x.reshape(t, m, h // m)
  dist = ((sub[:, :, None, :] - codebook[None]) ** 2).sum(-1)  # [t, m, 256]
  picked = np.take_along_axis(dist, codes[..., None].astype(np.int64), 2)[..., 0]
  np.testing.assert_allclose(picked, dist.min(-1), rtol=1e-5, atol=1e-5)
  decoded = pq.decode(codes, codebook)
  want = np.concatenate([codebook[j, codes[:, j]] for j in range(m)], axis=1)
  np.testing.assert_array_equal(decoded, want)
  # Inner products with decoded vectors are the per-sub-space sums (asymmetric distances).
  q = rng.normal(size=h).astype(np.float32)
  adc = sum(codebook[j, codes[:, j]] @ q[j * (h // m):(j + 1) * (h // m)] for j in range(m))
  np.testing.assert_allclose(decoded @ q, adc, rtol=1e-4, atol=1e-4)


def test_training_is_exact_with_few_distinct_points_and_improves_with_more_subspaces():
  rng = np.random.default_rng(0)
  few = np.repeat(rng.normal(size=(50, 8)).astype(np.float32), 3, axis=0)
  codebook = pq.train_codebook(few, 2)
  np.testing.assert_array_equal(pq.decode(pq.encode(few, codebook), codebook), few)
  x = clustered_store(num_docs=100, dim=16).dequantize()
  errors = []
  for m in (1, 2, 4):
    cb = pq.train_codebook(x, m, seed=1)
    errors.append(float(np.mean(np.sum((pq.decode(pq.encode(x, cb), cb) - x) ** 2, 1))))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # Determinism: the same seed gives the same codebook.
  np.testing.assert_array_equal(pq.train_codebook(x, 4, seed=3), pq.train_codebook(x, 4, seed=3))


def test_bad_formats_are_refused():
  for bad in ("pq:0", "pq:x", "pq", "int4", "pq:-2"):
    with pytest.raises(ValueError, match="vector format"):
      check_vector_format(bad)
  with pytest.raises(ValueError, match="divides the vector dimension 16"):
    clustered_store().with_vector_dtype("pq:5")
  with pytest.raises(ValueError, match="index fields"):
    IndexConfig(fields=("salience", "nope"))


def test_pq_store_decodes_selects_gathers_and_round_trips(tmp_path):
  store = clustered_store()
  coded = store.with_vector_dtype("pq:8")
  assert coded.vector_dtype == "pq:8" and coded.dim == 16 and coded.vectors.shape == (
      store.num_tokens, 8)
  x, y = store.dequantize(), coded.dequantize()
  cos = np.sum(x * y, 1) / np.linalg.norm(y, axis=1)
  assert np.mean(cos) > 0.9
  rows = np.arange(0, store.num_tokens, 3)
  part = coded.select_rows(rows)
  np.testing.assert_array_equal(part.dequantize(), y[rows])
  g = coded.gather_padded(np.array([2, -1]), 12)
  n = int(store.lengths[2])
  np.testing.assert_array_equal(g["vectors"][0, :n], y[coded.doc_tokens(2)])
  assert g["vectors"].shape == (2, 12, 16)
  save_token_store(coded, tmp_path / "store")
  back = load_token_store(tmp_path / "store")
  assert back.vector_dtype == "pq:8"
  np.testing.assert_array_equal(back.vectors, coded.vectors)
  np.testing.assert_array_equal(back.codebook, coded.codebook)
  other = store.with_vector_dtype("pq:8", pq_seed=5)
  with pytest.raises(ValueError, match="different codebooks"):
    concatenate([coded, other])
  np.testing.assert_array_equal(concatenate([coded, coded]).codebook, coded.codebook)


def test_exact_search_over_pq_codes_is_brute_force_over_decoded_vectors():
  store = clustered_store(seed=3)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="pq:4",
                                               prune_doc_ratio=0.5, fields=()))
  shard = index.shards[0]
  decoded = shard.store.dequantize()
  q = store.dequantize(np.arange(0, store.num_tokens, 11))
  docs, scores = index.search_tokens(q, 25)
  full = q @ decoded.T
  np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :25], rtol=1e-5, atol=1e-6)
  doc_of_row = np.repeat(np.arange(store.num_docs), shard.store.lengths)
  best = np.argsort(-full, axis=1, kind="stable")[:, :25]
  np.testing.assert_array_equal(docs, doc_of_row[best])
  assert shard.store.salience is None and shard.store.token_ids is None
  assert shard.store.pooled is None


@pytest.mark.parametrize("refine_tokens", ["kept", "all"])
def test_pq_index_round_trip_is_bit_exact_and_small(tmp_path, refine_tokens):
  store = clustered_store(seed=4)
  config = IndexConfig(backend="exact", vector_dtype="pq:4", prune_doc_ratio=0.5,
                       refine_tokens=refine_tokens, fields=(), max_shard_tokens=300)
  index = build_token_index(store, config)
  info = save_index(index, tmp_path / "idx")
  loaded = load_index(tmp_path / "idx")
  assert len(loaded.shards) == len(index.shards) > 1
  for a, b in zip(index.shards, loaded.shards):
    np.testing.assert_array_equal(a.store.vectors, b.store.vectors)
    np.testing.assert_array_equal(a.store.codebook, b.store.codebook)
    every = np.arange(a.num_ann_tokens)
    np.testing.assert_array_equal(a.searched.documents(every), b.searched.documents(every))
    np.testing.assert_array_equal(a.searched.stored_rows(every),
                                  b.searched.stored_rows(every))
    assert b.searched.masked == (refine_tokens == "all")
  q = store.dequantize(np.arange(0, store.num_tokens, 7))
  for x, y in zip(index.search_tokens(q, 30), loaded.search_tokens(q, 30)):
    np.testing.assert_array_equal(x, y)
  names = {p.name for p in (tmp_path / "idx" / "shard-00000").iterdir()}
  assert names == {"manifest.json", "doc_ids.json", "offsets.npy", "vectors.npy",
                   "codebook.npy"} | ({"ann_keep.npy"} if refine_tokens == "all" else set())
  # Codes: M = 4 bytes per stored token; the rest is per shard / per document.
  per_doc = info["total_bytes"] / info["counts"]["documents"]
  stored = info["counts"]["tokens"]
  assert info["total_bytes"] >= 4 * stored
  assert per_doc < 4 * stored / info["counts"]["documents"] + 1000


def test_corrupted_or_inconsistent_pq_shards_are_refused(tmp_path):
  store = clustered_store(seed=5)
  config = IndexConfig(backend="exact", vector_dtype="pq:4", prune_doc_ratio=0.5,
                       refine_tokens="all", fields=())
  save_index(build_token_index(store, config), tmp_path / "idx")
  for victim in ("codebook.npy", "ann_keep.npy"):
    bad = pathlib.Path(shutil.copytree(tmp_path / "idx", tmp_path / f"bad-{victim}"))
    target = bad / "shard-00000" / victim
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="SHA-256") as err:
      load_index(bad, verify=True)
    assert err.value.path.endswith(victim)
    assert "SHA-256" in verify_index(bad)["shard-00000"]
  # A mask whose count disagrees with the manifest (checksums kept consistent).
  bad = pathlib.Path(shutil.copytree(tmp_path / "idx", tmp_path / "count"))
  shard = bad / "shard-00000"
  manifest = json.loads((shard / "manifest.json").read_text())
  manifest["counts"]["ann_tokens"] -= 1
  write_json(shard / "manifest.json", manifest)
  with pytest.raises(IndexFileError, match="manifest says") as err:
    load_shard(shard)
  assert err.value.path.endswith("ann_keep.npy")
  # A format whose M disagrees with the stored codes.
  bad = pathlib.Path(shutil.copytree(tmp_path / "idx", tmp_path / "format"))
  shard = bad / "shard-00000"
  manifest = json.loads((shard / "manifest.json").read_text())
  manifest["config"]["vector_dtype"] = "pq:8"
  write_json(shard / "manifest.json", manifest)
  with pytest.raises(IndexFileError, match="mismatched shard"):
    load_shard(shard)


def test_pq_codes_of_unit_norm_vectors_decode_to_unit_norm(tmp_path):
  store = clustered_store(seed=6)  # L2-normalised tokens
  coded = store.with_vector_dtype("pq:4")
  assert coded.unit_norm
  x, y = store.dequantize(), coded.dequantize()
  np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
  plain = pq.decode(coded.vectors, coded.codebook)
  np.testing.assert_allclose(y, plain / np.linalg.norm(plain, axis=1, keepdims=True), rtol=1e-6)
  # Rescaling to the known length removes the radial error: never further from the original.
  assert np.sum((y - x) ** 2) <= np.sum((plain - x) ** 2)
  # Vectors of other lengths keep plain decoding.
  longer = from_padded(store.doc_ids, 2 * store.gather_padded(
      np.arange(store.num_docs), int(store.lengths.max()))["vectors"],
                       store.gather_padded(np.arange(store.num_docs),
                                           int(store.lengths.max()))["mask"])
  coded_long = longer.with_vector_dtype("pq:4")
  assert not coded_long.unit_norm
  np.testing.assert_array_equal(coded_long.dequantize(),
                                pq.decode(coded_long.vectors, coded_long.codebook))
  assert not coded.with_vector_dtype("float16").unit_norm
  with pytest.raises(ValueError, match="unit-norm decoding"):
    concatenate([coded, dataclasses.replace(coded, unit_norm=False)])
  # The flag survives both file formats.
  save_token_store(coded, tmp_path / "store")
  assert load_token_store(tmp_path / "store").unit_norm
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="pq:4",
                                               fields=()))
  save_index(index, tmp_path / "idx")
  loaded = load_index(tmp_path / "idx")
  assert loaded.shards[0].store.unit_norm
  np.testing.assert_array_equal(loaded.shards[0].store.dequantize(),
                                index.shards[0].store.dequantize())


@pytest.mark.parametrize("flag", ["yes", True])
def test_a_bad_unit_norm_flag_is_refused_naming_the_manifest(tmp_path, flag):
  store = clustered_store(seed=7)
  fmt = "float16" if flag is True else "pq:4"  # true is only meaningful for PQ codes
  save_index(build_token_index(store, IndexConfig(backend="exact", vector_dtype=fmt,
                                                  fields=())), tmp_path / "idx")
  shard = tmp_path / "idx" / "shard-00000"
  manifest = json.loads((shard / "manifest.json").read_text())
  manifest["config"]["pq_unit_norm"] = flag
  write_json(shard / "manifest.json", manifest)
  with pytest.raises(IndexFileError, match="pq_unit_norm") as err:
    load_shard(shard)
  assert err.value.path.endswith("manifest.json")
