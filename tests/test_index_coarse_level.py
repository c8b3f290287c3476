"""The IVF coarse level stored with a saved index: written by every writer of index.json, loaded
instead of regrouping, kept or replaced across generations, refused when damaged."""

import json
import os

from generations_testlib import corpus
from generations_testlib import queries
from index_build_testlib import tree
from index_build_testlib import write_encoded
import numpy as np
import pytest

from aligner_jax.eval.index_build import build_index_from_shards
from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import add_documents
from aligner_jax.index import build_token_index
from aligner_jax.index import coarse_level
from aligner_jax.index import delete_documents
from aligner_jax.index import files
from aligner_jax.index import ivf
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index import verify_index
from aligner_jax.index.token_index import read_listing
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.io import write_json

# Three shards of 12 cells: 36 cells in all, above the lowered COARSE_MIN below.
IVF = IndexConfig(backend="ivf", num_leaves=12, max_shard_tokens=400)
quiet = lambda message: None  # noqa: E731


@pytest.fixture(autouse=True)
def small_coarse_min(monkeypatch):
  monkeypatch.setattr(ivf, "COARSE_MIN", 16)


def _no_regrouping(monkeypatch):
  """Fails any grouping of the cells, and any read of all the centroids to group them."""
  def refuse(*args):
    raise AssertionError("the cells were grouped again instead of using the known grouping")
  monkeypatch.setattr(ivf, "coarse_groups", refuse)
  monkeypatch.setattr(coarse_level, "_centroids", refuse)


def _saved(tmp_path, name="index", num_docs=150):
  index = build_token_index(corpus(num_docs, seed=3), IVF)
  save_index(index, tmp_path / name)
  return index, tmp_path / name


def _search(index):
  q = queries().vectors.reshape(-1, queries().vectors.shape[-1])
  return index.search_tokens(q, 10, leaves_to_search=3)


def _coarse_dir(directory):
  return directory / read_listing(directory).coarse["name"]


def test_a_saved_index_loads_its_stored_coarse_level(tmp_path, monkeypatch):
  index = build_token_index(corpus(150, seed=3), IVF)
  assert len(index.shards) == 3 and index._ivf.coarse is not None
  # Neither saving (the in-memory index holds its grouping) nor loading groups again.
  _no_regrouping(monkeypatch)
  directory = tmp_path / "index"
  save_index(index, directory)
  entry = read_listing(directory).coarse
  assert entry["name"].startswith(coarse_level.PREFIX)
  assert sorted(os.listdir(directory / entry["name"])) == ["assign.npy", "centres.npy",
                                                           "manifest.json"]
  loaded = load_index(directory, verify=True)
  np.testing.assert_array_equal(loaded._ivf.coarse.centres, index._ivf.coarse.centres)
  np.testing.assert_array_equal(loaded._ivf.coarse.order, index._ivf.coarse.order)
  for got, want in zip(_search(loaded), _search(index)):
    np.testing.assert_array_equal(got, want)
  assert all(problem is None for problem in verify_index(directory).values())
  assert entry["name"] in verify_index(directory)


def test_writes_are_reproducible_and_the_staged_build_writes_the_same_level(tmp_path):
  _, first = _saved(tmp_path, "a")
  _, second = _saved(tmp_path, "b")
  assert tree(first) == tree(second)
  sources = write_encoded(tmp_path / "enc")
  config = IndexConfig(backend="ivf", num_leaves=12, max_shard_tokens=1200)
  build_index_from_shards(tmp_path / "enc", tmp_path / "job", config, log=quiet)
  save_index(build_token_index([load_token_store(p) for p in sources], config),
             tmp_path / "mem")
  assert read_listing(tmp_path / "job").coarse is not None
  assert tree(tmp_path / "job") == tree(tmp_path / "mem")


def test_small_or_non_ivf_indexes_list_no_coarse_level(tmp_path, monkeypatch):
  monkeypatch.setattr(ivf, "COARSE_MIN", 10**6)
  _, directory = _saved(tmp_path)
  assert read_listing(directory).coarse is None
  assert not list(directory.glob(coarse_level.PREFIX + "*"))
  save_index(build_token_index(corpus(60, seed=3), IndexConfig(backend="exact")),
             tmp_path / "exact")
  assert read_listing(tmp_path / "exact").coarse is None


def test_an_index_listed_without_one_groups_its_cells_at_load(tmp_path):
  index, directory = _saved(tmp_path)
  info = files.read_json(directory / "index.json")
  coarse = info.pop("coarse")
  write_json(directory / "index.json", info)
  (directory / coarse["name"] / "assign.npy").unlink()  # unlisted now: never read
  loaded = load_index(directory)
  np.testing.assert_array_equal(loaded._ivf.coarse.order, index._ivf.coarse.order)


def test_a_damaged_coarse_level_is_refused_naming_the_file(tmp_path):
  _, directory = _saved(tmp_path)
  target = _coarse_dir(directory)
  assign = target / "assign.npy"
  data = bytearray(assign.read_bytes())
  data[-1] ^= 0x40
  assign.write_bytes(bytes(data))
  with pytest.raises(IndexFileError, match="SHA-256") as err:
    load_index(directory, verify=True)
  assert err.value.path == os.fspath(assign)
  report = verify_index(directory)
  assert report[target.name] is not None and "assign.npy" in report[target.name]
  # A group outside the centres, with the manifest made to agree: refused all the same.
  values = np.load(assign)
  values[0] = 10**6
  np.save(assign, values)
  manifest = files.read_json(target / "manifest.json")
  manifest["files"]["assign.npy"]["sha256"] = files.sha256_file(assign)
  write_json(target / "manifest.json", manifest)
  info = files.read_json(directory / "index.json")
  info["coarse"]["manifest_sha256"] = files.sha256_file(target / "manifest.json")
  write_json(directory / "index.json", info)
  with pytest.raises(IndexFileError, match="cell groups"):
    load_index(directory)
  manifest["config"]["code_scale"] = -1.0
  write_json(target / "manifest.json", manifest)
  info["coarse"]["manifest_sha256"] = files.sha256_file(target / "manifest.json")
  write_json(directory / "index.json", info)
  with pytest.raises(IndexFileError, match="code_scale"):
    load_index(directory)
  # Missing altogether, or keyed to other shards.
  os.rename(target, tmp_path / "aside")
  with pytest.raises(IndexFileError, match="not found") as err:
    load_index(directory)
  assert err.value.path == os.fspath(target)
  info["coarse"]["key"] = "0" * 64
  write_json(directory / "index.json", info)
  with pytest.raises(IndexFileError, match="other shards"):
    load_index(directory)


def test_generations_keep_or_replace_the_coarse_level(tmp_path, monkeypatch):
  _, directory = _saved(tmp_path)
  built = read_listing(directory).coarse["name"]
  with monkeypatch.context() as patched:
    _no_regrouping(patched)  # the same shards: the same level, kept without reading them
    delete_documents(directory, ["doc-3", "doc-40"], log=quiet)
  assert read_listing(directory).coarse["name"] == built
  add_documents(directory, corpus(80, seed=9, first=500), log=quiet)
  listing = read_listing(directory)
  assert listing.coarse["name"] != built and built in listing.retained
  loaded = load_index(directory)
  want = ivf.coarse_groups(loaded._ivf.centroids)
  np.testing.assert_array_equal(loaded._ivf.coarse.centres, want[0])
  delete_documents(directory, ["doc-510"], log=quiet)
  assert not (directory / built).exists()  # gone once no generation it served is current
  assert all(problem is None for problem in verify_index(directory).values())
  _no_regrouping(monkeypatch)
  assert load_index(directory).num_live_docs == 150 + 80 - 3


def test_a_failed_write_leaves_the_previous_generation(tmp_path, monkeypatch):
  _, directory = _saved(tmp_path)
  before = tree(directory)

  def fail(centroids):
    raise RuntimeError("killed while grouping")
  monkeypatch.setattr(ivf, "coarse_groups", fail)
  with pytest.raises(RuntimeError, match="killed"):
    add_documents(directory, corpus(80, seed=9, first=500), log=quiet)
  monkeypatch.undo()
  monkeypatch.setattr(ivf, "COARSE_MIN", 16)
  assert read_listing(directory).generation == 0
  assert not [p for p in directory.iterdir() if p.name.startswith(".")]
  # What the failed change left (its new shards, unlisted) goes at the next change, which
  # then writes what an uninterrupted one writes.
  add_documents(directory, corpus(80, seed=9, first=500), log=quiet)
  _, clean = _saved(tmp_path, "clean")
  add_documents(clean, corpus(80, seed=9, first=500), log=quiet)
  assert tree(directory) == tree(clean)
  assert {k: v for k, v in before.items() if k.startswith("shard-00000")} == {
      k: v for k, v in tree(directory).items() if k.startswith("shard-00000")}


def test_index_json_names_a_malformed_coarse_entry(tmp_path):
  _, directory = _saved(tmp_path)
  info = json.loads((directory / "index.json").read_text())
  info["coarse"]["name"] = "../elsewhere"
  write_json(directory / "index.json", info)
  with pytest.raises(IndexFileError, match="coarse entry") as err:
    load_index(directory)
  assert err.value.path == os.fspath(directory / "index.json")
