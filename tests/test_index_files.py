"""Index export and load: round trips, checksums, refusal of corrupted or mismatched shards,
atomic writes."""

import json
import os
import pathlib

import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import build_token_index
from aligner_jax.index import files
from aligner_jax.index import from_padded
from aligner_jax.index import index_exists
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index.token_index import load_shard
from aligner_jax.index.token_index import verify_index
from aligner_jax.io import write_json


def make_store(num_docs=300, max_len=16, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(32, dim)).astype(np.float32)
  lengths = rng.integers(1, max_len + 1, num_docs)
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  vectors = centres[rng.integers(0, 32, (num_docs, max_len))] + 0.4 * rng.normal(
      size=(num_docs, max_len, dim)).astype(np.float32)
  salience = rng.random((num_docs, max_len)).astype(np.float32)
  token_ids = rng.integers(0, 1000, (num_docs, max_len)).astype(np.int32)
  pooled = vectors.mean(1)
  return from_padded([f"doc-{i}" for i in range(num_docs)], vectors, mask, salience=salience,
                     token_ids=token_ids, pooled=pooled)


@pytest.fixture(scope="module")
def scann_index_dir(tmp_path_factory):
  store = make_store()
  index = build_token_index(store, IndexConfig(backend="scann", prune_doc_ratio=0.5,
                                               max_shard_tokens=600, expected_k=200))
  path = tmp_path_factory.mktemp("idx") / "index"
  save_index(index, path)
  return store, index, path


def copy_tree(src: pathlib.Path, dst: pathlib.Path):
  import shutil
  shutil.copytree(src, dst)
  return dst


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
  store = make_store(seed=1)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype=dtype,
                                               max_shard_tokens=1000))
  info = save_index(index, tmp_path / "idx")
  loaded = load_index(tmp_path / "idx")
  assert len(loaded.shards) == len(index.shards) > 1
  assert loaded.doc_ids == store.doc_ids
  for a, b in zip(index.shards, loaded.shards):
    assert b.store.vectors.dtype == np.dtype(dtype)
    assert a.store.vectors.tobytes() == b.store.vectors.tobytes()
    np.testing.assert_array_equal(a.store.salience, b.store.salience)
    np.testing.assert_array_equal(a.store.token_ids, b.store.token_ids)
    np.testing.assert_array_equal(a.store.pooled, b.store.pooled)
    every = np.arange(a.num_ann_tokens)
    np.testing.assert_array_equal(a.searched.documents(every), b.searched.documents(every))
  # float16 storage equals the float16 cast of the encoder's vectors.
  np.testing.assert_array_equal(loaded.shards[0].store.dequantize()[:5],
                                store.vectors[:5].astype(dtype).astype(np.float32))
  assert info["counts"]["original_tokens"] == store.num_tokens
  per_token = store.dim * np.dtype(dtype).itemsize
  # vectors + salience + token id + offsets/ann map: a few bytes above the raw vector size.
  assert per_token < info["bytes_per_original_token"] < per_token + 24


def test_int8_round_trip_has_bounded_error(tmp_path):
  store = make_store(seed=2)
  index = build_token_index(store, IndexConfig(backend="exact", vector_dtype="int8"))
  save_index(index, tmp_path / "idx")
  loaded = load_index(tmp_path / "idx")
  shard = loaded.shards[0].store
  assert shard.vectors.dtype == np.int8 and shard.scales.dtype == np.float32
  x = store.dequantize()
  err = np.abs(shard.dequantize() - x)
  assert np.all(err <= shard.scales[:, None] / 2 + 1e-6)
  assert np.max(err) <= np.max(np.abs(x)) / 254 + 1e-6


def test_scann_round_trip_gives_identical_search(scann_index_dir):
  store, index, path = scann_index_dir
  loaded = load_index(path)
  assert index_exists(path)
  assert len(loaded.shards) > 1
  q = store.dequantize(np.arange(0, store.num_tokens, 37))
  d1, s1 = index.search_tokens(q, 100)
  d2, s2 = loaded.search_tokens(q, 100)
  np.testing.assert_array_equal(d1, d2)
  np.testing.assert_array_equal(s1, s2)
  manifest = json.loads((path / "shard-00000" / "manifest.json").read_text())
  for rel, entry in manifest["files"].items():
    assert entry["sha256"] == files.sha256_file(path / "shard-00000" / rel)
  assert any(rel.startswith("scann/") for rel in manifest["files"])
  assert {"doc_ids.json", "offsets.npy", "vectors.npy", "manifest.json"} <= {
      p.name for p in (path / "shard-00000").iterdir()}


def test_scann_files_are_scanns_own_layout_loaded_read_only(scann_index_dir, tmp_path):
  """ScaNN's codes stay one per byte as ScaNN wrote them, and a load writes nothing: an index
  in a read-only directory loads and searches."""
  store, index, path = scann_index_dir
  scann_dir = path / "shard-00000" / "scann"
  codes = np.load(scann_dir / "hashed_dataset.npy")
  h = index.shards[0].store.dim
  assert codes.dtype == np.uint8 and codes.shape == (index.shards[0].searcher.size, h // 2)
  assert not (scann_dir / "hashed_dataset.4bit.npz").exists()
  frozen = copy_tree(path, tmp_path / "frozen")
  for p in [frozen, *frozen.rglob("*")]:
    p.chmod(0o555 if p.is_dir() else 0o444)
  try:
    before = sorted(p.relative_to(frozen) for p in frozen.rglob("*"))
    loaded = load_index(frozen)
    q = store.dequantize(np.arange(0, store.num_tokens, 41))
    for x, y in zip(index.search_tokens(q, 50), loaded.search_tokens(q, 50)):
      np.testing.assert_array_equal(x, y)
    assert sorted(p.relative_to(frozen) for p in frozen.rglob("*")) == before
  finally:
    for p in [frozen, *frozen.rglob("*")]:
      p.chmod(0o755 if p.is_dir() else 0o644)


def _pack_like_earlier_versions(shard: pathlib.Path):
  """Turns a shard into what earlier versions wrote: AH codes two per byte in
  hashed_dataset.4bit.npz, with the manifest and index.json listing it."""
  from aligner_jax.index.backends import pack_nibbles
  codes_path = shard / "scann" / "hashed_dataset.npy"
  codes = np.load(codes_path)
  np.savez(shard / "scann" / "hashed_dataset.4bit.npz", packed=pack_nibbles(codes),
           blocks=np.int64(codes.shape[1]))
  codes_path.unlink()

  def relist(manifest):
    del manifest["files"]["scann/hashed_dataset.npy"]
    target = shard / "scann" / "hashed_dataset.4bit.npz"
    manifest["files"]["scann/hashed_dataset.4bit.npz"] = {
        "bytes": target.stat().st_size, "sha256": files.sha256_file(target)}
  _rewrite_manifest(shard, relist)


def test_indexes_with_packed_codes_still_load(scann_index_dir, tmp_path):
  store, index, path = scann_index_dir
  old = copy_tree(path, tmp_path / "old")
  for shard in sorted(old.glob("shard-*")):
    _pack_like_earlier_versions(shard)
  loaded = load_index(old, verify=True)
  q = store.dequantize(np.arange(0, store.num_tokens, 37))
  for x, y in zip(index.search_tokens(q, 100), loaded.search_tokens(q, 100)):
    np.testing.assert_array_equal(x, y)
  assert set(verify_index(old).values()) == {None}


def test_malformed_packed_codes_are_refused_naming_the_file(scann_index_dir, tmp_path):
  """A packed-codes file that passes its checksum but holds the wrong shape (hand-edited
  manifest) is refused with the file named, never handed to ScaNN."""
  _, _, path = scann_index_dir
  bad = copy_tree(path, tmp_path / "bad")
  shard = bad / "shard-00000"
  _pack_like_earlier_versions(shard)
  target = shard / "scann" / "hashed_dataset.4bit.npz"
  with np.load(target) as z:
    packed, blocks = z["packed"], z["blocks"]
  for bad_codes, problem in ((packed[:, :-1], "4-bit codes per row"),
                             (packed[:-1], "mismatched shard")):
    np.savez(target, packed=bad_codes, blocks=blocks)
    manifest = json.loads((shard / "manifest.json").read_text())
    entry = manifest["files"]["scann/hashed_dataset.4bit.npz"]
    entry.update(sha256=files.sha256_file(target), bytes=target.stat().st_size)
    (shard / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match=problem) as err:
      load_shard(shard)
    assert err.value.path == os.fspath(target)


def _flip_byte(path: pathlib.Path, offset_from_end: int = 10):
  data = bytearray(path.read_bytes())
  data[-offset_from_end] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("victim", ["vectors.npy", "offsets.npy", "doc_ids.json",
                                    "scann/hashed_dataset.npy"])
def test_a_flipped_byte_is_found_by_verification_naming_the_file(scann_index_dir, tmp_path,
                                                                 victim):
  _, _, path = scann_index_dir
  bad = copy_tree(path, tmp_path / "bad")
  target = bad / "shard-00001" / victim
  _flip_byte(target)
  with pytest.raises(IndexFileError, match="SHA-256") as err:
    load_index(bad, verify=True)
  assert err.value.path == os.fspath(target)
  assert "corrupted" in str(err.value)
  report = verify_index(bad)
  assert report["shard-00000"] is None and report["shard-00002"] is None
  assert f"{target}: SHA-256" in report["shard-00001"]


def test_a_plain_load_reads_no_data(scann_index_dir, tmp_path):
  """Without `verify`, a flipped byte inside the vectors goes unnoticed: the load hashed
  nothing and the vectors are mapped as they are on disk."""
  _, index, path = scann_index_dir
  bad = copy_tree(path, tmp_path / "bad")
  _flip_byte(bad / "shard-00001" / "vectors.npy")
  loaded = load_index(bad)
  a, b = index.shards[1].store.vectors, loaded.shards[1].store.vectors
  assert isinstance(b, np.memmap) and not b.flags.writeable
  assert (a != b).sum() == 1


def test_missing_truncated_and_stray_files_are_refused(scann_index_dir, tmp_path):
  _, _, path = scann_index_dir
  bad = copy_tree(path, tmp_path / "missing")
  (bad / "shard-00000" / "salience.npy").unlink()
  with pytest.raises(IndexFileError, match="missing") as err:
    load_index(bad)
  assert err.value.path.endswith("salience.npy")

  bad = copy_tree(path, tmp_path / "truncated")
  target = bad / "shard-00000" / "offsets.npy"
  target.write_bytes(target.read_bytes()[:-8])
  with pytest.raises(IndexFileError, match="size"):
    load_index(bad)

  # Truncated with the manifest made to agree: the .npy header still gives it away.
  for victim in ("vectors.npy", "scann/hashed_dataset.npy"):
    bad = copy_tree(path, tmp_path / f"truncated-{victim.replace('/', '-')}")
    target = bad / "shard-00000" / victim
    target.write_bytes(target.read_bytes()[:-16])
    _rewrite_manifest(bad / "shard-00000", lambda m, v=victim, t=target: m["files"][v].update(
        bytes=t.stat().st_size, sha256=files.sha256_file(t)))
    with pytest.raises(IndexFileError, match="truncated or padded") as err:
      load_index(bad)
    assert err.value.path == os.fspath(target)

  bad = copy_tree(path, tmp_path / "stray")
  (bad / "shard-00000" / "extra.npy").write_bytes(b"x")
  with pytest.raises(IndexFileError, match="not listed"):
    load_index(bad)

  bad = copy_tree(path, tmp_path / "nolisting")
  (bad / "index.json").unlink()
  assert not index_exists(bad)
  with pytest.raises(IndexFileError, match="not found"):
    load_index(bad)


def _rewrite_manifest(shard_dir: pathlib.Path, edit):
  """Edits a shard manifest and keeps index.json's checksum of it consistent, so only the
  mismatch between manifest and files is left to be caught."""
  manifest = json.loads((shard_dir / "manifest.json").read_text())
  edit(manifest)
  write_json(shard_dir / "manifest.json", manifest)
  listing_path = shard_dir.parent / "index.json"
  listing = json.loads(listing_path.read_text())
  for entry in listing["shards"]:
    if entry["name"] == shard_dir.name:
      entry["manifest_sha256"] = files.sha256_file(shard_dir / "manifest.json")
  write_json(listing_path, listing)


def test_mismatched_manifests_are_refused(scann_index_dir, tmp_path):
  _, _, path = scann_index_dir
  # A manifest edited behind index.json's back.
  bad = copy_tree(path, tmp_path / "edited")
  manifest = json.loads((bad / "shard-00000" / "manifest.json").read_text())
  manifest["counts"]["dim"] = 8
  (bad / "shard-00000" / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(IndexFileError, match="differs from the one index.json lists"):
    load_index(bad)

  # Counts that disagree with the arrays, checksums consistent.
  bad = copy_tree(path, tmp_path / "dim")
  _rewrite_manifest(bad / "shard-00000", lambda m: m["counts"].update(dim=8))
  with pytest.raises(IndexFileError, match="mismatched shard") as err:
    load_index(bad)
  assert err.value.path.endswith("vectors.npy")

  # An array of another shape under a consistent manifest: refused from its header.
  bad = copy_tree(path, tmp_path / "shape")
  target = bad / "shard-00000" / "salience.npy"
  np.save(target, np.load(target)[:-1])
  _rewrite_manifest(bad / "shard-00000", lambda m: m["files"]["salience.npy"].update(
      bytes=target.stat().st_size, sha256=files.sha256_file(target)))
  with pytest.raises(IndexFileError, match="mismatched shard") as err:
    load_index(bad)
  assert err.value.path == os.fspath(target)

  # ScaNN's arrays for another number of vectors.
  bad = copy_tree(path, tmp_path / "scann-rows")
  target = bad / "shard-00000" / "scann" / "datapoint_to_token.npy"
  np.save(target, np.load(target)[:-1])
  _rewrite_manifest(bad / "shard-00000", lambda m: m["files"]["scann/datapoint_to_token.npy"]
                    .update(bytes=target.stat().st_size, sha256=files.sha256_file(target)))
  with pytest.raises(IndexFileError, match="mismatched shard") as err:
    load_index(bad)
  assert err.value.path == os.fspath(target)
  assert "mismatched shard" in verify_index(bad)["shard-00000"]

  # A vector format that disagrees with the stored arrays.
  bad = copy_tree(path, tmp_path / "dtype")
  _rewrite_manifest(bad / "shard-00001", lambda m: m["config"].update(vector_dtype="int8"))
  with pytest.raises(IndexFileError, match="mismatched shard"):
    load_index(bad)

  # A shard built with another configuration.
  bad = copy_tree(path, tmp_path / "config")
  _rewrite_manifest(bad / "shard-00001",
                    lambda m: m["config"]["index"].update(prune_doc_ratio=0.25))
  with pytest.raises(IndexFileError, match="built with"):
    load_index(bad)

  # A shard from another build swapped in.
  other = build_token_index(make_store(seed=9), IndexConfig(backend="exact",
                                                            prune_doc_ratio=0.5,
                                                            max_shard_tokens=600))
  save_index(other, tmp_path / "other")
  bad = copy_tree(path, tmp_path / "swapped")
  import shutil
  shutil.rmtree(bad / "shard-00001")
  shutil.copytree(tmp_path / "other" / "shard-00001", bad / "shard-00001")
  with pytest.raises(IndexFileError, match="another build"):
    load_index(bad)

  # Another kind or version.
  bad = copy_tree(path, tmp_path / "version")
  _rewrite_manifest(bad / "shard-00000", lambda m: m.update(version=99))
  with pytest.raises(IndexFileError, match="version 99"):
    load_index(bad)

  bad = copy_tree(path, tmp_path / "json")
  (bad / "shard-00000" / "manifest.json").write_text("{not json")
  with pytest.raises(IndexFileError, match="not valid JSON"):
    load_shard(bad / "shard-00000")


def test_writes_are_atomic(tmp_path):
  store = make_store(num_docs=20, seed=3)
  index = build_token_index(store, IndexConfig(backend="exact"))
  target = tmp_path / "idx"
  save_index(index, target)
  before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

  class Boom(Exception):
    pass

  original = files.write_manifest

  def failing(*args, **kwargs):
    original(*args, **kwargs)
    raise Boom()

  files.write_manifest = failing
  try:
    with pytest.raises(Boom):
      save_index(build_token_index(make_store(num_docs=20, seed=4),
                                   IndexConfig(backend="exact")), target)
  finally:
    files.write_manifest = original
  after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
  assert after == before  # the old index is untouched
  assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
  load_index(target)
  # A successful rebuild replaces it.
  save_index(build_token_index(make_store(num_docs=20, seed=4), IndexConfig(backend="exact")),
             target)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
  assert load_index(target).shards[0].store.vectors.tobytes() != before[
      pathlib.Path("shard-00000/vectors.npy")]


class _CyclicGarbage:
  """A reference cycle with a finalizer: collecting it runs Python code, which lets another
  thread take the interpreter in the middle of a C-level parse."""

  def __init__(self):
    self.me = self

  def __del__(self):
    sum(range(50))


def test_array_headers_read_safely_from_many_threads(tmp_path):
  """Shards load on a thread pool. numpy parses a `.npy` header with `ast`, whose constructor
  in CPython 3.11 keeps one recursion counter per interpreter: two parses from threads at
  different call depths could raise "AST constructor recursion depth mismatch". The loads run
  under the conditions that made that happen (frequent thread switches and collections that
  run finalizers) and must all succeed."""
  import concurrent.futures
  import gc
  import sys

  expected = np.arange(128 * 16, dtype=np.float32).reshape(128, 16)
  np.save(tmp_path / "a.npy", expected)
  old_interval, old_threshold = sys.getswitchinterval(), gc.get_threshold()

  def load_at_depth(depth):
    if depth:
      return load_at_depth(depth - 1)
    for _ in range(300):
      _CyclicGarbage()
      got = files.load_array(tmp_path, "a.npy", dtype=np.float32, shape=(None, 16))
      np.testing.assert_array_equal(got, expected)
    return depth

  sys.setswitchinterval(1e-6)
  gc.set_threshold(50, 1, 1)
  try:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      assert list(pool.map(load_at_depth, range(16))) == [0] * 16
  finally:
    sys.setswitchinterval(old_interval)
    gc.set_threshold(*old_threshold)
