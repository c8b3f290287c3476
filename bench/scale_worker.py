"""One step of `bench_scale`, in its own process: draw the query sample and its exact top-10
documents from a synthetic corpus, or load its index and time the fast first stage.

Run as a script (`python bench/scale_worker.py truth|serve ...`) with the repository on
PYTHONPATH; the result is one JSON object on the last line of stdout.

  truth   queries: `--queries` documents drawn uniformly from the corpus, of each `--tokens`
          of its tokens with fresh noise of the corpus's own magnitude, L2-normalised (a
          paraphrase of a stored document); their exact top-10 documents under top-1 alignment
          (Σ over query tokens of the best inner product with a document token, the ranking of
          ALIGNER's top_k:1 score), by a streamed brute force over the encoded shards: one
          shard mapped at a time, scored a block of documents at a time. Written to `--out`.
  serve   a fresh process: load the index (`load_index`, timed), run the queries through
          `candidate_documents` (K′ neighbours per query token from `--leaves` ScaNN leaves
          per shard, the best R by XTR score) and `refine` (top_k:1) once untimed (compiling
          every shape), then `--runs` timed passes; resident memory before the load, after it
          and after the queries; recall of the exact top-10. Then the same with `--leaves`
          for the whole index (⌈leaves / shards⌉ per shard, `index_budget`).
"""

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from aligner_jax.io import atomic_write
from bench.index_load_worker import memory
from bench.sweep_first_stage import top10_recall

ALIGNMENT = "top_k:1"
_BLOCK_DOCS = 1024  # documents scored per brute-force block: [Q·n, 1024·64] float32 scores


def _shards(encoded: pathlib.Path) -> list[pathlib.Path]:
  from aligner_jax.eval.inputs import corpus_shards  # pylint: disable=import-outside-toplevel
  return corpus_shards(encoded)


def draw_queries(encoded: pathlib.Path, *, num: int, tokens: int, noise: float,
                 seed: int) -> tuple[np.ndarray, list[str]]:
  """([num, tokens, h] float32 unit query vectors, source document ids)."""
  from aligner_jax.index.token_store_io import load_token_store  # pylint: disable=import-outside-toplevel
  shards = _shards(encoded)
  sizes = [json.loads((s / "manifest.json").read_text())["counts"]["documents"] for s in shards]
  first = np.concatenate([[0], np.cumsum(sizes)])
  rng = np.random.default_rng([seed, 7])
  picks = np.sort(rng.choice(first[-1], num, replace=False))
  out, sources = [], []
  for s in np.unique(np.searchsorted(first, picks, side="right") - 1):
    store = load_token_store(shards[s])
    for doc in picks[(picks >= first[s]) & (picks < first[s + 1])] - first[s]:
      rows = np.arange(store.offsets[doc], store.offsets[doc + 1])
      chosen = rng.choice(rows, min(tokens, len(rows)), replace=False)
      x = np.asarray(store.vectors[np.sort(chosen)], np.float32)
      x = x + (noise / np.sqrt(x.shape[1])) * rng.normal(size=x.shape).astype(np.float32)
      out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
      sources.append(store.doc_ids[doc])
  return np.stack(out), sources


def exact_top10(encoded: pathlib.Path, queries: np.ndarray) -> list[dict[str, float]]:
  """Per query its 10 best documents and top-1 scores over every shard of `encoded`."""
  from aligner_jax.index.token_store_io import load_token_store  # pylint: disable=import-outside-toplevel
  q, n, h = queries.shape
  flat = queries.reshape(q * n, h)
  best_scores = np.full((q, 0), -np.inf, np.float32)
  best_ids = np.zeros((q, 0), object)
  for path in _shards(encoded):
    store = load_token_store(path)
    ids = np.asarray(store.doc_ids, object)
    for d0 in range(0, len(ids), _BLOCK_DOCS):
      d1 = min(d0 + _BLOCK_DOCS, len(ids))
      t0, t1 = store.offsets[d0], store.offsets[d1]
      sims = flat @ np.asarray(store.vectors[t0:t1], np.float32).T  # [Q·n, tokens]
      per_doc = np.maximum.reduceat(sims, store.offsets[d0:d1] - t0, axis=1)  # [Q·n, docs]
      scores = np.concatenate([best_scores, per_doc.reshape(q, n, -1).sum(1)], 1)
      cand = np.concatenate([best_ids, np.broadcast_to(ids[d0:d1], (q, d1 - d0))], 1)
      keep = np.argsort(-scores, axis=1, kind="stable")[:, :10]
      best_scores = np.take_along_axis(scores, keep, 1)
      best_ids = np.take_along_axis(cand, keep, 1)
    del store
  return [{str(d): float(s) for d, s in zip(i, sc)} for i, sc in zip(best_ids, best_scores)]


def truth(args: argparse.Namespace) -> dict:
  encoded = pathlib.Path(args.encoded)
  start = time.perf_counter()
  queries, sources = draw_queries(encoded, num=args.queries, tokens=args.tokens,
                                  noise=args.noise, seed=args.seed)
  top = exact_top10(encoded, queries)
  seconds = time.perf_counter() - start
  ids = [f"q{i}" for i in range(len(queries))]
  record = {"ids": ids, "sources": sources, "vectors": queries.tolist(),
            "exact_top10": dict(zip(ids, top)), "seconds": seconds}
  atomic_write(args.out, json.dumps(record))
  hits = np.mean([s in t for s, t in zip(sources, top)])
  return {"seconds": seconds, "queries": len(ids), "source_in_exact_top10": float(hits)}


def serve(args: argparse.Namespace) -> dict:
  from aligner_jax.index import load_index  # pylint: disable=import-outside-toplevel
  from aligner_jax.index.backends import _scann_numpy  # pylint: disable=import-outside-toplevel
  from aligner_jax.retrieval import QueryBatch  # pylint: disable=import-outside-toplevel
  from aligner_jax.retrieval import candidate_documents  # pylint: disable=import-outside-toplevel
  from aligner_jax.retrieval import refine  # pylint: disable=import-outside-toplevel
  from aligner_jax.retrieval import to_run  # pylint: disable=import-outside-toplevel
  record = json.loads(pathlib.Path(args.truth).read_text())
  vectors = np.asarray(record["vectors"], np.float32)
  batch = QueryBatch(record["ids"], vectors, np.ones(vectors.shape[:2], bool))
  _scann_numpy()  # "before" already holds what any ScaNN load imports
  before = memory()
  start = time.perf_counter()
  index = load_index(args.index)
  load_seconds = time.perf_counter() - start
  loaded = memory()

  def passes(leaves: int) -> dict:
    """One untimed pass (compiling every shape), then `args.runs` timed ones."""
    def once():
      t0 = time.perf_counter()
      cands = candidate_documents(index, batch, num_neighbors=args.neighbors,
                                  num_refine=args.refine, leaves_to_search=leaves)
      t1 = time.perf_counter()
      results = refine(index, batch, cands, ALIGNMENT, top_n=10, use_salience=False)
      return to_run(batch.ids, index.doc_ids, results), t1 - t0, time.perf_counter() - t1

    run, first_search, first_refine = once()
    loads, times = [], []
    for _ in range(args.runs):
      loads.append(os.getloadavg()[0])
      times.append(once()[1:])
    search_s, refine_s = (float(np.median([t[i] for t in times])) for i in (0, 1))
    per_query = 1e3 / len(batch)
    return {"leaves_per_shard": leaves, "ms_per_query": (search_s + refine_s) * per_query,
            "search_ms_per_query": search_s * per_query,
            "refine_ms_per_query": refine_s * per_query,
            "first_pass_ms_per_query": (first_search + first_refine) * per_query,
            "recall_at_10": top10_recall(run, record["exact_top10"]),
            "load_average_queries": float(np.mean(loads))}

  per_shard = passes(args.leaves)
  searched = memory()
  # ScaNN: the same total effort spread over the shards, `leaves` for the whole index (IVF
  # cells are counted over the whole index already).
  budget = (None if index.config.backend == "ivf"
            else passes(max(1, -(-args.leaves // len(index.shards)))))
  return {"load_seconds": load_seconds, "before": before, "loaded": loaded,
          "searched": searched, "shards": len(index.shards), **per_shard,
          "index_budget": budget}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("step", choices=("truth", "serve"))
  parser.add_argument("--encoded", help="truth: the encoded corpus directory")
  parser.add_argument("--out", help="truth: the JSON file of queries and exact top-10")
  parser.add_argument("--queries", type=int, default=50)
  parser.add_argument("--tokens", type=int, default=32, help="tokens a query")
  parser.add_argument("--noise", type=float, default=0.35)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--index", help="serve: the index directory")
  parser.add_argument("--truth", help="serve: the truth step's JSON file")
  parser.add_argument("--neighbors", type=int, default=64)
  parser.add_argument("--leaves", type=int, default=20)
  parser.add_argument("--refine", type=int, default=64)
  parser.add_argument("--runs", type=int, default=3)
  args = parser.parse_args()
  result = {"truth": truth, "serve": serve}[args.step](args)
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
