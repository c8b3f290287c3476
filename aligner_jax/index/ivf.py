"""The inverted-file (IVF) token search: k-means cells, int8 residual codes, memory-mapped,
every shard's cells probed together.

A shard's searched tokens are clustered by spherical k-means into `num_cells` cells (about
`CELL_SIZE` tokens each); each token is stored in its cell's list as the int8 code of its
residual from the cell's centroid (one scale per shard), with its searched row and local
document. On disk (`ivf/` in the shard directory):

  centroids.npy  [C, h] float32  unit-norm cell centroids
  offsets.npy    [C + 1] int64   list of cell c = positions [offsets[c], offsets[c + 1])
  codes.npy      [n, h] int8     residual codes, in list order
  rows.npy       [n] int32       searched row of each list position
  documents.npy  [n] int32       local document of each list position

Nothing is deserialised at load: the lists are mapped read-only and only the centroids are
read (h · 4 bytes per cell), so loading costs what reading the centroids costs and serving
memory is the centroids plus the list pages the queries touch.

A query token's score with a stored token is q · c + scale · (q · code): the centroid score
computed once per probed cell plus the residual's. The search probes the `cells_to_search`
cells of highest q · c among the cells of *all* shards together (`IvfIndex`), so its cost is
set by that absolute number of cells and the cell size, not by the number of shards or
tokens. Each token's chosen cells are scanned where they are stored by the compiled scan
(`native/ivf_scan.cc`, int8 dot products). Without it, NumPy scores each distinct cell once
against all its tokens where the query tokens of a chunk share cells (a small index, a large
batch), and otherwise gathers each token's cells into one matrix-vector product. With many
cells in all (more than `COARSE_MIN`), the centroids are themselves grouped by k-means at load
time into about √C groups and a query token scores the centroids of its best groups, as many
as hold about `COARSE_MEMBERS` cells, so choosing the cells costs a fixed amount of work plus
the √C group centres.

Builds are deterministic: the k-means sample and the initial centres come from a fixed seed,
so a shard's files are a function of its tokens and settings (up to the floating-point
determinism of the BLAS on the machine that builds it).
"""

import concurrent.futures
import dataclasses
import functools
import math
import pathlib
from typing import Any, NamedTuple, Sequence

import numpy as np
import threadpoolctl

from aligner_jax.index import files
from aligner_jax.index import native
from aligner_jax.index import shard_search
from aligner_jax.index.backends import top_k_sorted

SUBDIR = "ivf"
CELL_SIZE = 256  # tokens per cell when num_cells is not given
CELLS_TO_SEARCH = 8  # cells probed per query token over the whole index, by default
TRAINING_ITERATIONS = 8
# The k-means sample: at least this many tokens, and at least SAMPLE_PER_CELL per cell.
TRAINING_SAMPLE_SIZE = 100_000
SAMPLE_PER_CELL = 32
# Above this many cells in all, the cells are chosen through a coarse level of groups.
COARSE_MIN = 8192
COARSE_ITERATIONS = 4  # k-means iterations that group the cells
# Members (cells) of the best groups scored per query token: the groups searched are as many
# as hold about this many cells (and at least 4 · cells_to_search), so the work of choosing
# the cells stays the same as the index grows; only the √C group centres grow.
COARSE_MEMBERS = 2048
# Without the compiled scan, a chunk whose query tokens choose each cell this many times on
# average is scored cell by cell (each cell's codes converted once for all its tokens),
# otherwise token by token.
SHARED_CELL_TOKENS = 2
_SEED = 0
_BLOCK = 8192  # rows scored against the centroids at a time (bounds memory)
# Query tokens searched at a time: the more tokens share a cell, the fewer times each cell's
# codes are converted and multiplied (the flat scores of a chunk take
# _TOKEN_CHUNK · cells_to_search · CELL_SIZE floats).
_TOKEN_CHUNK = 2048
_SELECT_CHUNK = 128  # query tokens whose candidates are padded into one matrix at a time
_CODE_QUANTILE = 0.9999  # residual magnitude the int8 range covers (larger ones clip)
_BLAS = None  # threadpoolctl's view of the BLAS NumPy calls, found at the first search


def _one_blas_thread():
  """A context in which NumPy's BLAS runs each product in its calling thread: the search
  multiplies many small matrices from its own threads, where BLAS's threads would only
  contend for the same cores."""
  global _BLAS
  if _BLAS is None:
    _BLAS = threadpoolctl.ThreadpoolController()
  return _BLAS.limit(limits=1, user_api="blas")


@dataclasses.dataclass(frozen=True)
class IvfSettings:
  """Resolved IVF parameters of one shard."""
  num_cells: int
  cells_to_search: int
  training_sample_size: int
  training_iterations: int
  scale: float = 0.0  # residual code step, set by the build


def ivf_settings(n: int, *, num_cells: int | None = None, cells_to_search: int | None = None,
                 training_sample_size: int | None = None,
                 training_iterations: int = TRAINING_ITERATIONS) -> IvfSettings:
  """IVF parameters for n searched tokens: n / CELL_SIZE cells unless given."""
  if n <= 0:
    raise ValueError("cannot build an IVF index over zero vectors")
  if num_cells is None:
    num_cells = max(1, int(round(n / CELL_SIZE)))
  num_cells = max(1, min(int(num_cells), n))
  if cells_to_search is None:
    cells_to_search = CELLS_TO_SEARCH
  if cells_to_search < 1:
    raise ValueError(f"cells_to_search must be positive, got {cells_to_search}")
  sample = max(training_sample_size or TRAINING_SAMPLE_SIZE, SAMPLE_PER_CELL * num_cells)
  return IvfSettings(num_cells=num_cells, cells_to_search=int(cells_to_search),
                     training_sample_size=min(int(sample), n),
                     training_iterations=int(training_iterations))


def _normalise(x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """[n] int64: the centroid of highest inner product for each of `vectors` [n, h]
  (first one among equals), scored `_BLOCK` rows at a time."""
  out = np.empty(len(vectors), np.int64)
  for start in range(0, len(vectors), _BLOCK):
    block = np.asarray(vectors[start:start + _BLOCK], np.float32)
    out[start:start + len(block)] = np.argmax(block @ centroids.T, axis=1)
  return out


def spherical_kmeans(sample: np.ndarray, k: int, iterations: int, *,
                     seed: int = _SEED) -> np.ndarray:
  """[k, h] unit-norm centres of `sample` [m, h] by spherical k-means (assignment by inner
  product, centre = normalised mean). Initial centres are k distinct sample rows drawn with
  `seed`; a centre left without members takes the sample row its current centre fits worst."""
  rng = np.random.default_rng(seed)
  sample = np.asarray(sample, np.float32)
  centres = _normalise(sample[np.sort(rng.choice(len(sample), k, replace=False))])
  for _ in range(iterations):
    assign = nearest_centroid(sample, centres)
    sums = np.zeros_like(centres)
    np.add.at(sums, assign, sample)
    counts = np.bincount(assign, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
      fit = np.einsum("ij,ij->i", sample, centres[assign])
      sums[empty] = sample[np.argsort(fit, kind="stable")[:len(empty)]]
    centres = _normalise(sums)
  return centres


@dataclasses.dataclass(frozen=True)
class IvfLists:
  """One shard's cells: centroids in RAM, the lists (usually memory-mapped)."""
  centroids: np.ndarray  # [C, h] float32
  offsets: np.ndarray  # [C + 1] int64
  codes: np.ndarray  # [n, h] int8
  rows: np.ndarray  # [n] int32
  documents: np.ndarray  # [n] int32
  scale: float

  @property
  def size(self) -> int:
    return len(self.rows)


def _residual_scale(residual: np.ndarray) -> float:
  """The int8 code step that covers `residual`'s magnitudes up to `_CODE_QUANTILE`."""
  return float(np.quantile(np.abs(residual), _CODE_QUANTILE)) / 127.0 or 1.0


def _residual_codes(vectors: np.ndarray, centres: np.ndarray, assign: np.ndarray,
                    order: np.ndarray, scale: float) -> np.ndarray:
  """[len(order), h] int8: the codes of vectors[order] − centres[assign[order]] in steps of
  `scale` (clipped to ±127), computed `_BLOCK` rows at a time."""
  codes = np.empty((len(order), vectors.shape[1]), np.int8)
  for start in range(0, len(order), _BLOCK):
    rows = order[start:start + _BLOCK]
    residual = vectors[rows] - centres[assign[rows]]
    codes[start:start + len(rows)] = np.clip(np.rint(residual / scale), -127, 127)
  return codes


def build_lists(vectors: np.ndarray, documents: np.ndarray, settings: IvfSettings) -> IvfLists:
  """Clusters `vectors` [n, h] float32 (searched row order) and writes their codes in list
  order; `documents` [n]: the local document of each searched row."""
  n = len(vectors)
  rng = np.random.default_rng(_SEED)
  sample_rows = np.sort(rng.choice(n, settings.training_sample_size, replace=False))
  centroids = spherical_kmeans(vectors[sample_rows], settings.num_cells,
                               settings.training_iterations)
  assign = nearest_centroid(vectors, centroids)
  order = np.argsort(assign, kind="stable")
  offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=len(centroids)))])
  scale = _residual_scale(vectors[sample_rows] - centroids[assign[sample_rows]])
  codes = _residual_codes(vectors, centroids, assign, order, scale)
  return IvfLists(centroids, offsets.astype(np.int64), codes, order.astype(np.int32),
                  np.asarray(documents)[order].astype(np.int32), scale)


def save_lists(lists: IvfLists, directory: pathlib.Path) -> None:
  target = directory / SUBDIR
  target.mkdir()
  for name in ("centroids", "offsets", "codes", "rows", "documents"):
    files.save_array(target, f"{name}.npy", getattr(lists, name))


def load_lists(directory: pathlib.Path, settings: IvfSettings, size: int, dim: int) -> IvfLists:
  """The lists of a saved shard, checked against `settings` and `size` from the `.npy`
  headers; the centroids and offsets are read, the rest mapped."""
  target = directory / SUBDIR
  c = settings.num_cells
  load = lambda name, dt, shape, mmap=True: files.load_array(  # noqa: E731
      target, name, dtype=dt, shape=shape, mmap=mmap)
  offsets = load("offsets.npy", np.int64, (c + 1,), False)
  if offsets[0] != 0 or offsets[-1] != size or np.any(np.diff(offsets) < 0):
    raise files.IndexFileError(target / "offsets.npy", f"cell offsets must rise from 0 to "
                               f"the manifest's {size} searched tokens")
  return IvfLists(load("centroids.npy", np.float32, (c, dim), False), offsets,
                  load("codes.npy", np.int8, (size, dim)), load("rows.npy", np.int32, (size,)),
                  load("documents.npy", np.int32, (size,)), settings.scale)


def _segment_top_k(scores: np.ndarray, seg_start: np.ndarray, seg_len: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per segment [seg_start, seg_start + seg_len) of the flat `scores`, the flat positions of
  its k best (score desc, then position), padded with -1 / -inf: ([S, k], [S, k])."""
  out_labels = np.full((len(seg_start), k), -1, np.int64)
  out_scores = np.full((len(seg_start), k), -np.inf, np.float32)
  for lo in range(0, len(seg_start), _SELECT_CHUNK):
    start, length = seg_start[lo:lo + _SELECT_CHUNK], seg_len[lo:lo + _SELECT_CHUNK]
    width = int(length.max(initial=0))
    if width == 0:
      continue
    cols = np.arange(width)
    valid = cols[None, :] < length[:, None]
    pos = np.where(valid, start[:, None] + cols[None, :], 0)
    found, best = top_k_sorted(np.where(valid, scores[pos], -np.inf), pos, k)
    ok = np.isfinite(best)
    out_scores[lo:lo + len(start), :found.shape[1]] = np.where(ok, best, -np.inf)
    out_labels[lo:lo + len(start), :found.shape[1]] = np.where(ok, found, -1)
  return out_labels, out_scores


def _pair_scores(queries: np.ndarray, tok: np.ndarray, item: np.ndarray, sizes: np.ndarray,
                 block, scale: np.ndarray | None = None,
                 bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Scores of every row of each (query token `tok`, `item`) pair, pair after pair.

  `sizes` [P]: rows of each pair's item (0: the pair scores nothing); `block(u)` gives item
  u's rows as float32 [size_u, h]. A row's score is scale[item] · (row · query) + bias[pair]
  (no scale / bias: the inner product). Each distinct item is scored once against all the
  query tokens that chose it: one matrix product per item, never per row.
  Returns (flat scores [Σ sizes] float32, pair_start [P] int64).
  """
  pair_start = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
  flat = np.empty(int(sizes.sum()), np.float32)
  used = np.flatnonzero(sizes > 0)
  by_item = used[np.argsort(item[used], kind="stable")]
  bounds = np.flatnonzero(np.diff(item[by_item])) + 1
  for pairs in np.split(by_item, bounds):
    if not len(pairs):
      continue
    u, size = int(item[pairs[0]]), int(sizes[pairs[0]])
    s = block(u) @ queries[tok[pairs]].T  # [size, m]
    if scale is not None:
      s *= scale[u]
    if bias is not None:
      s += bias[pairs][None, :]
    flat[pair_start[pairs][None, :] + np.arange(size)[:, None]] = s
  return flat, pair_start


def _flat_rows(found: np.ndarray, pair_start: np.ndarray, item_start: np.ndarray,
               item: np.ndarray) -> np.ndarray:
  """Global rows of flat entries `found` (any shape, ≥ 0): the row of their pair's item plus
  their place in it (a pair scoring no rows shares its start with the next one)."""
  pair = np.searchsorted(pair_start, found, side="right") - 1
  return item_start[item[pair]] + (found - pair_start[pair])


def _top_items(scores: np.ndarray, k: int) -> np.ndarray:
  """[t, min(k, n)] column indices of each row's k highest `scores` [t, n], unordered."""
  k = min(k, scores.shape[1])
  if k == scores.shape[1]:
    return np.broadcast_to(np.arange(k), scores.shape).copy()
  return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _scan(scan, queries: np.ndarray, cells: np.ndarray, centre_scores: np.ndarray, k: int,
          allowed: np.ndarray | None, cell_arrays: tuple, part_arrays: tuple
          ) -> tuple[np.ndarray, np.ndarray]:
  """The compiled scan (`native/ivf_scan.cc`): per query token [t, h] the k best rows of its
  chosen cells [t, p] (labels [t, k] int64, -1 where fewer; scores [t, k], best first).
  `cell_arrays`: each cell's (part int32, start int64, size int64, scale float32) [C];
  `part_arrays`: the parts' (row pointers, label pointers, label base int64)."""
  t, p = cells.shape
  labels = np.empty((t, k), np.int64)
  scores = np.empty((t, k), np.float32)
  queries = np.ascontiguousarray(queries, np.float32)
  cells = np.ascontiguousarray(cells, np.int64)
  centre_scores = np.ascontiguousarray(centre_scores, np.float32)
  mask = None if allowed is None else np.ascontiguousarray(allowed, bool).view(np.uint8)
  ptr = native.pointer
  num_cells = len(cell_arrays[0])
  failed = scan(t, queries.shape[1], p, k, ptr(queries), ptr(cells), ptr(centre_scores),
                num_cells, *map(ptr, cell_arrays), *map(ptr, part_arrays), ptr(mask),
                ptr(labels), ptr(scores))
  if failed:
    raise ValueError(f"chosen cells outside the {num_cells} cells searched")
  return labels, scores


class CoarseGrouping(NamedTuple):
  """The coarse level's grouping of C cells into G groups (`coarse_groups`)."""
  centres: np.ndarray  # [G, h] float32 unit-norm group centres
  assign: np.ndarray  # [C] int32 in [0, G): each cell's group
  code_scale: float  # step of the int8 codes of the cells' residuals from their group centre


def coarse_groups(centroids: np.ndarray) -> CoarseGrouping:
  """The coarse level's grouping of C cells: k-means of their `centroids` [C, h] into √C
  groups (at least 2), and the code step of the residuals. The costly part of the coarse
  level (O(C^1.5 · h)), which a saved index stores (`coarse_level.py`) so that loading it does
  not repeat it."""
  groups = max(2, int(round(math.sqrt(len(centroids)))))
  centres = spherical_kmeans(centroids, groups, COARSE_ITERATIONS)
  assign = nearest_centroid(centroids, centres).astype(np.int32)
  return CoarseGrouping(centres, assign, _residual_scale(centroids - centres[assign]))


class _Coarse:
  """The centroids of all shards grouped by k-means (√C groups, `coarse_groups`), to choose
  cells without scoring every centroid. The compiled scan reads the groups' members as int8
  codes of their residuals from the group centre, like the cells' lists: a quarter of the
  float32 bytes, so the members a query token scores stay in the CPU's caches longer as the
  index grows; the chosen cells' scores are then recomputed from their float32 centroids."""

  def __init__(self, centroids: np.ndarray, grouping: CoarseGrouping | None = None):
    """`grouping`: `coarse_groups(centroids)` when already known (a saved index's)."""
    self.grouping = grouping if grouping is not None else coarse_groups(centroids)
    centres, assign, scale = self.grouping
    groups = len(centres)
    self.order = np.argsort(assign, kind="stable")  # cells in group order
    self.centroids = centroids
    self.start = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=groups))])
    # The groups as the compiled scan reads them: one part (the members' codes).
    self._codes = _residual_codes(centroids, centres, assign, self.order, scale)
    self._scan_cells = (np.zeros(groups, np.int32), self.start[:-1].astype(np.int64),
                        np.diff(self.start).astype(np.int64), np.full(groups, scale, np.float32))
    self._labels = self.order.astype(np.int32)
    self._scan_parts = (native.pointer_table([self._codes]),
                        native.pointer_table([self._labels]), np.zeros(1, np.int64))

  @property
  def centres(self) -> np.ndarray:
    """[G, h] the group centres."""
    return self.grouping.centres

  @functools.cached_property
  def members(self) -> np.ndarray:
    """[C, h] float32 centroids in group order, for the NumPy path only (built on first use:
    the compiled scan reads the codes)."""
    return self.centroids[self.order]

  def cells(self, queries: np.ndarray, count: int,
            groups_to_search: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query token the `count` cells of highest score among its best groups' members:
    (cells [t, count] int64, -1 where fewer; scores [t, count]), best first. Through the
    compiled scan the members are ranked by their codes (exact up to the codes' rounding)
    and the chosen cells' scores are exact."""
    group_scores = queries @ self.centres.T
    groups = _top_items(group_scores, groups_to_search)
    scan = native.ivf_scan()
    if scan is not None:
      cells, _ = _scan(scan, queries, groups, np.take_along_axis(group_scores, groups, 1),
                       count, None, self._scan_cells, self._scan_parts)
      exact = np.einsum("th,tch->tc", queries, self.centroids[np.maximum(cells, 0)])
      cells, scores = top_k_sorted(np.where(cells >= 0, exact, -np.inf), cells, count)
      return np.where(np.isfinite(scores), cells, -1), scores
    t = len(queries)
    tok = np.repeat(np.arange(t), groups.shape[1])
    item = groups.ravel()
    size = np.diff(self.start)
    flat, pair_start = _pair_scores(queries, tok, item, size[item],
                                    lambda u: self.members[self.start[u]:self.start[u + 1]])
    seg_len = size[groups].sum(1)
    seg_start = pair_start[::groups.shape[1]]
    found, scores = _segment_top_k(flat, seg_start, seg_len, count)
    rows = _flat_rows(np.maximum(found, 0), pair_start, self.start[:-1], item)
    return np.where(found >= 0, self.order[rows], -1), scores


class IvfIndex:
  """The cells of several shards' lists searched as one (see the module docstring).

  Labels: what a search returns for a stored token, `documents + doc_base[s]` (global
  documents) or, with `label="rows"`, the shard's searched rows.
  """

  def __init__(self, lists: Sequence[IvfLists], doc_base: Sequence[int] | None = None, *,
               label: str = "documents",
               coarse_grouping: CoarseGrouping | None = None):
    """`coarse_grouping`: `coarse_groups` of all the lists' centroids when already known
    (a saved index's); computed here otherwise, when there are over COARSE_MIN cells."""
    self.lists = list(lists)
    self.doc_base = np.asarray(doc_base if doc_base is not None else [0] * len(self.lists),
                               np.int64)
    self.centroids = np.concatenate([x.centroids for x in self.lists])
    counts = [len(x.centroids) for x in self.lists]
    self.cell_part = np.repeat(np.arange(len(self.lists)), counts)
    self.cell_local_start = np.concatenate([x.offsets[:-1] for x in self.lists])
    self.cell_size = np.concatenate([np.diff(x.offsets) for x in self.lists])
    part_base = np.concatenate([[0], np.cumsum([x.size for x in self.lists])])
    self.part_base = part_base.astype(np.int64)
    self.cell_start = self.cell_local_start + self.part_base[self.cell_part]
    self.cell_scale = np.array([x.scale for x in self.lists], np.float32)[self.cell_part]
    # Plain views of the mapped arrays (slicing a np.memmap costs a Python object of its
    # own), for the token-by-token paths.
    self._codes = [np.ascontiguousarray(x.codes, np.int8) for x in self.lists]
    self._own_labels = [np.ascontiguousarray(x.rows if label == "rows" else x.documents,
                                             np.int32) for x in self.lists]
    self._label_base = (np.zeros(len(self.lists), np.int64) if label == "rows"
                        else self.doc_base)
    self.size = int(part_base[-1])
    self.coarse = (_Coarse(self.centroids, coarse_grouping)
                   if len(self.centroids) > COARSE_MIN else None)
    # What the compiled scan reads: the cells' places and the parts' mapped arrays in place.
    self._scan_cells = (self.cell_part.astype(np.int32), self.cell_local_start.astype(np.int64),
                        self.cell_size.astype(np.int64), self.cell_scale)
    self._scan_parts = (native.pointer_table(self._codes),
                        native.pointer_table(self._own_labels), self._label_base)

  @functools.cached_property
  def _cell_lists(self) -> tuple[list[int], list[int], list[int]]:
    """The cells' (part, start, size) as Python lists, for the NumPy token-by-token path only
    (built on first use)."""
    return self.cell_part.tolist(), self.cell_local_start.tolist(), self.cell_size.tolist()

  @property
  def num_cells(self) -> int:
    return len(self.centroids)

  def _choose_cells(self, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` cells of highest centroid score per query token: ([t, count] int64, -1
    where the coarse level offered fewer; their scores [t, count])."""
    if self.coarse is not None and count < self.num_cells:
      groups = len(self.coarse.centres)
      members = max(COARSE_MEMBERS, 4 * count)
      wanted = math.ceil(members * groups / self.num_cells)
      return self.coarse.cells(queries, count, min(groups, wanted))
    scores = queries @ self.centroids.T
    cells = _top_items(scores, count)
    return cells, np.take_along_axis(scores, cells, 1)

  def _labels(self, flat_rows: np.ndarray) -> np.ndarray:
    """Label of global list positions `flat_rows` (one gather per part, not per row)."""
    if len(self.lists) == 1:
      return self._own_labels[0][flat_rows].astype(np.int64) + self._label_base[0]
    out = np.empty(len(flat_rows), np.int64)
    part = np.searchsorted(self.part_base, flat_rows, side="right") - 1
    for p in np.unique(part):
      at = np.flatnonzero(part == p)
      local = flat_rows[at] - self.part_base[p]
      out[at] = self._own_labels[p][local].astype(np.int64) + self._label_base[p]
    return out

  def _block(self, cell: int) -> np.ndarray:
    start = self.cell_local_start[cell]
    return self._codes[self.cell_part[cell]][start:start + self.cell_size[cell]].astype(
        np.float32)

  def _search_chunk(self, queries: np.ndarray, k: int, cells_to_search: int,
                    allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    cells, centre_scores = self._choose_cells(queries, cells_to_search)
    chosen = cells[cells >= 0]
    # The compiled scan reads int8 codes where they lie, so it beats converting shared cells
    # once (5x at 16 cells per token on SciFact); the choice is the NumPy fallback's only.
    if (native.ivf_scan() is not None
        or len(np.unique(chosen)) * SHARED_CELL_TOKENS > len(chosen)):
      return self._search_by_token(queries, cells, centre_scores, k, allowed)
    return self._search_by_cell(queries, cells, centre_scores, k, allowed)

  def _search_by_token(self, queries: np.ndarray, cells: np.ndarray,
                       centre_scores: np.ndarray, k: int,
                       allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each query token's chosen cells scored row by row where they are stored (the compiled
    scan, `native/ivf_scan.cc`; without it, gathered and scored by one matrix-vector product):
    the path when few tokens share a cell, whose cost does not grow with the cells in all."""
    scan = native.ivf_scan()
    if scan is not None:
      return _scan(scan, queries, cells, centre_scores, k, allowed, self._scan_cells,
                   self._scan_parts)
    labels = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    part_of, start_of, size_of = self._cell_lists
    for t in range(len(queries)):
      mine = cells[t] >= 0
      c, bias = cells[t][mine], centre_scores[t][mine]
      if not len(c):
        continue
      spans = [(part_of[x], start_of[x], start_of[x] + size_of[x]) for x in c.tolist()]
      size = self.cell_size[c]
      codes = np.concatenate([self._codes[p][a:b] for p, a, b in spans])
      flat = (codes.astype(np.float32) @ queries[t]) * np.repeat(self.cell_scale[c], size)
      flat += np.repeat(bias, size)
      own = np.concatenate([self._own_labels[p][a:b] for p, a, b in spans]).astype(np.int64)
      own += np.repeat(self._label_base[self.cell_part[c]], size)
      if allowed is not None:
        flat[~allowed[own]] = -np.inf
      best, best_scores = top_k_sorted(flat[None], np.arange(len(flat))[None], k)
      best = best[0][np.isfinite(best_scores[0])]
      scores[t, :len(best)] = flat[best]
      labels[t, :len(best)] = own[best]
    return labels, scores

  def _search_by_cell(self, queries: np.ndarray, cells: np.ndarray, centre_scores: np.ndarray,
                      k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct chosen cell scored once against every query token that chose it: the
    path when many tokens share cells (small indexes, large batches)."""
    t, p = cells.shape
    chosen = cells.ravel() >= 0
    tok = np.repeat(np.arange(t), p)
    item = np.maximum(cells.ravel(), 0)
    # Pairs without a cell (fewer cells than asked) score no rows.
    size = np.where(chosen, self.cell_size[item], 0)
    flat, pair_start = _pair_scores(queries, tok, item, size, self._block, self.cell_scale,
                                    centre_scores.ravel())
    if allowed is not None:
      every = _flat_rows(np.arange(len(flat)), pair_start, self.cell_start, item)
      flat[~allowed[self._labels(every)]] = -np.inf
    seg_len = size.reshape(t, p).sum(1)
    seg_start = pair_start[::p]
    found, scores = _segment_top_k(flat, seg_start, seg_len, k)
    labels = np.full(found.shape, -1, np.int64)
    ok = found >= 0
    labels[ok] = self._labels(_flat_rows(found[ok], pair_start, self.cell_start, item))
    return labels, scores

  def search(self, queries: np.ndarray, k: int, *, cells_to_search: int,
             allowed: np.ndarray | None = None,
             executor: concurrent.futures.Executor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Each query token's k best stored tokens among its chosen cells' lists.

    A query token whose chosen cells hold fewer than k (allowed) tokens is searched again
    with 4 times as many cells, until it has k or every cell is searched.

    Args:
      queries: [Q, h] float32.
      k: results per query token (fewer only when the whole index holds fewer: label -1,
        score -inf).
      cells_to_search: cells probed per query token.
      allowed: [N] bool over the labels (documents): tokens of other documents are skipped.
      executor: chunks of query tokens are searched in it (None: in the calling thread).

    Returns:
      (labels [Q, k] int64, scores [Q, k] float32), best first.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    cells = max(1, min(int(cells_to_search), self.num_cells))
    with _one_blas_thread():
      labels, scores = self._search_rows(queries, int(k), cells, allowed, executor)
      short = np.flatnonzero((labels < 0).any(axis=1))
      while len(short) and cells < self.num_cells:
        cells = min(self.num_cells, 4 * cells)
        lab, sc = self._search_rows(queries[short], int(k), cells, allowed, executor)
        labels[short], scores[short] = lab, sc
        short = short[(lab < 0).any(axis=1)]
    return labels, scores

  def _search_rows(self, queries: np.ndarray, k: int, cells: int, allowed: np.ndarray | None,
                   executor: concurrent.futures.Executor | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    threads = getattr(executor, "_max_workers", 1) if executor is not None else 1
    chunk = max(16, min(_TOKEN_CHUNK, math.ceil(len(queries) / threads)))
    starts = range(0, len(queries), chunk)
    one = lambda i: self._search_chunk(queries[starts[i]:starts[i] + chunk], k, cells,  # noqa
                                       allowed)
    parts = list(shard_search.ordered_map(one, len(starts), executor, 2 * threads))
    if not parts:
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class IvfSearcher:
  """The IVF backend of one shard: `search` probes its own cells only and returns searched
  rows; `token_index.TokenIndex` searches the cells of all its IVF shards together."""

  kind = "ivf"

  def __init__(self, lists: IvfLists, settings: IvfSettings, vectors_fn: Any):
    self.lists = lists
    self.settings_ = dataclasses.replace(settings, scale=lists.scale)
    self.size = lists.size
    self.vectors_fn = vectors_fn
    self._own = None

  @classmethod
  def build(cls, vectors: np.ndarray, documents: np.ndarray, settings: IvfSettings,
            vectors_fn: Any) -> "IvfSearcher":
    return cls(build_lists(vectors, documents, settings), settings, vectors_fn)

  @classmethod
  def load(cls, directory: pathlib.Path, settings: IvfSettings, size: int, dim: int,
           vectors_fn: Any) -> "IvfSearcher":
    return cls(load_lists(directory, settings, size, dim), settings, vectors_fn)

  def save(self, directory: pathlib.Path) -> None:
    save_lists(self.lists, directory)

  def settings(self) -> dict[str, Any]:
    return dataclasses.asdict(self.settings_)

  def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
             parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(searched rows [Q, k'], scores [Q, k']) of this shard alone, k' = min(k, size)."""
    del parallel
    if self._own is None:
      self._own = IvfIndex([self.lists], label="rows")
    k = min(int(k), self.size)
    cells = leaves_to_search or self.settings_.cells_to_search
    return self._own.search(queries, k, cells_to_search=cells)
