"""Tuning the fast first stage on SciFact: K′, ScaNN leaves searched and R, against exact search.

One process over the encode cache's MiniLM token vectors (as bench_end_to_end.py): the ScaNN
token index of bench_end_to_end (built there once, or here), all judged test queries. The
reference is exact search with the same alignment: every document refined (`all_documents`),
its run cached in the work directory. For each (K′, leaves, R) the whole query set is searched
and refined once untimed (compiling every shape), then `--runs` timed passes give
ms/query; nDCG@10 and the recall of the exact top-10 come from the untimed pass.

  python -m bench.sweep_first_stage [--neighbors 64,128,256] [--leaves 20,40,80]
      [--refine 0,32,64,128] [--alignment top_k:1] [--recall-target 0.95]

With `--recall-target T` the sweep ends by naming the chosen setting: among those whose recall
of the exact top-10 is at least T, the one with the fewest refined documents (R, the dominant
cost), then the fewest K′ and leaves (timings on a shared machine move more than these counts
do), printed as the evaluation job's gin overrides and stored as `chosen` in the output.

Rows go to bench/results/first_stage_sweep.json (not a harness table: a tuning record that
bench/README.md quotes).
"""

import argparse
import itertools
import json
import os
import pathlib
import time
from typing import Any

import numpy as np

from aligner_jax.io import write_json
from bench import bench_end_to_end as e2e
from bench import harness


def exact_run(index, batch, alignment: str, path: pathlib.Path) -> dict[str, dict[str, float]]:
  """Every document refined with `alignment` (cached in `path`: minutes of CPU)."""
  from aligner_jax.retrieval import all_documents  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import refine  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import to_run  # pylint: disable=g-import-not-at-top
  if path.exists():
    return json.loads(path.read_text())
  t = time.perf_counter()
  results = refine(index, batch, all_documents(index, batch), alignment, top_n=e2e.TOP_N,
                   progress=print)
  run = to_run(batch.ids, index.doc_ids, results)
  print(f"exact: {time.perf_counter() - t:.0f} s for {len(batch)} queries")
  e2e.write_run(path, run)
  return run


def top10_recall(run: dict[str, dict[str, float]], exact: dict[str, dict[str, float]]) -> float:
  """Mean over queries of |top-10 ∩ exact top-10| / 10."""
  def top(r):
    return set(sorted(r, key=lambda d: -r[d])[:10])
  return float(np.mean([len(top(run.get(q, {})) & top(exact[q])) / 10 for q in exact]))


def measure(index, batch, *, neighbors: int, leaves: int, refine_r: int, alignment: str,
            runs: int) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
  """One setting: the run (untimed pass) and the median seconds of search and refinement."""
  from aligner_jax.retrieval import candidate_documents  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import refine  # pylint: disable=g-import-not-at-top
  from aligner_jax.retrieval import to_run  # pylint: disable=g-import-not-at-top

  def once():
    t0 = time.perf_counter()
    cands = candidate_documents(index, batch, num_neighbors=neighbors, num_refine=refine_r,
                                leaves_to_search=leaves)
    t1 = time.perf_counter()
    results = refine(index, batch, cands, alignment, top_n=e2e.TOP_N)
    return cands, results, t1 - t0, time.perf_counter() - t1

  cands, results, _, _ = once()
  times = [once()[2:] for _ in range(runs)]
  search_s, refine_s = (float(np.median([t[i] for t in times])) for i in (0, 1))
  per_q = 1e3 / len(batch)
  row = {"neighbors": neighbors, "leaves": leaves, "refine": refine_r,
         "candidates_mean": float(cands.sizes().mean()), "search_ms": search_s * per_q,
         "refine_ms": refine_s * per_q, "ms_per_query": (search_s + refine_s) * per_q}
  return row, to_run(batch.ids, index.doc_ids, results)


def choose(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
  """The cheapest row whose `top10_recall` ≥ `target` (fewest R, then K′, then leaves; R = 0,
  every candidate refined, counts as the most), or None when none reaches it."""
  met = [r for r in rows if r["top10_recall"] >= target]
  if not met:
    return None
  return min(met, key=lambda r: (r["refine"] or float("inf"), r["neighbors"], r["leaves"]))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--encoded-dir", default=e2e.DEFAULT_ENCODED)
  parser.add_argument("--beir-dir", default=str(harness.REPO_ROOT.parent / "shared" / "data" /
                                                "beir" / "scifact"))
  parser.add_argument("--work-dir", default=e2e.DEFAULT_WORK)
  parser.add_argument("--neighbors", default="64,128,256")
  parser.add_argument("--leaves", default="20,40,80")
  parser.add_argument("--refine", default="0,32,64,128")
  parser.add_argument("--alignment", default=e2e.ALIGNMENT)
  parser.add_argument("--backend", default="scann", choices=("scann", "ivf"),
                      help="the token index searched (leaves: ScaNN leaves or IVF cells)")
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--out", default=str(harness.RESULTS_DIR / "first_stage_sweep.json"))
  parser.add_argument("--append", action="store_true",
                      help="add the rows to those already in --out (same alignment)")
  parser.add_argument("--recall-target", type=float, default=None,
                      help="name the cheapest setting whose recall of the exact top-10 "
                           "reaches this (e.g. 0.95)")
  args = parser.parse_args(argv)
  from aligner_jax.data.beir import read_beir  # pylint: disable=g-import-not-at-top
  from aligner_jax.eval import ir_metrics  # pylint: disable=g-import-not-at-top
  work = pathlib.Path(args.work_dir)
  work.mkdir(parents=True, exist_ok=True)
  qids = e2e.judged_queries(pathlib.Path(args.beir_dir))
  qrels = read_beir(args.beir_dir, splits=["test"]).qrels["test"]
  index, batch, _ = e2e.load_index_and_queries(
      {"encoded_dir": args.encoded_dir, "work_dir": str(work), "queries": qids}, args.backend)
  exact = exact_run(index, batch, args.alignment,
                    work / f"exact.{args.alignment.replace(':', '-')}.run.json")
  exact_ndcg = ir_metrics.evaluate(qrels, exact)[0]["ndcg@10"]
  rows = []
  if args.append and pathlib.Path(args.out).exists():
    before = json.loads(pathlib.Path(args.out).read_text())
    if before.get("alignment") != args.alignment:
      parser.error(f"{args.out} holds rows of {before.get('alignment')}, not {args.alignment}")
    rows = before["rows"]
  grid = itertools.product(*(map(int, v.split(",")) for v in (args.neighbors, args.leaves,
                                                                args.refine)))
  for neighbors, leaves, refine_r in grid:
    row, run = measure(index, batch, neighbors=neighbors, leaves=leaves, refine_r=refine_r,
                       alignment=args.alignment, runs=args.runs)
    row["ndcg@10"] = ir_metrics.evaluate(qrels, run)[0]["ndcg@10"]
    row["delta_ndcg"] = row["ndcg@10"] - exact_ndcg
    row["top10_recall"] = top10_recall(run, exact)
    print(json.dumps(row), flush=True)
    rows.append({**row, "loadavg": list(os.getloadavg())})
    # Rewritten (atomically) after every setting: a killed sweep keeps what it measured.
    write_json(args.out, {"alignment": args.alignment, "backend": args.backend,
                          "queries": len(qids),
                          "exact_ndcg@10": exact_ndcg, "machine": harness.machine_info(),
                          "rows": rows})
  if args.recall_target is not None:
    report_choice(args.out, rows, args.recall_target)


def report_choice(out: str, rows: list[dict[str, Any]], target: float) -> None:
  """Prints the setting `choose` picks as gin overrides and records it in `out`."""
  chosen = choose(rows, target)
  if chosen is None:
    best = max(r["top10_recall"] for r in rows)
    print(f"no setting reaches recall {target} of the exact top-10 (best {best:.3f}): "
          "widen --neighbors / --leaves / --refine")
  else:
    print(f"recall target {target}: K′ = {chosen['neighbors']}, {chosen['leaves']} leaves, "
          f"R = {chosen['refine']} (recall {chosen['top10_recall']:.3f}, "
          f"ΔnDCG@10 {chosen['delta_ndcg']:+.4f}): --gin.NUM_NEIGHBORS={chosen['neighbors']} "
          f"--gin.LEAVES_TO_SEARCH={chosen['leaves']} --gin.NUM_REFINE={chosen['refine']}")
  record = json.loads(pathlib.Path(out).read_text())
  record["recall_target"] = target
  record["chosen"] = chosen
  write_json(out, record)


if __name__ == "__main__":
  main()
