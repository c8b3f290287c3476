"""End-to-end retrieval on BEIR SciFact (test): ms/query and nDCG@10 per retrieval path.

Pipelines, each in its own fresh process (`--worker NAME`), over the same all-MiniLM-L6-v2
token vectors (384-d, float16, 256 tokens per document and query) read from the encode job's
cache, so encoding is excluded (it is measured by bench_encoder.py and reported separately):
  bm25                 bm25s (the project's `retrieval.BM25`) top-100: the first stage shared
                       by both re-rankers (its run is written once and read by them)
  aligner_jax_rerank   BM25 top-100 → MaxSim (top_k:1) re-ranking with `retrieval.rerank` +
                       `token_scorer` (`align_scores_candidates`, JAX)
  pylate_rerank        the same candidates re-ranked by PyLate's `rank.rerank` (torch)
  aligner_jax_index    the project's token index as it was: ScaNN over every token (the
                       index's own leaves to search), K′ = 256 neighbours per query token,
                       refinement with top_k:1 over the union of their documents
  aligner_jax_index_xtr  the same index with the fast first stage: `--num-neighbors` K′,
                       `--leaves-to-search`, candidates ranked by their XTR score from the
                       search results and only the best `--num-refine` R refined (top_k:1)
  aligner_jax_ivf_xtr  the fast first stage over the project's IVF index (`index/ivf.py`:
                       k-means cells of int8 residual codes, memory-mapped) instead of
                       ScaNN: `--ivf-cells` cells probed per query token, K′ and R as above
  aligner_jax_exact    exact search with the same alignment: every document refined (top_k:1)
  plaid                PLAID: a fast-plaid index built from the same vectors with PyLate's
                       PLAID settings, top-100 (PyLate's `indexes.PLAID` builds it in one
                       batch, which the shared machine's memory did not hold), searched with
                       PyLate's settings (8,192 documents fully scored per query)
  plaid_fast           the same index searched with fast-plaid's own defaults (4,096 fully
                       scored), plaid_faster with 1,024, plaid_fastest with 256 from 4
                       probed centroids per query token: fast-plaid computes in float16, which
                       this machine's CPU has no matrix instructions for, so its search time
                       follows the documents it fully scores
PLAID pipelines are timed on the first `--plaid-timed-queries` queries (a pass over all 300
with PyLate's settings takes minutes).
With `--head PATH.npz` (`--head-kind`, `--head-dim`) every pipeline that reads vectors runs on
the cached vectors mapped through a trained frozen-encoder head instead (R4's 128-d ColBERT
projection of docs/reproduction.md by default): `bench.head_vectors` writes them once as an
encode cache of their own under `<work-dir>/head-<head file stem>/` (with the indexes and runs
built on them), and the rows are named with a suffix saying so (`plaid_colbert128`, ...; BM25
reads no vectors and keeps its name). With `--alignment top_k:1,top_k:2` (default top_k:1,
MaxSim) each of the project's pipelines runs once per ALIGNER alignment listed, in the same
run (rows of another alignment than MaxSim named `<pipeline>_top_k2`, ...); the peers run once
(they only compute MaxSim).
Per pipeline: set-up (index build) is timed once and reported as build_s; one untimed pass over
the judged test queries (all, or the first `--max-queries`) gives the run (nDCG@10 etc. by
pytrec_eval, `eval.ir_metrics`); then `--runs` (≥ 5) timed passes over the first
`--timed-queries` queries (all of them by default) give ms/query (median, interquartile range);
exact search is timed on its first `--exact-timed-queries` (32) only: a pass over all 300
queries scores 1.5M (query, document) pairs. Runs are written to `--work-dir`; results to
bench/results/end_to_end.json (table schema, one row per pipeline with `num_queries`, with the
machine and load averages).

PyLate and PLAID are not dependencies of the project: they run in a bench-only virtualenv of
their own (`--peer-python`, default $ALIGNER_BENCH_PEER_PYTHON or /work/plaid-venv/bin/python:
torch 2.11.0, fast-plaid 1.7.0.2110, pylate 1.6.0; `make bench-peer-env` creates it, see
bench/README.md), each worker in a fresh process with 2 torch threads; when it cannot run, the
row records exactly why.

  python -m bench.bench_end_to_end [--quick] [--encoded-dir /work/cache/minilm/scifact]
      [--pipelines bm25,aligner_jax_rerank,...] [--max-queries 0] [--timed-queries 300]
      [--num-neighbors 128] [--leaves-to-search 40] [--num-refine 64] [--runs 5]
      [--head runs/frozen/heads/colbert-seed0-<key>.npz --keep-other-rows]
      [--alignment top_k:1,top_k:2]
"""

import argparse
import functools
import importlib.metadata
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Any
import warnings

import numpy as np

from aligner_jax.io import atomic_write
from aligner_jax.io import write_json
from bench import harness
from bench import head_vectors

PIPELINES = ("bm25", "aligner_jax_rerank", "pylate_rerank", "aligner_jax_index",
             "aligner_jax_index_xtr", "aligner_jax_ivf_xtr", "aligner_jax_exact", "plaid",
             "plaid_fast", "plaid_faster", "plaid_fastest")
FRAMEWORK = {"bm25": "numpy", "aligner_jax_rerank": "jax", "pylate_rerank": "torch",
             "aligner_jax_index": "jax", "aligner_jax_index_xtr": "jax",
             "aligner_jax_ivf_xtr": "jax", "aligner_jax_exact": "jax", "plaid": "torch",
             "plaid_fast": "torch", "plaid_faster": "torch", "plaid_fastest": "torch"}
# Run by the peer virtualenv's python.
PEER_PIPELINES = ("pylate_rerank", "plaid", "plaid_fast", "plaid_faster", "plaid_fastest")
VECTOR_FREE = ("bm25",)  # pipelines that read no token vectors (named alike with --head)
DEPTH = 100  # BM25 candidates re-ranked, and documents PyLate's PLAID returns
TOP_N = 1000  # documents the token index returns (R@1000 in the project README)
LENGTH = 256  # tokens per document and query in the encode cache
DEFAULT_ENCODED = "/work/cache/minilm/scifact"
DEFAULT_WORK = "/work/cache/bench_end_to_end"
DEFAULT_PEER_PYTHON = os.environ.get("ALIGNER_BENCH_PEER_PYTHON", "/work/plaid-venv/bin/python")
ALIGNMENT = "top_k:1"  # the default refinement alignment (`--alignment`): MaxSim
# The fast first stage's settings, measured on SciFact (bench/sweep_first_stage.py).
FAST_NEIGHBORS = 64
FAST_LEAVES = 20
FAST_REFINE = 64
OLD_NEIGHBORS = 256  # K′ of the token index path before the fast first stage
IVF_CELLS = 8  # IVF cells probed per query token by the fast first stage
PEER_THREADS = 2  # torch threads of the peers: the machine's two cores, as XLA uses them
# PyLate 1.6's `indexes.PLAID` defaults, passed to fast-plaid itself.
PLAID_BUILD = {"nbits": 4, "kmeans_niters": 4, "max_points_per_centroid": 256, "seed": 42}
PLAID_SEARCH = {"n_ivf_probe": 8, "n_full_scores": 8192}
# The PLAID pipelines' search settings: PyLate's, fast-plaid's own defaults, fewer full scores.
PLAID_SETTINGS = {"plaid": PLAID_SEARCH, "plaid_fast": {"n_ivf_probe": 8, "n_full_scores": 4096},
                  "plaid_faster": {"n_ivf_probe": 8, "n_full_scores": 1024},
                  "plaid_fastest": {"n_ivf_probe": 4, "n_full_scores": 256}}
PLAID_TIMED_QUERIES = 64
PLAID_BUILD_BATCH = 1000
# Documents whose tokens train PLAID's 16,384 centroids. fast-plaid's default on SciFact is all
# 5,183 (1.24M tokens): that k-means ran for over 20 minutes on the shared machine and was
# OOM-killed at 2.7 GB; 1,024 documents (≈ 245k tokens, 15 per centroid) build in minutes.
PLAID_KMEANS_DOCS = 1024
COLUMNS = ("pipeline", "framework", "stages", "status", "ms_per_query", "ms_iqr",
           "first_stage_ms", "total_ms_per_query", "ndcg@10", "mrr@10", "recall@100",
           "num_queries", "build_s", "timed_queries", "runs", "note")


# ------------------------------------------------------------------------------------------
# Inputs every worker reads without importing JAX (the PyLate workers run torch only).


def read_store(directory: pathlib.Path) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(ids, offsets [N + 1], vectors [T, h] memory-mapped) of an encoded token store directory.

  The aligner_jax workers load the same directory through `index.token_store_io` (checksums
  verified); this NumPy-only view serves the torch workers.
  """
  ids = json.loads((directory / "doc_ids.json").read_text())
  offsets = np.load(directory / "offsets.npy")
  vectors = np.load(directory / "vectors.npy", mmap_mode="r")
  if len(offsets) != len(ids) + 1 or offsets[-1] != len(vectors):
    raise ValueError(f"{directory}: offsets.npy does not match doc_ids.json and vectors.npy")
  return ids, offsets, vectors


def judged_queries(beir_dir: pathlib.Path, split: str = "test") -> list[str]:
  """Judged query ids of `split`, in qrels file order (NumPy-only; no JAX)."""
  seen: dict[str, None] = {}
  path = beir_dir / "qrels" / f"{split}.tsv"
  for number, line in enumerate(path.read_text().splitlines(), 1):
    cols = line.split("\t")
    if number == 1 and cols[0] == "query-id":
      continue
    if len(cols) != 3:
      raise ValueError(f"{path}:{number}: expected 3 tab-separated columns, got {len(cols)}")
    if int(cols[2]) > 0:
      seen.setdefault(cols[0], None)
  return list(seen)


def read_run(path: pathlib.Path) -> dict[str, dict[str, float]]:
  return json.loads(path.read_text())


def write_run(path: pathlib.Path, run: dict[str, Any]) -> None:
  atomic_write(path, json.dumps(run))  # json.dumps keeps any NaN a pipeline produced


def timed_passes(fn, runs: int) -> list[float]:
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


# ------------------------------------------------------------------------------------------
# Workers: each returns {"run": full run, "times_s": [...], "build_s": float, "note": str}.


def _bm25(spec: dict[str, Any]) -> dict[str, Any]:
  from aligner_jax.data.beir import read_beir  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import BM25  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import to_run  # pylint: disable=g-import-not-at-top
  collection = read_beir(spec["beir_dir"], splits=["test"])
  corpus = collection.corpus
  qids = spec["queries"]
  texts = [collection.queries.texts[collection.queries.index[q]] for q in qids]
  t = time.perf_counter()
  bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
  build_s = time.perf_counter() - t
  run = to_run(qids, corpus.ids, bm25.search(texts, DEPTH))
  timed = texts[:spec["timed_queries"]]
  return {"run": run, "build_s": build_s, "times_s": timed_passes(
      lambda: bm25.search(timed, DEPTH), spec["runs"]),
          "note": "bm25s, k1 = 0.9, b = 0.4, Snowball stemming; the build tokenises the corpus"}


def _aligner_jax_rerank(spec: dict[str, Any]) -> dict[str, Any]:
  from aligner_jax.eval import inputs  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store_io import load_token_store  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import alignment_pair_fn  # noqa
  from aligner_jax.retrieval import rerank  # noqa
  from aligner_jax.retrieval import token_scorer  # noqa
  encoded = pathlib.Path(spec["encoded_dir"])
  store = load_token_store(inputs.corpus_shards(encoded)[0])
  queries = inputs.load_encoded_queries(encoded / "queries-test", spec["queries"],
                                      query_length=LENGTH)
  first = read_run(pathlib.Path(spec["first_stage"]))
  scorer = token_scorer(queries, store, alignment_pair_fn(spec["alignment"]))
  run = rerank(first, scorer, depth=DEPTH)  # also compiles every shape the timed passes use
  timed = {q: first[q] for q in spec["queries"][:spec["timed_queries"]]}
  return {"run": run, "build_s": 0.0, "times_s": timed_passes(
      lambda: rerank(timed, scorer, depth=DEPTH), spec["runs"]),
          "note": f"{spec['alignment']} via align_scores_candidates, documents padded to "
                  "multiples of 32 tokens; one jit per padded shape, compiled in the untimed "
                  "pass"}


def _pylate_import(spec: dict[str, Any]):
  """PyLate from the peer virtualenv, torch limited to the threads every pipeline gets."""
  del spec  # the worker runs under the peer virtualenv's python (PEER_PIPELINES)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(PEER_THREADS)
  import pylate  # pylint: disable=g-import-not-at-top
  return pylate


def _read_corpus_and_queries(spec: dict[str, Any]) -> tuple[tuple, tuple]:
  """`read_store` of the encode cache's (first) corpus shard and its test queries."""
  encoded = pathlib.Path(spec["encoded_dir"])
  return (read_store(sorted(encoded.glob("corpus-*-of-*"))[0]),
          read_store(encoded / "queries-test"))


def _torch_vectors(vectors: np.ndarray, offsets: np.ndarray, rows,
                   dtype=np.float32) -> list:
  """One tensor per row: copies in `dtype`, or, with dtype None, views of the (memory-mapped,
  read-only) stored vectors that the consumer only reads (no copy, no anonymous memory)."""
  import torch  # pylint: disable=g-import-not-at-top
  if dtype is None:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
      return [torch.from_numpy(vectors[offsets[r]:offsets[r + 1]]) for r in rows]
  return [torch.from_numpy(np.array(vectors[offsets[r]:offsets[r + 1]], dtype)) for r in rows]


def _pylate_rerank(spec: dict[str, Any]) -> dict[str, Any]:
  pylate = _pylate_import(spec)
  from pylate import rank  # pylint: disable=g-import-not-at-top
  (doc_ids, doc_off, doc_vec), (q_ids, q_off, q_vec) = _read_corpus_and_queries(spec)
  doc_row = {d: i for i, d in enumerate(doc_ids)}
  q_row = {q: i for i, q in enumerate(q_ids)}
  first = read_run(pathlib.Path(spec["first_stage"]))

  def rerank_all(qids):
    cands = [sorted(first[q], key=lambda d: -first[q][d])[:DEPTH] for q in qids]
    out = rank.rerank(
        documents_ids=cands,
        queries_embeddings=_torch_vectors(q_vec, q_off, [q_row[q] for q in qids]),
        documents_embeddings=[_torch_vectors(doc_vec, doc_off, [doc_row[d] for d in c])
                              for c in cands])
    return {q: {r["id"]: float(r["score"]) for r in res} for q, res in zip(qids, out)}

  run = rerank_all(spec["queries"])
  timed = spec["queries"][:spec["timed_queries"]]
  return {"run": run, "build_s": 0.0,
          "times_s": timed_passes(lambda: rerank_all(timed), spec["runs"]),
          "note": f"pylate {pylate.__version__} rank.rerank (colbert_scores, torch "
                  "einsum); float16 vectors converted to float32 tensors in the timed pass"}


def load_index_and_queries(spec: dict[str, Any], backend: str = "scann"):
  """The token index of `backend` over the encode cache (built once in the work directory,
  then loaded), the queries and the first build's seconds."""
  from aligner_jax.eval import inputs  # pylint: disable=g-import-not-at-top
  from aligner_jax.index import IndexConfig  # pylint: disable=g-import-not-at-top
  from aligner_jax.index import index_exists  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store_io import load_token_store  # pylint: disable=g-import-not-at-top
  encoded = pathlib.Path(spec["encoded_dir"])
  index_dir = pathlib.Path(spec["work_dir"]) / f"{backend}_index"
  build_file = pathlib.Path(spec["work_dir"]) / f"{backend}_index.build.json"
  built_now = not index_exists(index_dir)
  t = time.perf_counter()
  index = inputs.obtain_index(
      str(index_dir), IndexConfig(backend=backend), rebuild=False, log=lambda m: None,
      corpus_fn=lambda: load_token_store(inputs.corpus_shards(encoded)[0]))
  if built_now:
    write_json(build_file, {"build_s": time.perf_counter() - t})
  build_s = json.loads(build_file.read_text())["build_s"] if build_file.exists() else None
  queries = inputs.load_encoded_queries(encoded / "queries-test", spec["queries"],
                                      query_length=LENGTH)
  return index, queries, build_s


def _index_worker(spec: dict[str, Any], settings: dict[str, Any],
                  backend: str = "scann") -> dict[str, Any]:
  """The token index path with `settings` (num_neighbors, leaves_to_search, num_refine)."""
  from aligner_jax.retrieval import candidate_documents  # noqa
  from aligner_jax.retrieval import refine  # noqa
  from aligner_jax.retrieval import to_run  # noqa
  index, queries, build_s = load_index_and_queries(spec, backend)
  search_options = ({} if settings["leaves_to_search"] is None
                    else {"leaves_to_search": settings["leaves_to_search"]})

  def search(batch):
    cands = candidate_documents(index, batch, num_neighbors=settings["num_neighbors"],
                                num_refine=settings["num_refine"], **search_options)
    return cands, refine(index, batch, cands, spec["alignment"], top_n=TOP_N)

  cands, results = search(queries)
  run = to_run(queries.ids, index.doc_ids, results)
  timed = queries.select(slice(0, spec["timed_queries"]))
  search(timed)  # the timed block's shapes, compiled before timing
  own = index.shards[0].searcher.settings()
  if backend == "ivf":
    effort = (f"IVF, {settings['leaves_to_search'] or own['cells_to_search']} of "
              f"{sum(s.searcher.settings()['num_cells'] for s in index.shards)} cells searched")
  else:
    effort = (f"ScaNN, {settings['leaves_to_search'] or own['leaves_to_search']} of "
              f"{own['num_leaves']} leaves searched")
  refined = (f"the best R = {settings['num_refine']} by XTR score refined"
             if settings["num_refine"] else "every candidate refined")
  return {"run": run, "build_s": build_s, "times_s": timed_passes(
      lambda: search(timed), spec["runs"]),
          "note": f"{effort}, K′ = {settings['num_neighbors']} per query token, mean "
                  f"{cands.sizes().mean():.0f} candidate documents per query, {refined} "
                  "(all-pairs align_scores); build_s from the first build"}


def _aligner_jax_index(spec: dict[str, Any]) -> dict[str, Any]:
  return _index_worker(spec, {"num_neighbors": OLD_NEIGHBORS, "leaves_to_search": None,
                              "num_refine": None})


def _aligner_jax_index_xtr(spec: dict[str, Any]) -> dict[str, Any]:
  return _index_worker(spec, spec["xtr"])


def _aligner_jax_ivf_xtr(spec: dict[str, Any]) -> dict[str, Any]:
  return _index_worker(spec, spec["ivf"], backend="ivf")


def _aligner_jax_exact(spec: dict[str, Any]) -> dict[str, Any]:
  from aligner_jax.retrieval import all_documents  # noqa
  from aligner_jax.retrieval import refine  # noqa
  from aligner_jax.retrieval import to_run  # noqa
  index, queries, _ = load_index_and_queries(spec)

  def search(batch):
    return refine(index, batch, all_documents(index, batch), spec["alignment"], top_n=TOP_N)

  run = to_run(queries.ids, index.doc_ids, search(queries))
  timed = queries.select(slice(0, spec["exact_timed_queries"]))
  search(timed)
  return {"run": run, "build_s": 0.0, "timed_queries": len(timed),
          "times_s": timed_passes(lambda: search(timed), spec["runs"]),
          "note": f"every document refined with {spec['alignment']} (the exact result of the "
                  f"token index path); timed on the first {len(timed)} queries"}


def _plaid_index(spec: dict[str, Any], doc_ids, doc_off, doc_vec):
  """fast-plaid's index of the corpus with PyLate's PLAID build settings, built once in the
  work directory (its build seconds recorded beside it) and loaded by later runs.

  PyLate's `indexes.PLAID` hands the whole corpus to fast-plaid's build in one batch; on the
  shared 24 GiB machine that build (4.8 GB resident) was killed by the OOM killer, so the
  index is built here in batches of `PLAID_BUILD_BATCH` documents (same index otherwise).
  """
  from fast_plaid import search as fast_plaid  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(spec["work_dir"]) / "fast_plaid"
  record = folder.with_name("fast_plaid.build.json")
  settings = {**PLAID_BUILD, "batch_size": PLAID_BUILD_BATCH,
              "n_samples_kmeans": PLAID_KMEANS_DOCS, "documents": len(doc_ids)}
  if record.exists() and json.loads(record.read_text())["settings"] == settings:
    return fast_plaid.FastPlaid(index=str(folder), device="cpu"), json.loads(
        record.read_text())["build_s"]
  record.unlink(missing_ok=True)
  shutil.rmtree(folder, ignore_errors=True)  # fast-plaid's own files: a partial build
  t = time.perf_counter()
  index = fast_plaid.FastPlaid(index=str(folder), device="cpu")
  # The stored float16 vectors, read in place: fast-plaid computes in float16 anyway.
  index.create(documents_embeddings=_torch_vectors(doc_vec, doc_off, range(len(doc_ids)), None),
               batch_size=PLAID_BUILD_BATCH, n_samples_kmeans=PLAID_KMEANS_DOCS, **PLAID_BUILD)
  build_s = time.perf_counter() - t
  write_json(record, {"settings": settings, "build_s": build_s})
  return index, build_s


def _plaid_worker(spec: dict[str, Any], name: str) -> dict[str, Any]:
  """PLAID through fast-plaid directly: PyLate's build settings, `PLAID_SETTINGS[name]`'s
  search settings; timed on the first `plaid_timed_queries` queries."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(PEER_THREADS)
  (doc_ids, doc_off, doc_vec), (q_ids, q_off, q_vec) = _read_corpus_and_queries(spec)
  q_row = {q: i for i, q in enumerate(q_ids)}
  index, build_s = _plaid_index(spec, doc_ids, doc_off, doc_vec)
  settings = PLAID_SETTINGS[name]

  def search(qids):
    out = index.search(
        queries_embeddings=_torch_vectors(q_vec, q_off, [q_row[q] for q in qids]), top_k=DEPTH,
        show_progress=False, n_processes=PEER_THREADS, **settings)
    return {q: {doc_ids[d]: float(score) for d, score in res} for q, res in zip(qids, out)}

  run = search(spec["queries"])
  timed = spec["queries"][:spec["plaid_timed_queries"]]
  return {"run": run, "build_s": build_s, "timed_queries": len(timed),
          "times_s": timed_passes(lambda: search(timed), spec["runs"]),
          "note": f"fast-plaid {importlib.metadata.version('fast-plaid')} (torch "
                  f"{torch.__version__}, {PEER_THREADS} threads), PyLate 1.6's PLAID build "
                  f"settings {PLAID_BUILD}, search {settings}, top {DEPTH}; built in batches of "
                  f"{PLAID_BUILD_BATCH} documents, centroids trained on {PLAID_KMEANS_DOCS} "
                  f"sampled documents; timed on the first {len(timed)} queries"}


WORKERS = {"bm25": _bm25, "aligner_jax_rerank": _aligner_jax_rerank,
           "pylate_rerank": _pylate_rerank, "aligner_jax_index": _aligner_jax_index,
           "aligner_jax_index_xtr": _aligner_jax_index_xtr,
           "aligner_jax_ivf_xtr": _aligner_jax_ivf_xtr,
           "aligner_jax_exact": _aligner_jax_exact,
           **{name: functools.partial(_plaid_worker, name=name) for name in PLAID_SETTINGS}}


def worker_main(name: str, spec_path: str) -> int:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  out = pathlib.Path(spec["out"])
  try:
    result = WORKERS[name](spec)
    if "torch" in sys.modules and "jax" in sys.modules:
      raise RuntimeError("torch and jax are both loaded in one process")
    write_run(out.with_suffix(".run.json"), result.pop("run"))
    result["status"] = "ok"
  except BaseException as e:  # noqa: BLE001 - the parent records every failure
    traceback.print_exc(file=sys.stderr)
    result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
  result["loadavg_end"] = list(os.getloadavg())
  atomic_write(out, json.dumps(result))
  return 0 if result["status"] == "ok" else 1


# ------------------------------------------------------------------------------------------
# The parent.


def _spawn(name: str, spec: dict[str, Any], work: pathlib.Path, timeout_s: float,
           python: str, tag: str | None = None) -> dict[str, Any]:
  """Runs worker `name` on `spec` in a fresh process; its files are named by `tag` (default
  the name): `<tag>.spec.json`, `.result.json`, `.result.run.json`, `.log`."""
  tag = tag or name
  spec_path = work / f"{tag}.spec.json"
  spec = {**spec, "out": str(work / f"{tag}.result.json")}
  atomic_write(spec_path, json.dumps(spec))
  pathlib.Path(spec["out"]).unlink(missing_ok=True)
  log_path = work / f"{tag}.log"
  start = time.perf_counter()
  with open(log_path, "w") as log:
    try:
      proc = subprocess.run([python, "-m", "bench.bench_end_to_end", "--worker", name,
                             str(spec_path)], cwd=harness.REPO_ROOT, env=harness.worker_env(),
                            stdout=log, stderr=log, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      return {"status": "timeout", "error": f"no result within {timeout_s:.0f} s"}
  out = pathlib.Path(spec["out"])
  if not out.exists():
    code = proc.returncode
    how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
    tail = log_path.read_text(errors="replace")[-1500:]
    return {"status": "error", "error": f"worker wrote no result ({how}); log tail:\n{tail}"}
  result = json.loads(out.read_text())
  result["wall_s"] = time.perf_counter() - start
  return result


def row_name(pipeline: str, suffix: str, alignment: str = ALIGNMENT) -> str:
  """The result row's name of `pipeline` run on vectors named by `suffix` ("" for MiniLM's
  own, `head_vectors.head_suffix` for a head's); the project's pipelines scoring with another
  `alignment` than MaxSim end in it too (`_top_k2` for "top_k:2", `_top_p0.015`)."""
  if pipeline in VECTOR_FREE:
    return pipeline
  if alignment != ALIGNMENT and pipeline not in PEER_PIPELINES:
    suffix += "_" + alignment.replace(":", "")
  return f"{pipeline}{suffix}"


def _keep_rows(table: harness.TableRun, path: pathlib.Path, rerun: list[str]) -> None:
  """Copies into `table` the rows of `path` whose pipeline is not in `rerun`, noting their
  run's start time (a table written by an earlier invocation with other pipelines)."""
  if not path.exists():
    return
  old = harness.load_result(path)
  columns = old["columns"]
  for values in old["rows"]:
    row = dict(zip(columns, values))
    if row.get("pipeline") in rerun or set(COLUMNS) - set(row):
      continue
    row["note"] = f"[measured in the run of {old['started']}] {row['note']}"
    table.add({c: row[c] for c in COLUMNS})


def main(argv: list[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--worker"]:
    sys.exit(worker_main(argv[1], argv[2]))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="the first 64 queries only")
  parser.add_argument("--encoded-dir", default=DEFAULT_ENCODED)
  parser.add_argument("--beir-dir", default=str(harness.REPO_ROOT.parent / "shared" / "data" /
                                                "beir" / "scifact"))
  parser.add_argument("--work-dir", default=DEFAULT_WORK, help="runs, built indexes, logs")
  parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON,
                      help="python of the bench-only virtualenv with PyLate and fast-plaid")
  parser.add_argument("--pipelines", default=",".join(PIPELINES))
  parser.add_argument("--max-queries", type=int, default=0,
                      help="evaluate only the first N judged queries (0: all)")
  parser.add_argument("--timed-queries", type=int, default=0, help="0: all evaluated")
  parser.add_argument("--exact-timed-queries", type=int, default=32)
  parser.add_argument("--plaid-timed-queries", type=int, default=PLAID_TIMED_QUERIES)
  parser.add_argument("--runs", type=int, default=harness.MIN_RUNS)
  parser.add_argument("--num-neighbors", type=int, default=FAST_NEIGHBORS,
                      help="K′ of the fast first stage")
  parser.add_argument("--leaves-to-search", type=int, default=FAST_LEAVES,
                      help="ScaNN leaves searched per query token by the fast first stage")
  parser.add_argument("--num-refine", type=int, default=FAST_REFINE,
                      help="R, candidates refined per query by the fast first stage")
  parser.add_argument("--ivf-cells", type=int, default=IVF_CELLS,
                      help="IVF cells searched per query token (aligner_jax_ivf_xtr)")
  parser.add_argument("--alignment", default=ALIGNMENT,
                      help="comma-separated alignments the project's pipelines score with, each "
                           "a row of its own (rows of another than top_k:1 are named "
                           "<pipeline>_<alignment>, e.g. _top_k2)")
  parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
  head_vectors.add_head_args(
      parser, "the pipelines run on the mapped vectors (written once under the work dir) and "
              "their rows are named <pipeline>_<kind><dim>")
  harness.add_results_dir_arg(parser)
  parser.add_argument("--no-report", action="store_true")
  parser.add_argument("--keep-other-rows", action="store_true",
                      help="keep the rows of pipelines not run now from the existing results "
                           "file (each row's note says when it was measured)")
  args = harness.resolve_results_dir(parser.parse_args(argv))
  if args.runs < harness.MIN_RUNS:
    parser.error(f"--runs must be at least {harness.MIN_RUNS}")
  names = [p for p in args.pipelines.split(",") if p]
  unknown = [p for p in names if p not in PIPELINES]
  if unknown:
    parser.error(f"unknown pipelines {unknown}; known: {list(PIPELINES)}")
  encoded = pathlib.Path(args.encoded_dir)
  for need in (encoded / "queries-test" / "manifest.json",):
    if not need.is_file() or not list(encoded.glob("corpus-*-of-*/manifest.json")):
      parser.error(f"{encoded}: no complete encode cache (corpus-*-of-*/ and queries-test/ "
                   "with manifest.json); regenerate it with the encode command in "
                   "bench/README.md")
  work = pathlib.Path(args.work_dir)
  suffix = ""
  if args.head:
    # The head's own work dir: its ScaNN index, runs and logs never mix with MiniLM's.
    work = work / f"head-{pathlib.Path(args.head).stem}"
    encoded = head_vectors.write_head_cache(
        encoded, args.head, args.head_kind, args.head_dim, work / "vectors",
        log=lambda m: print(f"[end_to_end] {m}", file=sys.stderr, flush=True))
    suffix = head_vectors.head_suffix(args.head_kind, args.head_dim)
  from aligner_jax.scoring.alignment import Alignment  # pylint: disable=g-import-not-at-top
  alignments = list(dict.fromkeys(str(Alignment.parse(a)) for a in args.alignment.split(",")))
  name_of = lambda pipeline, alignment: row_name(pipeline, suffix, alignment)  # noqa: E731
  jobs = [(name, a) for name in names
          for a in ((ALIGNMENT,) if name in PEER_PIPELINES + VECTOR_FREE else alignments)]
  work.mkdir(parents=True, exist_ok=True)
  queries = judged_queries(pathlib.Path(args.beir_dir))
  max_queries = args.max_queries or (64 if args.quick else 0)
  if max_queries > 0:
    queries = queries[:max_queries]
  timed_queries = min(args.timed_queries or len(queries), len(queries))
  xtr = {"num_neighbors": args.num_neighbors, "leaves_to_search": args.leaves_to_search,
         "num_refine": args.num_refine}
  spec = {"encoded_dir": str(encoded), "beir_dir": args.beir_dir, "work_dir": str(work),
          "queries": queries, "runs": args.runs, "timed_queries": timed_queries,
          "exact_timed_queries": min(args.exact_timed_queries, timed_queries), "xtr": xtr,
          "plaid_timed_queries": min(args.plaid_timed_queries, timed_queries),
          "ivf": {**xtr, "leaves_to_search": args.ivf_cells},
          "first_stage": str(work / "bm25.result.run.json")}
  if any(p.endswith("rerank") for p in names) and "bm25" not in names:
    names.insert(0, "bm25")
  table = harness.TableRun(
      "end_to_end",
      f"BEIR SciFact test (the first {len(queries)} judged queries), all-MiniLM-L6-v2 "
      "token vectors "
      "(384-d, float16, cached; encoding excluded); pipelines named <pipeline>_<kind><dim> "
      "run on the same vectors mapped through a head trained on them (their notes name it: "
      f"R4's 128-d ColBERT projection for _colbert128). ms/query: median of {args.runs} timed "
      f"passes over the first {spec['timed_queries']} queries (exact search: the first "
      f"{spec['exact_timed_queries']}, PLAID: the first {spec['plaid_timed_queries']}) after "
      "an untimed pass over all (which also gives the metrics, pytrec_eval); first_stage_ms "
      "is BM25's, total adds it.",
      COLUMNS, mode="quick" if args.quick else "full",
      plot={"x": "ms_per_query", "y": "ndcg@10", "series": "pipeline", "kind": "line",
            "logx": True, "logy": False})
  from aligner_jax.data.beir import read_beir  # pylint: disable=g-import-not-at-top
  from aligner_jax.eval import ir_metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  qrels = read_beir(args.beir_dir, splits=["test"]).qrels["test"]

  def stages(name: str, alignment: str) -> str:
    """What pipeline `name` does, scoring with `alignment`."""
    scoring = "MaxSim" if alignment == ALIGNMENT else alignment
    plaid = {p: f"PLAID (fast-plaid, {s['n_full_scores']} documents fully scored)"
             for p, s in PLAID_SETTINGS.items()}
    return {
        "bm25": "BM25 top-100", "aligner_jax_rerank": f"BM25 top-100 → {scoring}",
        "pylate_rerank": "BM25 top-100 → MaxSim",
        "aligner_jax_index": f"ScaNN tokens (K′ = {OLD_NEIGHBORS}) → {scoring} refinement of "
                             "every candidate",
        "aligner_jax_index_xtr": f"ScaNN tokens (K′ = {xtr['num_neighbors']}, "
                                 f"{xtr['leaves_to_search']} leaves) → XTR first-stage score → "
                                 f"{scoring} refinement of the best {xtr['num_refine']}",
        "aligner_jax_ivf_xtr": f"IVF tokens (K′ = {xtr['num_neighbors']}, {args.ivf_cells} "
                               f"cells) → XTR first-stage score → {scoring} refinement of the "
                               f"best {xtr['num_refine']}",
        "aligner_jax_exact": f"{scoring} refinement of every document", **plaid}[name]

  first_ms = None
  details = {}
  vectors_note = (f"vectors: {pathlib.Path(args.head).name} ({args.head_kind} head, "
                  f"{args.head_dim}-d) over the cached MiniLM vectors; " if args.head else "")
  if args.keep_other_rows:
    _keep_rows(table, pathlib.Path(args.results_dir) / "end_to_end.json",
               [name_of(n, a) for n, a in jobs])
  for name, alignment in jobs:
    tag = name_of(name, alignment)
    print(f"[end_to_end] {tag} ...", file=sys.stderr, flush=True)
    python = args.peer_python if name in PEER_PIPELINES else sys.executable
    res = _spawn(name, {**spec, "alignment": alignment}, work, args.timeout, python, tag)
    row = {c: None for c in COLUMNS}
    timed = res.get("timed_queries", spec["timed_queries"])
    note = res.get("note") or res.get("error")
    row.update(pipeline=tag, framework=FRAMEWORK[name],
               stages=stages(name, alignment), status=res["status"], timed_queries=timed,
               runs=args.runs,
               num_queries=len(queries), build_s=res.get("build_s"),
               note=note if name in VECTOR_FREE else f"{vectors_note}{note}")
    if res["status"] == "ok":
      stats = harness.summarize(res["times_s"])
      per_q = 1e3 / timed
      row["ms_per_query"] = stats["median_s"] * per_q
      row["ms_iqr"] = stats["iqr_s"] * per_q
      run = read_run(work / f"{tag}.result.run.json")
      mean, _ = metrics_lib.evaluate({q: qrels[q] for q in queries}, run)
      row.update({"ndcg@10": mean["ndcg@10"], "mrr@10": mean["mrr@10"],
                  "recall@100": mean["recall@100"]})
      if name == "bm25":
        first_ms = row["ms_per_query"]
      if name.endswith("rerank") and first_ms is not None:
        row["first_stage_ms"] = first_ms
        row["total_ms_per_query"] = first_ms + row["ms_per_query"]
      else:
        row["total_ms_per_query"] = row["ms_per_query"]
    details[tag] = res
    table.add(row)
  write_run(work / "details.json", details)  # every timing and worker record, outside the repo
  record = table.write(pathlib.Path(args.results_dir), notes=[
      "encoding excluded: the vectors come from the encode job's cache (bench_encoder.py "
      "measures the encoder)",
      "each pipeline ran in a fresh process; load averages at the start and end are recorded",
      "PyLate and PLAID run in their own bench-only virtualenv (torch 2.11.0, fast-plaid "
      f"1.7.0.2110, pylate 1.6.0; {args.peer_python}), {PEER_THREADS} torch threads, never "
      "mixed with JAX"],
      extra={"encoded_dir": str(encoded), "fast first stage": xtr,
             **({"head": str(args.head)} if args.head else {})})
  if not args.no_report:
    from bench import report  # pylint: disable=g-import-not-at-top
    report.write_plot(record, pathlib.Path(args.results_dir) / "end_to_end.png")
    report.update_bench_readme(pathlib.Path(args.results_dir))
  return record


if __name__ == "__main__":
  main()
