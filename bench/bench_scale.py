"""The retrieval path against corpus size: index build, load, serving memory and the fast
first stage's speed and recall on synthetic corpora of 1M to 32M tokens.

For each N, in increasing order, over a synthetic clustered encoded corpus
(`bench/scale_corpus.py`: 128-d float16 unit vectors, 64 a document, encoded shards of 1M
tokens; by default in families of 10 near-duplicate documents, so that a query's exact top 10
is its family, separated from the rest by a clear margin; `--family-size 1`: independent
documents, where beyond a query's source document the top 10 is decided by noise-level ties),
each step in a fresh process:
  build   `gin/runs/index.gin`, single process, ScaNN with its defaults, MAX_SHARD_TOKENS
          1M (`bench_index_build_memory.run_cell`): peak RSS and wall time;
  truth   50 queries of 32 tokens, each a noisy paraphrase of a stored document, and their
          exact top-10 documents under top-1 alignment by a streamed brute force over the
          encoded shards, one shard in memory at a time (`scale_worker.py truth`);
  serve   the index's files evicted from the page cache (`bench_index_load.evict`), then
          loaded in a fresh process (cold), and again (warm); each runs the queries through
          the fast first stage (K′ = 64 from 20 ScaNN leaves per shard, the best R = 64 by XTR
          score refined with top_k:1) once untimed, then 3 timed passes (`scale_worker.py
          serve`): load seconds, resident memory after the load and after the queries,
          ms/query (median pass), recall of the exact top-10 documents; then the same with
          20 leaves for the whole index, ⌈20 / shards⌉ per shard (path
          "single_process_xtr_index_leaves").
`--backend ivf` builds the IVF index instead (`aligner_jax/index/ivf.py`) and serves it with
8 cells per query token over the whole index (path "single_process_ivf_xtr").
Every step records the 1-minute load average while it ran (the machine is shared: timings are
taken under that load). Corpora, indexes and ground truths are kept in `--cache-dir` and
reused; a size's row is written to bench/results/scale.json (rows of other sizes kept) as
soon as it is complete, so an interrupted run keeps what it measured.

  nice -n 5 python -m bench.bench_scale [--tokens 1000000 4000000 ...] [--cache-dir DIR]
      [--backend scann|ivf] [--out FILE]
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
from typing import Any

from aligner_jax.io import write_json
from bench import bench_index_build_memory as build_bench
from bench import bench_index_load as load_bench
from bench import harness
from bench import scale_corpus
from bench.minilm_vectors import cache_root

RESULTS = harness.RESULTS_DIR / "scale.json"
WORKER = pathlib.Path(__file__).resolve().parent / "scale_worker.py"
SIZES = (1_000_000, 4_000_000, 16_000_000, 32_000_000)
FIRST_STAGE = {"scann": {"neighbors": 64, "leaves": 20, "refine": 64},
               "ivf": {"neighbors": 64, "leaves": 8, "refine": 64}}
# Rows per size and backend: the search effort of the first stage; ScaNN: `leaves` ScaNN
# leaves per shard or for the whole index (⌈leaves / shards⌉ per shard); IVF: `leaves` cells
# per query token over the whole index. None / key: where the serve step reports it.
PATHS = {"scann": {"single_process_xtr": None, "single_process_xtr_index_leaves": "index_budget"},
         "ivf": {"single_process_ivf_xtr": None}}


def _cached(path: pathlib.Path, compute) -> dict[str, Any]:
  """`compute()`'s JSON result, kept in `path` (a rerun reuses it)."""
  if path.exists():
    return json.loads(path.read_text())
  result = compute()
  write_json(path, result)
  return result


def build(encoded: pathlib.Path, index: pathlib.Path, backend: str) -> dict[str, Any]:
  """The single-process index job over `encoded` into `index` (kept; its log beside it)."""
  def compute():
    if index.exists():  # a build killed before it recorded its numbers: measure it again
      shutil.rmtree(index)
    work = index.with_name(index.name + ".build")
    work.mkdir(exist_ok=True)
    return build_bench.run_cell(encoded, "local", work, index=index, backend=backend)
  return _cached(index.with_name(index.name + ".build.json"), compute)


def truth(encoded: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
  def compute():
    return load_bench.run_worker(harness.REPO_ROOT, ["truth", "--encoded", str(encoded),
                                                     "--out", str(out)], worker=WORKER)
  return _cached(out.with_name(out.name + ".log.json"), compute)


def serve(index: pathlib.Path, truth_file: pathlib.Path, backend: str) -> tuple[dict, dict]:
  """(cold, warm) serving measurements of `index`."""
  args = ["serve", "--index", str(index), "--truth", str(truth_file),
          *[f"--{k}={v}" for k, v in FIRST_STAGE[backend].items()]]
  load_bench.evict(index)
  cold = load_bench.run_worker(harness.REPO_ROOT, args, worker=WORKER)
  warm = load_bench.run_worker(harness.REPO_ROOT, args, worker=WORKER)
  return cold, warm


def corpus_name(family_size: int) -> str:
  return "independent" if family_size == 1 else f"families_of_{family_size}"


def measure(tokens: int, cache: pathlib.Path, family_size: int,
            backend: str = "scann") -> list[dict[str, Any]]:
  """The rows of one size: the index's numbers with each first-stage search effort."""
  corpus = corpus_name(family_size)
  suffix = f"{tokens}" if family_size == 1 else f"{corpus}_{tokens}"
  encoded = cache / f"corpus_{suffix}"
  load_before = os.getloadavg()[0]
  scale_corpus.write_corpus(encoded, tokens=tokens, shard_tokens=build_bench.ENCODED_SHARD,
                            family_size=family_size)
  index = cache / (f"index_{suffix}" if backend == "scann" else f"{backend}_index_{suffix}")
  built = build(encoded, index, backend)
  truth_file = cache / f"truth_{suffix}.json"
  exact = truth(encoded, truth_file)
  cold, warm = serve(index, truth_file, backend)
  info = json.loads((index / "index.json").read_text())
  common = {
      "n_tokens": tokens, "corpus": corpus, "backend": backend, "shards": built["shards"],
      "build_peak_rss_bytes": built["build_peak_rss_bytes"],
      "build_seconds": built["build_seconds"],
      "build_cpu_seconds": built.get("build_cpu_seconds"),
      "serve_rss_bytes": warm["loaded"]["VmRSS"],
      "serve_anon_bytes": warm["loaded"]["RssAnon"],
      "serve_rss_after_queries_bytes": warm["searched"]["VmRSS"],
      "serve_rss_before_load_bytes": warm["before"]["VmRSS"],
      "load_seconds": round(cold["load_seconds"], 3),
      "load_seconds_warm": round(warm["load_seconds"], 3),
      "disk_bytes_per_token": round(info["total_bytes"] / tokens, 1),
      "exact_top10_seconds": round(exact["seconds"], 1),
      "source_in_exact_top10": exact["source_in_exact_top10"]}
  rows = []
  for path, key in PATHS[backend].items():
    w, c = (warm, cold) if key is None else (warm[key], cold[key])
    rows.append({
        **common, "path": path, "leaves_per_shard": w["leaves_per_shard"],
        "ms_per_query": round(w["ms_per_query"], 2),
        "ms_per_query_cold": round(c["ms_per_query"], 2),
        "search_ms_per_query": round(w["search_ms_per_query"], 2),
        "refine_ms_per_query": round(w["refine_ms_per_query"], 2),
        "recall_at_10": w["recall_at_10"],
        "load_average": {"corpus": load_before, "build": built["load_average"],
                         "queries_cold": round(c["load_average_queries"], 2),
                         "queries_warm": round(w["load_average_queries"], 2)}})
  return rows


def write(rows: list[dict[str, Any]], path: pathlib.Path = RESULTS) -> None:
  write_json(path, {
      "description": __doc__.split("\n\n")[0].replace("\n", " "),
      "settings": {"dim": 128, "doc_tokens": 64, "vector_dtype": "float16",
                   "encoded_shard_tokens": build_bench.ENCODED_SHARD,
                   "max_shard_tokens": build_bench.MAX_SHARD_TOKENS,
                   "family_noise": 0.2, "queries": 50, "query_tokens": 32,
                   "alignment": "top_k:1", "first_stage": FIRST_STAGE},
      "machine": harness.machine_info(),
      "rows": sorted(rows, key=_key)})


def _key(row: dict[str, Any]) -> tuple:
  return row["corpus"] != "independent", row["n_tokens"], row["path"]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=list(SIZES))
  parser.add_argument("--cache-dir", default=str(cache_root() / "scale"))
  parser.add_argument("--family-size", type=int, default=10,
                      help="documents per family of near-duplicates (1: independent documents)")
  parser.add_argument("--backend", default="scann", choices=tuple(FIRST_STAGE),
                      help="the index backend built and searched")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                      help="results file (rows of other sizes in it are kept)")
  args = parser.parse_args(argv)
  cache = pathlib.Path(args.cache_dir)
  cache.mkdir(parents=True, exist_ok=True)
  for tokens in sorted(args.tokens):
    rows = measure(tokens, cache, args.family_size, args.backend)
    print(json.dumps(rows), flush=True)
    new = {_key(r) for r in rows}
    old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    write([r for r in old if _key(r) not in new] + rows, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
