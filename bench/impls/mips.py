"""Token MIPS implementations: exact NumPy (reference), the project's ScaNN backend, FAISS.

Every set-up returns (search, info): `search()` gives the ids [Q, k] int64 of the k best inner
products of each query token vector (-1 = unfilled), and `info` what building measured:
build_s (seconds, from the cache record when the index was built earlier) and
bytes_per_vector (serialised index size / vectors). Built indexes are cached under
`<ALIGNER_BENCH_CACHE>/mips/<dataset>/<method key>/` so that each operating point, timed in its
own process, does not rebuild them; the cache is written through a temp dir and a rename.

Parameters: dataset (cell: `encoded_dir` of the encode job's output, or `cache_docs` of the
bench's own cache; base_vectors, queries, seed) and k; the operating point (implementation
options):
  scann   leaves_fraction (share of the leaves searched), leaves_to_search, or neither (the
          project's default scaled with n and k); reorder_factor; build settings num_leaves
          (None: √n), dims_per_block (AH dimensions per 4-bit code) and reorder ("int8",
          "stored", ...).
  ivfpq   nlist (None: 2·√n), nprobe, k_factor (refine pool = k_factor · k); the FAISS index is
          "IVF{nlist},PQ{h/2}x4fs,Refine(SQ8)": 4-bit fast-scan PQ codes with an int8-like
          scalar-quantised copy for refinement, the same layout as the project's ScaNN index
          (AH codes + int8 reorder vectors).
  hnsw    M, ef_search; "HNSW{M}" over float32 vectors.
  flat    FAISS IndexFlatIP (exact).
"""

import json
import math
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np

from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json
from bench import minilm_vectors

QUERY_CHUNK = 256


def make_inputs(params: dict[str, Any]) -> dict[str, np.ndarray]:
  """base [n, h] and queries [Q, h] float32 MiniLM token vectors (see bench/minilm_vectors)."""
  if params.get("encoded_dir"):
    base = minilm_vectors.load_encoded_vectors(params["encoded_dir"], "corpus")
    queries = minilm_vectors.load_encoded_vectors(params["encoded_dir"], "queries-test")
  else:
    base = minilm_vectors.load_vectors(params["cache_docs"], "corpus")
    queries = minilm_vectors.load_vectors(params["cache_docs"], "queries")
  base = base[:params["base_vectors"]]
  rng = np.random.default_rng(params.get("seed", 0))
  pick = np.sort(rng.choice(len(queries), size=min(params["queries"], len(queries)),
                            replace=False))
  return {"base": np.ascontiguousarray(base), "queries": np.ascontiguousarray(queries[pick])}


def _cache(params: dict[str, Any], key: str) -> pathlib.Path:
  source = (pathlib.Path(params["encoded_dir"]).name if params.get("encoded_dir")
            else f"{params['cache_docs']}docs")
  return minilm_vectors.cache_root() / "mips" / f"{source}_{params['base_vectors']}vec" / key


def _cached_build(path: pathlib.Path, build: Callable[[pathlib.Path], None]) -> float:
  """Builds into `path` once (atomically); returns the recorded build seconds."""
  record = path / "build.json"
  if not record.is_file():
    with atomic_dir(path) as tmp:
      start = time.perf_counter()
      build(tmp)
      write_json(tmp / "build.json", {"build_s": time.perf_counter() - start})
  return float(json.loads(record.read_text())["build_s"])


def _dir_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "build.json")


def exact(params: dict[str, Any], inputs: dict[str, np.ndarray]):
  """Brute force in NumPy: GEMM per query chunk + argpartition; the recall reference."""
  base, queries, k = inputs["base"], inputs["queries"], params["k"]

  def run():
    out = []
    for i in range(0, len(queries), QUERY_CHUNK):
      scores = queries[i:i + QUERY_CHUNK] @ base.T
      top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
      order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
      out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out).astype(np.int64)

  return run, {"build_s": 0.0, "bytes_per_vector": base.shape[1] * 4.0}


def scann(params: dict[str, Any], inputs: dict[str, np.ndarray]):
  """The project's ScaNN backend (aligner_jax.index.backends), default settings for n and k."""
  from aligner_jax.index.backends import ScannSearcher
  from aligner_jax.index.backends import scann_settings
  base, queries, k = inputs["base"], inputs["queries"], params["k"]
  dims_per_block = int(params.get("dims_per_block", 2))
  reorder = params.get("reorder", "int8")
  settings = scann_settings(len(base), expected_k=k, dims_per_block=dims_per_block,
                            reorder=reorder, num_leaves=params.get("num_leaves"))
  # "u8": AH codes one per byte on disk, as ScaNN loads them (caches ending "_p4" hold the
  # earlier layout, packed two per byte).
  key = f"scann_l{settings.num_leaves}_k{k}_b{dims_per_block}_{reorder}_u8"
  vectors_fn = lambda rows: base[rows]  # noqa: E731
  path = _cache(params, key)

  def build(tmp: pathlib.Path):
    ScannSearcher.build(base, settings, vectors_fn).save(tmp)

  build_s = _cached_build(path, build)
  searcher = ScannSearcher.load(path, settings, len(base), vectors_fn)
  leaves = params.get("leaves_to_search")
  if params.get("leaves_fraction") is not None:
    leaves = max(1, round(params["leaves_fraction"] * settings.num_leaves))
  factor = params.get("reorder_factor")
  info = {"build_s": build_s, "bytes_per_vector": _dir_bytes(path / "scann") / len(base),
          "num_leaves": settings.num_leaves, "dims_per_block": dims_per_block,
          "reorder": reorder, "leaves_to_search": leaves or settings.leaves_to_search,
          "reorder_factor": factor or settings.reorder_factor}
  return (lambda: searcher.search(queries, k, leaves_to_search=leaves,
                                  reorder_factor=factor)[0]), info


def _faiss_index(params, inputs, key: str, factory: str, train: bool):
  import faiss
  base = inputs["base"]
  path = _cache(params, key)

  def build(tmp: pathlib.Path):
    index = faiss.index_factory(base.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if train:
      index.train(base)
    index.add(base)
    faiss.write_index(index, os.fspath(tmp / "index.faiss"))

  build_s = _cached_build(path, build)
  index = faiss.read_index(os.fspath(path / "index.faiss"))
  return index, {"build_s": build_s, "bytes_per_vector": _dir_bytes(path) / len(base),
                 "factory": factory}


def _search(index, queries, k):
  return lambda: np.asarray(index.search(queries, k)[1], np.int64)


def ivfpq(params: dict[str, Any], inputs: dict[str, np.ndarray]):
  import faiss
  n, h = inputs["base"].shape
  nlist = params.get("nlist") or max(1, int(round(2 * math.sqrt(n))))
  factory = f"IVF{nlist},PQ{h // 2}x4fs,Refine(SQ8)"
  index, info = _faiss_index(params, inputs, f"ivf{nlist}_pq{h // 2}x4fs_sq8", factory,
                             train=True)
  faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
  index.k_factor = float(params.get("k_factor", 2.0))
  info.update(nlist=nlist, nprobe=int(params["nprobe"]), k_factor=index.k_factor)
  return _search(index, inputs["queries"], params["k"]), info


def hnsw(params: dict[str, Any], inputs: dict[str, np.ndarray]):
  M = int(params.get("M", 32))
  index, info = _faiss_index(params, inputs, f"hnsw{M}", f"HNSW{M}", train=False)
  index.hnsw.efSearch = int(params["ef_search"])
  return _search(index, inputs["queries"], params["k"]), info


def flat(params: dict[str, Any], inputs: dict[str, np.ndarray]):
  import faiss
  index = faiss.IndexFlatIP(inputs["base"].shape[1])
  index.add(inputs["base"])
  return _search(index, inputs["queries"], params["k"]), {
      "build_s": 0.0, "bytes_per_vector": inputs["base"].shape[1] * 4.0}
