"""Claim R1: the best alignment strategy differs by dataset, and few-shot alignment adaptation
with 8 examples is at least as good as the default top-1 on average (ALIGNER §3.1, §4.1-4.2,
Tables 2, 3 and 7-10).

Per dataset (or query family of a dataset), every strategy of `eval.adaptation.STRATEGIES`
refines the same candidate sets; `strategy_ndcg` gives the [strategies, queries] nDCG@10
matrix, `r1_report` runs the fold protocol of `eval.adaptation` on it and adds how often each
strategy is picked, and `r1_summary` states the claim over the datasets. nDCG values are
fractions in [0, 1] in the JSON and ×100 in tables, as in the paper. The paper's numbers
(`paper_numbers`, ×100 as printed, from `docs/results/papers.json`) stand beside ours in every
table.
"""

import collections
import datetime
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aligner_jax.data.collection import Collection
from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics as metrics_lib
from aligner_jax.index import TokenIndex
from aligner_jax.io import atomic_write
from aligner_jax.io import write_json
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import refine
from aligner_jax.retrieval import to_run
from repro import papers

STRATEGIES = adaptation_lib.STRATEGIES
DEFAULT = "top_k:1"  # the training-time alignment of every model here, as in the paper
MD_HEADER = ("nDCG@10 x 100; bold: the best fixed strategy of each row; adapted: mean ± std "
             "over folds of 8.\n\n")


def paper_numbers() -> dict[str, Any]:
  """ALIGNER's R1 numbers (nDCG@10 x 100, as printed) from `docs/results/papers.json`: "rows"
  with one value per strategy of STRATEGIES, "source", "beir_average_xxl"."""
  paper = papers.paper_numbers("r1")
  if tuple(paper.get("strategies", ())) != STRATEGIES:
    raise ValueError(f"{papers.PAPERS_JSON}: r1 lists the strategies {paper.get('strategies')}, "
                     f"not those of eval.adaptation.STRATEGIES {list(STRATEGIES)}")
  return paper


def family_positions(collection: Collection, query_ids: Sequence[str], *,
                     key: str = "family") -> dict[str, np.ndarray]:
  """Positions in `query_ids` grouped by the queries' metadata field `key` (e.g. the demo
  collection's "factoid" / "broad"), families in order of first appearance.

  Returns:
    {family: [n_family] int positions into query_ids}.
  """
  meta = collection.queries.metadata
  if meta is None:
    raise ValueError(f"{collection.name}: the query table keeps no metadata, so there is no "
                     f"{key!r} to split by")
  groups: dict[str, list[int]] = {}
  for pos, qid in enumerate(query_ids):
    row = collection.queries.index.get(qid)
    if row is None:
      raise ValueError(f"{collection.name}: query {qid!r} is not in the query table")
    value = meta[row].get(key)
    if value is None:
      raise ValueError(f"{collection.name}: query {qid!r} has no metadata field {key!r} "
                       f"(has {sorted(meta[row])})")
    groups.setdefault(str(value), []).append(pos)
  return {k: np.asarray(v, np.int64) for k, v in groups.items()}


def strategy_ndcg(index: TokenIndex, queries: QueryBatch, candidates: Any,
                  qrels: Mapping[str, Mapping[str, int]],
                  strategies: Sequence[str] = STRATEGIES, *, top_n: int = 1000,
                  ignore_identical_ids: bool = True,
                  log: Callable[[str], None] | None = None) -> tuple[list[str], np.ndarray]:
  """nDCG@10 of every judged query under every strategy, all refining `candidates`.

  Returns:
    (judged query ids [Q] in the order of `queries`, ndcg [S, Q] float64).
  """
  ids = [q for q in queries.ids if q in qrels]
  if not ids:
    raise ValueError("none of the queries has relevance judgements")

  def per_query(spec: str) -> dict[str, float]:
    run = to_run(queries.ids, index.doc_ids, refine(index, queries, candidates, spec,
                                                    top_n=top_n))
    _, values = metrics_lib.evaluate(qrels, run, metrics=("ndcg@10",),
                                     ignore_identical_ids=ignore_identical_ids)
    return {q: v["ndcg@10"] for q, v in values.items()}

  return ids, adaptation_lib.score_strategies(per_query, ids, strategies, progress=log)


def r1_report(ndcg: np.ndarray, query_ids: Sequence[str],
              strategies: Sequence[str] = STRATEGIES, *, dataset: str,
              fold_size: int = adaptation_lib.FOLD_SIZE, seed: int = 0) -> dict[str, Any]:
  """One dataset's R1 result: `eval.adaptation.adaptation_report` plus the strategy counts.

  Args:
    ndcg: [S, Q] nDCG@10 of query q under strategy s.
    query_ids: the Q query ids.

  Returns:
    The adaptation report with, in addition, "picked" {strategy: number of folds choosing it}
    (every strategy, zeros included), "best_fixed" (the best strategy on all queries, the
    earlier one on ties), "default" ("top_k:1") and "adapted_minus_default".
  """
  ndcg = np.asarray(ndcg, np.float64)
  if ndcg.shape != (len(strategies), len(query_ids)):
    raise ValueError(f"{dataset}: ndcg has shape {ndcg.shape}, expected "
                     f"({len(strategies)}, {len(query_ids)})")
  report = adaptation_lib.adaptation_report(ndcg, list(query_ids), list(strategies),
                                            fold_size=fold_size, seed=seed, dataset=dataset)
  counts = collections.Counter(f["chosen"] for f in report["folds"])
  means = ndcg.mean(axis=1)
  report["picked"] = {s: int(counts.get(s, 0)) for s in strategies}
  report["best_fixed"] = strategies[int(np.argmax(means))]
  if DEFAULT in strategies:
    report["default"] = DEFAULT
    report["adapted_minus_default"] = report["adapted"]["mean"] - report["ndcg@10"][DEFAULT]
  return report


def r1_summary(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The claim over datasets: do the best fixed strategies differ, and is the mean of the
  adapted scores at least the mean of top-1's?"""
  if not reports:
    raise ValueError("no R1 reports to summarise")
  best = {r["dataset"]: r["best_fixed"] for r in reports}
  default = float(np.mean([r["ndcg@10"][DEFAULT] for r in reports]))
  adapted = float(np.mean([r["adapted"]["mean"] for r in reports]))
  oracle = float(np.mean([r["ndcg@10"][r["best_fixed"]] for r in reports]))
  picked = collections.Counter()
  for r in reports:
    picked.update(r["picked"])
  return {
      "datasets": [r["dataset"] for r in reports],
      "best_fixed": best,
      "best_differs": len(set(best.values())) > 1,
      "mean_default": default,
      "mean_adapted": adapted,
      "mean_adapted_std": float(np.mean([r["adapted"]["std"] for r in reports])),
      "mean_best_fixed": oracle,
      "adapted_at_least_default": adapted >= default,
      "picked": {s: int(picked[s]) for s in reports[0]["picked"]},
  }


def _paper_reports() -> list[dict[str, Any]]:
  """The paper's rows shaped like reports (fractions), for `adaptation.table_markdown`."""
  rows = []
  for row in paper_numbers()["rows"]:
    if row["adapted"] is None:
      continue
    rows.append({"dataset": row["dataset"], "strategies": list(STRATEGIES),
                 "ndcg@10": {s: v / 100 for s, v in zip(STRATEGIES, row["ndcg@10"])},
                 "adapted": {"mean": row["adapted"][0] / 100, "std": row["adapted"][1] / 100}})
  return rows


def r1_table(reports: Sequence[Mapping[str, Any]], *, with_paper: bool = True) -> str:
  """Markdown: the Table-3-style table (ours, our mean, then the paper's rows) and the table of
  how often each strategy was picked over the folds."""
  summary = r1_summary(reports)
  strategies = list(reports[0]["strategies"])
  mean_row = {"dataset": "mean of the rows above", "strategies": strategies,
              "ndcg@10": {s: float(np.mean([r["ndcg@10"][s] for r in reports]))
                          for s in strategies},
              "adapted": {"mean": summary["mean_adapted"], "std": summary["mean_adapted_std"]}}
  rows = list(reports) + [mean_row] + (_paper_reports() if with_paper else [])
  main = adaptation_lib.table_markdown(rows)
  head = ["dataset", "folds"] + [f"`{s}`" for s in strategies]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in reports:
    lines.append("| " + " | ".join([r["dataset"], str(r["num_folds"])] +
                                   [str(r["picked"][s]) for s in strategies]) + " |")
  picks = "\n".join(lines)
  return main + f"\nStrategy picked on the folds of 8 (count of folds):\n\n{picks}\n"


def write_r1(output_json: str | pathlib.Path, reports: Sequence[Mapping[str, Any]], *,
             setup: Mapping[str, Any]) -> dict[str, Any]:
  """Writes `output_json` (reports, summary, the paper's numbers, set-up) and, beside it, the
  tables as `<stem>.md`; both atomically. Returns the JSON content."""
  output_json = pathlib.Path(output_json)
  content = {
      "claim": "R1: the best alignment strategy differs by dataset, and 8-shot alignment "
               "adaptation is at least as good as the default top-1 on average",
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "setup": dict(setup),
      "summary": r1_summary(reports),
      "reports": list(reports),
      "paper": paper_numbers(),
  }
  table = r1_table(reports)
  write_json(output_json, content)
  atomic_write(output_json.with_suffix(".md"), MD_HEADER + table)
  return content
