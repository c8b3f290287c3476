"""Maximum inner-product search over one shard's token vectors: ScaNN and an exact reference.

Both backends answer `search(queries [Q, h] float32, k) -> (rows [Q, k'] int64,
scores [Q, k'] float32)` with k' = min(k, size), each row sorted by score, highest first (ties:
lower row first for the exact backend). Scores are inner products with the *stored* vectors
(after float16 / int8 quantisation), so the exact backend is the recall reference for ScaNN.

ScaNN (`scann.scann_ops_pybind`) is configured as tree partitioning + asymmetric hashing (AH) +
reordering, with defaults scaled to the number of vectors n as ScaNN's documentation
recommends: about √n leaves, 2 dimensions per AH block, an anisotropic threshold of 0.2, and a
reorder pool larger than k. Reordering (`reorder`) is ScaNN's own, on an int8 copy of the
vectors by default ("float32" / "bfloat16" copies are more exact and larger); "stored"
instead rescores the AH candidates with this project's stored refinement vectors, which keeps
the index to AH codes + one copy of the vectors but runs in NumPy and is several times slower;
"none" keeps the AH scores.

On disk a ScaNN shard is ScaNN's own serialisation (`scann/`, `searcher.serialize`), loaded
as it is, through ScaNN's NumPy API (`_scann_numpy`: no TensorFlow in a serving process).
ScaNN reads its files into its own memory (it has no memory-mapped mode), so a loaded ScaNN
shard costs RAM for its AH codes (4-bit codes held two per byte: h / 4 bytes per token with
2-dimension blocks), its token → leaf map and leaf lists (4 bytes per token each) and its
reorder copy (int8: h bytes per token, bfloat16: 2h, float32: 4h; none for "stored" and
"none"). The refinement store of the shard stays memory-mapped; "stored" reordering reads
only the rows of each query's AH pool from it.

The AH codes stay one per byte on disk, the layout ScaNN loads directly, which nothing needs to
write. Packing them two per byte (as indexes written before did, `hashed_dataset.4bit.npz`)
halves their bytes on disk, 32 instead of 64 per 128-d token (7 % of an int8-reorder index
with float16 refinement vectors), but costs an unpacked copy at every load: such indexes still
load, through a temporary file. Caching the unpacked file beside the shard instead would make
the first load write into the index directory (which may be read-only, or shared by several
servers) and keep both copies on disk. bench/README.md ("Index load and serving memory") has
the measured load times and sizes of both layouts.
Searches hand ScaNN batches of queries small enough to keep every core busy
(`_parallel_batch_size`).

Results ScaNN cannot fill (too few points in the searched leaves) come back as row -1 with
score -inf.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import pathlib
import re
import sys
import tempfile
import threading
import types
from typing import Any, Callable, Iterator
import zipfile

import numpy as np

from aligner_jax import native_logs
from aligner_jax.index import files

REORDER_MODES = ("stored", "float32", "bfloat16", "int8", "none")
_SCANN_IMPORT = threading.Lock()
# Shards with fewer searched tokens are scanned exactly by ScaNN (the tail of a split can be
# a handful of tokens, fewer than AH's 16 centres per block need).
MIN_HASHED_POINTS = 64
BRUTE_FORCE = "brute_force"

# Rows of the database scored per block by the exact backend (bounds memory to
# queries × block floats).
_EXACT_BLOCK = 1 << 16
_QUERY_CHUNK = 256

VectorsFn = Callable[[np.ndarray], np.ndarray]  # rows [...] -> float32 [..., h]


def top_k_sorted(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per query row: the k best (score desc, row asc) of candidate `rows` with `scores` [Q, C]."""
  k = min(k, scores.shape[1])
  if k < scores.shape[1]:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(scores, part, 1)
    rows = np.take_along_axis(rows, part, 1)
  order = np.lexsort((rows, -scores), axis=1)
  return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


class ExactSearcher:
  """Brute-force MIPS over `size` stored vectors, read block-wise through `vectors_fn`."""

  kind = "exact"

  def __init__(self, size: int, vectors_fn: VectorsFn):
    self.size = int(size)
    self.vectors_fn = vectors_fn

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    queries = np.asarray(queries, np.float32)
    k = min(int(k), self.size)
    if k <= 0 or len(queries) == 0:
      return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    out_rows, out_scores = [], []
    blocks = [(s, min(s + _EXACT_BLOCK, self.size)) for s in range(0, self.size, _EXACT_BLOCK)]
    for q0 in range(0, len(queries), _QUERY_CHUNK):
      q = queries[q0:q0 + _QUERY_CHUNK]
      best_rows, best_scores = [], []
      for start, stop in blocks:
        block = self.vectors_fn(np.arange(start, stop))
        scores = q @ block.T  # [Qc, block]
        rows = np.broadcast_to(np.arange(start, stop), scores.shape)
        r, s = top_k_sorted(scores, rows, k)
        best_rows.append(r)
        best_scores.append(s)
      r, s = top_k_sorted(np.concatenate(best_scores, 1), np.concatenate(best_rows, 1), k)
      out_rows.append(r)
      out_scores.append(s)
    return np.concatenate(out_rows).astype(np.int64), np.concatenate(out_scores)

  def save(self, directory: pathlib.Path) -> None:
    del directory  # The exact backend reads the shard's stored vectors; nothing to add.

  def settings(self) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class ScannSettings:
  """Resolved ScaNN parameters for one shard (see `scann_settings` for the defaults)."""
  num_leaves: int
  leaves_to_search: int
  dims_per_block: int
  anisotropic_threshold: float
  reorder: str
  reorder_factor: float
  training_sample_size: int
  training_iterations: int
  hash_type: str

  def reorder_k(self, k: int, size: int) -> int:
    """Size of the pool of AH candidates that is rescored exactly to give the final k."""
    return max(k, min(size, int(math.ceil(self.reorder_factor * k))))


def scann_settings(n: int, *, num_leaves: int | None = None,
                   leaves_to_search: int | None = None, search_fraction: float = 0.2,
                   scan_factor: float = 8.0, expected_k: int = 4000, dims_per_block: int = 2,
                   anisotropic_threshold: float = 0.2, reorder: str = "int8",
                   reorder_factor: float = 2.0, training_sample_size: int = 100_000,
                   training_iterations: int = 12, hash_type: str = "lut16") -> ScannSettings:
  """ScaNN parameters for n vectors, defaults scaled with n.

  num_leaves ≈ √n (ScaNN's rule of thumb). leaves_to_search is the larger of
  `search_fraction` of the leaves and enough leaves to scan `scan_factor` × `expected_k`
  points: a large K′ such as ALIGNER's 4,000 needs many leaves. Measured on 48k MiniLM token
  vectors of SciFact (219 leaves), recall of the exact top-K′ reached 0.95 at about 20 % of
  the leaves for K′ = 100, 40 % for K′ = 1,000 and 60 % for K′ = 4,000.
  """
  if n <= 0:
    raise ValueError("cannot build a ScaNN index over zero vectors")
  if reorder not in REORDER_MODES:
    raise ValueError(f"reorder must be one of {REORDER_MODES}, got {reorder!r}")
  if reorder_factor < 1.0:
    raise ValueError(f"reorder_factor must be >= 1, got {reorder_factor}")
  if n < MIN_HASHED_POINTS:
    # Too few points to train AH codebooks (16 centres a block): scan them exactly.
    num_leaves, hash_type, reorder = 1, BRUTE_FORCE, "none"
  if num_leaves is None:
    num_leaves = max(1, int(round(math.sqrt(n))))
  num_leaves = max(1, min(int(num_leaves), n))
  if leaves_to_search is None:
    leaf_size = n / num_leaves
    leaves_to_search = max(math.ceil(search_fraction * num_leaves),
                           math.ceil(scan_factor * min(expected_k, n) / leaf_size))
  leaves_to_search = max(1, min(int(leaves_to_search), num_leaves))
  return ScannSettings(num_leaves=num_leaves, leaves_to_search=leaves_to_search,
                       dims_per_block=dims_per_block,
                       anisotropic_threshold=float(anisotropic_threshold), reorder=reorder,
                       reorder_factor=float(reorder_factor),
                       training_sample_size=min(int(training_sample_size), n),
                       training_iterations=int(training_iterations), hash_type=hash_type)


def _scann_numpy():
  """ScaNN's NumPy API (builder, searcher, `ReorderType`) without TensorFlow.

  `import scann` runs the package's `__init__`, which also loads ScaNN's TensorFlow ops: about
  20 s and 700 MB of resident memory per process, for ops the index never calls. When ScaNN
  is not imported yet, the package is registered without running its `__init__` and given the
  names that `__init__` binds apart from the TensorFlow ops (`ReorderType`, `ScannBuilder`,
  `scann_ops_pybind`); `import scann` elsewhere in the process then finds that module.
  """
  with _SCANN_IMPORT:  # shards load in threads; the first import must happen once
    return _scann_numpy_locked()


def _scann_numpy_locked():
  if "scann" not in sys.modules:
    spec = importlib.util.find_spec("scann")
    if spec is None or not spec.submodule_search_locations:
      raise ModuleNotFoundError("ScaNN is not installed (the index's scann backend needs it)")
    package = types.ModuleType("scann")
    package.__spec__, package.__path__ = spec, list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["scann"] = package
    try:
      from scann.scann_ops.py import scann_builder  # pylint: disable=g-import-not-at-top
      from scann.scann_ops.py import scann_ops_pybind  # pylint: disable=g-import-not-at-top
    except BaseException:
      del sys.modules["scann"]
      raise
    package.ReorderType = scann_builder.ReorderType
    package.ScannBuilder = scann_builder.ScannBuilder
    package.scann_ops_pybind = scann_ops_pybind
  return sys.modules["scann"]


class ScannSearcher:
  """ScaNN tree + AH + reorder over one shard; see the module docstring."""

  kind = "scann"
  SUBDIR = "scann"

  def __init__(self, searcher: Any, settings: ScannSettings, size: int, vectors_fn: VectorsFn):
    self.searcher = searcher
    self.settings_ = settings
    self.size = int(size)
    self.vectors_fn = vectors_fn

  @classmethod
  def build(cls, vectors: np.ndarray, settings: ScannSettings, vectors_fn: VectorsFn, *,
            training_threads: int = 1) -> "ScannSearcher":
    """Trains and builds the index over `vectors` [n, h] float32 (the dequantised store)."""
    scann = _scann_numpy()
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    s = settings
    builder = scann.scann_ops_pybind.builder(vectors, min(10, n), "dot_product")
    if s.num_leaves > 1:
      # k-means++ seeding: ScaNN's random centre initialisation draws from an unseeded
      # generator, so two builds of the same shard would differ; k-means++ uses its fixed
      # clustering seed, which makes the saved index a function of its input.
      builder = builder.tree(num_leaves=s.num_leaves, num_leaves_to_search=s.leaves_to_search,
                             training_sample_size=s.training_sample_size,
                             training_iterations=s.training_iterations, random_init=False)
    if s.hash_type == BRUTE_FORCE:
      builder = builder.score_brute_force(quantize=scann.ReorderType.FLOAT32)
    else:
      builder = builder.score_ah(s.dims_per_block,
                                 anisotropic_quantization_threshold=s.anisotropic_threshold,
                                 training_sample_size=s.training_sample_size,
                                 hash_type=s.hash_type)
    quantize = {"float32": scann.ReorderType.FLOAT32, "bfloat16": scann.ReorderType.BFLOAT16,
                "int8": scann.ReorderType.INT8}
    if s.reorder in quantize:
      builder = builder.reorder(s.reorder_k(min(4000, n), n), quantize=quantize[s.reorder])
    builder.set_n_training_threads(training_threads)
    with native_logs.native_stderr_to_log("ScaNN"):  # INFO lines of its partitioner training
      searcher = builder.build()
    return cls(searcher, settings, n, vectors_fn)

  @classmethod
  def load(cls, directory: pathlib.Path, settings: ScannSettings, size: int,
           vectors_fn: VectorsFn) -> "ScannSearcher":
    """ScaNN's files in `directory / "scann"`, checked against `size` (file headers only)
    and loaded into ScaNN; nothing is written."""
    target = directory / cls.SUBDIR
    check_scann_files(directory, size)
    scann = _scann_numpy()
    with _unpacked_assets(target, size) as assets, native_logs.native_stderr_to_log("ScaNN"):
      searcher = scann.scann_ops_pybind.ScannSearcher(
          scann.scann_ops_pybind.scann_pybind.ScannNumpy(os.fspath(target), assets))
    if searcher.size() != size:
      raise files.IndexFileError(target, f"ScaNN index holds {searcher.size()} "
                                 f"vectors but the manifest says {size} (mismatched shard)")
    return cls(searcher, settings, size, vectors_fn)

  def save(self, directory: pathlib.Path) -> None:
    target = directory / self.SUBDIR
    target.mkdir()
    # Relative asset paths keep the files valid after the atomic rename of the directory.
    self.searcher.serialize(os.fspath(target), relative_path=True)

  def settings(self) -> dict[str, Any]:
    return dataclasses.asdict(self.settings_)

  def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
             reorder_factor: float | None = None,
             parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """See the module docstring; `parallel`: spread the queries over ScaNN's threads (False
    when the caller already searches several shards at once)."""
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(int(k), self.size)
    if k <= 0 or len(queries) == 0:
      return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    s = self.settings_
    if reorder_factor is not None:
      s = dataclasses.replace(s, reorder_factor=float(reorder_factor))
    leaves = None if leaves_to_search is None else int(min(leaves_to_search, s.num_leaves))
    pool = s.reorder_k(k, self.size)
    if parallel:
      search = functools.partial(self.searcher.search_batched_parallel,
                                 batch_size=_parallel_batch_size(len(queries)))
    else:
      search = self.searcher.search_batched
    if s.reorder == "stored":
      rows, _ = search(queries, final_num_neighbors=pool, leaves_to_search=leaves)
      return self._rescore(queries, np.asarray(rows, np.int64), k)
    pre = pool if s.reorder != "none" else None
    rows, scores = search(queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre,
                          leaves_to_search=leaves)
    rows, scores = np.asarray(rows, np.int64), np.asarray(scores, np.float32)
    return _drop_missing(rows, scores)

  def _rescore(self, queries: np.ndarray, rows: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products with the stored vectors for each query's AH pool, then top k."""
    out_rows, out_scores = [], []
    for i in range(0, len(queries), 16):
      r = rows[i:i + 16]
      valid = (r >= 0) & (r < self.size)
      vecs = self.vectors_fn(np.where(valid, r, 0))  # [c, pool, h]
      scores = np.einsum("cph,ch->cp", vecs, queries[i:i + 16])
      scores = np.where(valid, scores, -np.inf).astype(np.float32)
      rr, ss = top_k_sorted(scores, np.where(valid, r, -1), k)
      out_rows.append(rr)
      out_scores.append(ss)
    return _drop_missing(np.concatenate(out_rows), np.concatenate(out_scores))


# Indexes written before this version kept ScaNN's 4-bit AH codes two per byte; they are
# unpacked for ScaNN at load time (see the module docstring).
_CODES = "hashed_dataset.npy"
_PACKED_CODES = "hashed_dataset.4bit.npz"
_ASSETS = "scann_assets.pbtxt"
# ScaNN's arrays with one row per indexed vector.
_PER_VECTOR = ("datapoint_to_token.npy", _CODES, "int8_dataset.npy", "bfloat16_dataset.npy",
               "dataset.npy")
_ASSET_PATH = re.compile(r'asset_path: "([^"]*)"')


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
  """uint8 [n, b] codes < 16 -> uint8 [n, ceil(b / 2)]: block 2j in the low nibble, 2j+1 high."""
  if codes.shape[1] % 2:
    codes = np.pad(codes, ((0, 0), (0, 1)))
  return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, blocks: int) -> np.ndarray:
  """Inverse of `pack_nibbles`: uint8 [n, ceil(b / 2)] -> uint8 [n, blocks]."""
  codes = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint8)
  codes[:, 0::2] = packed & 0x0F
  codes[:, 1::2] = packed >> 4
  return codes[:, :blocks]


def _packed_rows(path: pathlib.Path) -> int:
  """Rows of the packed AH codes in a `hashed_dataset.4bit.npz`, from the array header."""
  try:
    with zipfile.ZipFile(path) as z, z.open("packed.npy") as f:
      shape, _, dtype = files.parse_npy_header(f)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise files.IndexFileError(path, f"unreadable packed AH codes ({e})") from None
  if dtype != np.uint8 or len(shape) != 2:
    raise files.IndexFileError(path, f"packed AH codes are {dtype}{list(shape)}, expected "
                               "uint8 [n, b]")
  return int(shape[0])


def _asset_rows(target: pathlib.Path, name: str) -> tuple[pathlib.Path, int | None]:
  """The file holding the asset `name` of a saved ScaNN index and, when it has one row per
  vector, its number of rows (from its header; None for the other assets)."""
  if name == _CODES and (target / _PACKED_CODES).is_file():
    return target / _PACKED_CODES, _packed_rows(target / _PACKED_CODES)
  path = target / name
  if not path.is_file():
    raise files.IndexFileError(path, f"missing: {_ASSETS} lists it")
  if name not in _PER_VECTOR:
    return path, None
  shape = files.read_npy_header(path)[1]
  return path, shape[0] if shape else -1


def check_scann_files(directory: pathlib.Path, size: int) -> None:
  """Checks, reading headers only, that `directory / "scann"` holds every file its asset list
  names and that ScaNN's per-vector arrays have `size` rows.

  Raises:
    IndexFileError: naming the file that is missing or mismatched.
  """
  target = directory / ScannSearcher.SUBDIR
  assets_path = target / _ASSETS
  if not assets_path.is_file():
    raise files.IndexFileError(assets_path, "missing: not a saved ScaNN index")
  for name in _ASSET_PATH.findall(assets_path.read_text()):
    path, rows = _asset_rows(target, name)
    if rows is not None and rows != size:
      raise files.IndexFileError(path, f"ScaNN array for {rows} vectors but the manifest says "
                                 f"{size} (mismatched shard)")


@contextlib.contextmanager
def _unpacked_assets(target: pathlib.Path, rows: int) -> Iterator[str]:
  """ScaNN's asset list for `target`. For an index written with packed AH codes (of `rows`
  vectors), its `hashed_dataset.npy` entry points at an unpacked copy in a temporary file,
  which ScaNN reads into memory while loading; other indexes load from their own files."""
  assets = (target / _ASSETS).read_text()
  packed_path = target / _PACKED_CODES
  if not packed_path.is_file():
    yield assets
    return
  try:
    archive = files.load_npz(packed_path)
    packed, blocks = archive["packed"], int(archive["blocks"])
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise files.IndexFileError(packed_path, f"unreadable packed AH codes ({e})") from None
  if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != (blocks + 1) // 2:
    raise files.IndexFileError(packed_path, f"packed AH codes {packed.dtype}{list(packed.shape)} "
                               f"do not hold {blocks} 4-bit codes per row")
  if packed.shape[0] != rows:
    raise files.IndexFileError(packed_path, f"packed AH codes for {packed.shape[0]} vectors but "
                               f"the manifest says {rows} (mismatched shard)")
  entry = f'asset_path: "{_CODES}"'
  if assets.count(entry) != 1:
    raise files.IndexFileError(target / _ASSETS, f"expected one {entry} entry for the AH codes")
  with tempfile.TemporaryDirectory(prefix="aligner_jax_scann_") as tmp:
    unpacked = pathlib.Path(tmp) / _CODES
    np.save(unpacked, unpack_nibbles(packed, blocks))
    yield assets.replace(entry, f'asset_path: "{unpacked}"')


def _parallel_batch_size(num_queries: int) -> int:
  """Queries per ScaNN work item: at least 4 items per core, at most ScaNN's default 256.

  ScaNN's parallel search hands out batches of `batch_size` queries to its threads; with the
  default 256, 300 queries become batches of 256 and 44, and one core idles most of the call.
  """
  items = 4 * (os.cpu_count() or 1)
  return max(1, min(256, math.ceil(num_queries / items)))


def _drop_missing(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Marks results ScaNN could not fill (too few points in the searched leaves) as row -1."""
  missing = ~np.isfinite(scores) | (rows < 0)
  rows = np.where(missing, -1, rows)
  scores = np.where(missing, -np.inf, scores).astype(np.float32)
  return rows, scores
