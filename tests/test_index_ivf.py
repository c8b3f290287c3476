"""The IVF backend: k-means cells, int8 residual codes, the cells of all shards searched as
one, against brute force over the decoded vectors."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.index import from_padded
from aligner_jax.index import ivf
from aligner_jax.index import load_index
from aligner_jax.index import native
from aligner_jax.index import save_index
from aligner_jax.index import verify_index
from tests.index_build_testlib import tree
from tests.test_index import clustered_tokens


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n, dim, seed, clusters=40):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  return _unit(centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)))


def decoded(lists: ivf.IvfLists) -> np.ndarray:
  """[n, h] float32 in searched-row order: each token as centroid + scale · code."""
  cell = np.repeat(np.arange(len(lists.centroids)), np.diff(lists.offsets))
  out = np.empty(lists.codes.shape, np.float32)
  out[lists.rows] = lists.centroids[cell] + lists.scale * lists.codes.astype(np.float32)
  return out


def brute_force(scores: np.ndarray, labels: np.ndarray, k: int):
  """Per row the k best labels by score [Q, n] (ties: lower column first)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return labels[order], np.take_along_axis(scores, order, 1)


def test_spherical_kmeans_is_deterministic_and_unit_norm():
  x = _clustered(2000, 16, 0)
  a = ivf.spherical_kmeans(x, 30, 5)
  b = ivf.spherical_kmeans(x, 30, 5)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
  # Every centre is used: none is left without members.
  assert len(np.unique(ivf.nearest_centroid(x, a))) == 30


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 400), st.integers(2, 24), st.integers(1, 40), st.integers(0, 10_000))
def test_lists_hold_every_row_once_and_decode_within_half_a_step(n, dim, cells, seed):
  x = _clustered(n, dim, seed)
  documents = np.arange(n) // 3
  lists = ivf.build_lists(x, documents, ivf.ivf_settings(n, num_cells=cells))
  assert lists.offsets[0] == 0 and lists.offsets[-1] == n
  np.testing.assert_array_equal(np.sort(lists.rows), np.arange(n))
  np.testing.assert_array_equal(lists.documents, documents[lists.rows])
  # Each row sits in the list of the centroid it scores highest with.
  cell = np.repeat(np.arange(len(lists.centroids)), np.diff(lists.offsets))
  np.testing.assert_array_equal(cell, ivf.nearest_centroid(x[lists.rows], lists.centroids))
  error = np.abs(decoded(lists) - x)
  # Within half a code step, except residual components beyond the covered range (±127
  # steps), which are clipped to it.
  residual = np.abs(x[lists.rows] - lists.centroids[cell])
  bound = np.maximum(0.5 * lists.scale, residual - 127 * lists.scale) + 1e-6
  assert (error[lists.rows] <= bound).all()
  assert np.mean(residual > 127.5 * lists.scale) <= 0.01


def _token_path(monkeypatch, how: str) -> None:
  """Chunks searched token by token through the compiled scan ("scan"), or without it cell by
  cell ("cell") or token by token ("numpy")."""
  monkeypatch.setattr(ivf, "SHARED_CELL_TOKENS", 1 if how == "cell" else 10**9)
  if how in ("numpy", "cell"):
    monkeypatch.setattr(native, "ivf_scan", lambda: None)
  elif how == "scan" and native.ivf_scan() is None:
    pytest.skip(f"{native.LIBRARY} is not built here ({native.BUILD_HINT})")


@pytest.mark.parametrize("coarse_min", [10**9, 8])
@pytest.mark.parametrize("how", ["cell", "scan", "numpy"])
def test_searching_every_cell_is_brute_force_over_the_decoded_vectors(monkeypatch, coarse_min,
                                                                      how):
  monkeypatch.setattr(ivf, "COARSE_MIN", coarse_min)
  _token_path(monkeypatch, how)
  parts, bases, labels, vectors = [], [], [], []
  base = 0
  for seed, n in ((1, 700), (2, 500), (3, 300)):
    x = _clustered(n, 12, seed)
    documents = np.arange(n) // 5
    lists = ivf.build_lists(x, documents, ivf.ivf_settings(n, num_cells=9))
    parts.append(lists)
    bases.append(base)
    labels.append(documents + base)
    vectors.append(decoded(lists))
    base += int(documents[-1]) + 1
  index = ivf.IvfIndex(parts, bases)
  assert (index.coarse is not None) == (coarse_min == 8)
  q = _clustered(40, 12, 9)
  got, got_scores = index.search(q, 25, cells_to_search=index.num_cells)
  want, want_scores = brute_force(q @ np.concatenate(vectors).T, np.concatenate(labels), 25)
  np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
  assert np.mean(got == want) >= 0.98  # equal up to the order of near-equal scores
  # A mask over the documents: only allowed documents come back, the best of them.
  allowed = np.random.default_rng(0).random(base) < 0.3
  got, got_scores = index.search(q, 10, cells_to_search=index.num_cells, allowed=allowed)
  all_labels = np.concatenate(labels)
  keep = allowed[all_labels]
  want, want_scores = brute_force((q @ np.concatenate(vectors).T)[:, keep], all_labels[keep], 10)
  np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
  assert allowed[got].all()


def test_with_the_compiled_scan_shared_cells_are_scanned_token_by_token(monkeypatch):
  """The cell-by-cell NumPy path is the fallback's only: the scan reads codes in place."""
  if native.ivf_scan() is None:
    pytest.skip(f"{native.LIBRARY} is not built here ({native.BUILD_HINT})")
  monkeypatch.setattr(ivf, "SHARED_CELL_TOKENS", 1)

  def refuse(*args, **kwargs):
    raise AssertionError("cell-by-cell path taken although the compiled scan is loaded")
  monkeypatch.setattr(ivf.IvfIndex, "_search_by_cell", refuse)
  x = _clustered(600, 12, 4)
  index = ivf.IvfIndex([ivf.build_lists(x, np.arange(600) // 3,
                                        ivf.ivf_settings(600, num_cells=6))])
  labels, _ = index.search(_clustered(50, 12, 5), 10, cells_to_search=6)
  assert (labels >= 0).all()


@pytest.mark.parametrize("how", ["scan", "numpy"])
def test_the_coarse_level_chooses_the_best_cells_of_the_groups_it_searches(monkeypatch, how):
  _token_path(monkeypatch, how)
  centroids = _clustered(3000, 16, 11, clusters=60)
  coarse = ivf._Coarse(centroids)
  groups = len(coarse.centres)
  q = _clustered(50, 16, 12, clusters=60)
  exact = q @ centroids.T
  # Every group searched: the best cells by centroid score, best first, with their exact
  # scores (the compiled scan ranks members by their int8 codes: near-ties may swap).
  cells, scores = coarse.cells(q, 7, groups)
  want, want_scores = brute_force(exact, np.arange(len(centroids)), 7)
  np.testing.assert_allclose(scores, np.take_along_axis(exact, cells, 1), atol=1e-5)
  assert (np.diff(scores, axis=1) <= 0).all()
  same = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(cells, want)])
  assert same >= (0.95 if how == "scan" else 0.99), same
  # Some groups: the best cells among the members of each token's best groups only.
  cells, scores = coarse.cells(q, 7, 3)
  best_groups = np.argsort(-(q @ coarse.centres.T), axis=1)[:, :3]
  group_of = np.empty(len(centroids), np.int64)
  group_of[coarse.order] = np.repeat(np.arange(groups), np.diff(coarse.start))
  found = []
  for t in range(len(q)):
    members = np.flatnonzero(np.isin(group_of, best_groups[t]))
    best = members[np.argsort(-exact[t, members], kind="stable")[:7]]
    assert np.isin(cells[t], members).all()
    np.testing.assert_allclose(scores[t], exact[t, cells[t]], atol=1e-5)
    found.append(len(set(cells[t]) & set(best)) / 7)
  assert np.mean(found) >= (0.95 if how == "scan" else 0.99), np.mean(found)


def test_few_cells_find_most_of_the_exact_neighbours_and_fill_k(monkeypatch):
  x = _clustered(20_000, 32, 4, clusters=200)
  lists = ivf.build_lists(x, np.arange(len(x)), ivf.ivf_settings(len(x)))
  index = ivf.IvfIndex([lists], label="rows")
  rng = np.random.default_rng(5)
  q = _unit(x[rng.integers(0, len(x), 100)] + 0.2 * rng.normal(size=(100, 32)))
  rows, scores = index.search(q, 50, cells_to_search=8)
  # Every way of scoring a chunk gives the same results.
  for how in ("cell", "numpy", "scan")[:3 if native.ivf_scan() else 2]:
    with monkeypatch.context() as patch:
      _token_path(patch, how)
      again, again_scores = index.search(q, 50, cells_to_search=8)
    np.testing.assert_allclose(again_scores, scores, atol=1e-5)
    assert np.mean(again == rows) >= 0.99
  exact = np.argsort(-(q @ x.T), axis=1)[:, :50]
  recall = np.mean([len(set(r) & set(e)) / 50 for r, e in zip(rows, exact)])
  assert recall >= 0.9, recall
  # k larger than what 2 cells hold: the search widens until every token has k results.
  k = 3 * int(np.diff(lists.offsets).max())
  rows, scores = index.search(q[:5], k, cells_to_search=2)
  assert (rows >= 0).all() and np.isfinite(scores).all()


def test_ivf_index_saves_loads_and_rebuilds_byte_identically(tmp_path):
  vectors, mask, salience = clustered_tokens(400, 16, 16, seed=3)
  store = from_padded([f"d{i}" for i in range(400)], vectors, mask, salience=salience)
  config = IndexConfig(backend="ivf", max_shard_tokens=1200, num_leaves=12)
  index = build_token_index(store, config)
  assert len(index.shards) > 2 and index._ivf is not None
  save_index(index, tmp_path / "a")
  save_index(build_token_index(store, config), tmp_path / "b")
  assert tree(tmp_path / "a") == tree(tmp_path / "b")
  assert all(v is None for v in verify_index(tmp_path / "a").values())
  loaded = load_index(tmp_path / "a")
  q = vectors[mask][:50]
  d1, s1 = index.search_tokens(q, 30, leaves_to_search=4)
  d2, s2 = loaded.search_tokens(q, 30, leaves_to_search=4)
  np.testing.assert_array_equal(d1, d2)
  np.testing.assert_array_equal(s1, s2)
  # A stored token finds its own document first.
  docs, _ = loaded.search_tokens(q, 1)
  np.testing.assert_array_equal(docs[:, 0], np.repeat(np.arange(400), mask.sum(1))[:50])
  # A filter admitting a few documents is scanned shard by shard, exactly.
  allowed = np.zeros(400, bool)
  allowed[[3, 77, 390]] = True
  docs, _ = loaded.search_tokens(q, 5, allowed=allowed)
  assert set(docs[docs >= 0].ravel()) <= {3, 77, 390}


def test_a_truncated_list_file_is_refused(tmp_path):
  vectors, mask, salience = clustered_tokens(50, 8, 8, seed=2)
  store = from_padded([f"d{i}" for i in range(50)], vectors, mask, salience=salience)
  save_index(build_token_index(store, IndexConfig(backend="ivf")), tmp_path / "i")
  codes = tmp_path / "i" / "shard-00000" / "ivf" / "codes.npy"
  codes.write_bytes(codes.read_bytes()[:-8])
  with pytest.raises(Exception, match="codes.npy"):
    load_index(tmp_path / "i")
