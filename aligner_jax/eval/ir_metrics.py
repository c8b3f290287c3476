"""BEIR metrics of retrieval runs (`aligner_jax.retrieval.runs`) via pytrec_eval, and
`metrics.json`.

  * `evaluate` computes, per query and as the mean over queries, `ndcg@10` (graded relevance,
    trec_eval's `ndcg_cut.10`), `mrr@10` (`recip_rank` of the run cut to its top 10),
    `recall@100`, `recall@1000` and `map` with pytrec_eval. Every query judged in the qrels
    counts: a query the run does not answer scores 0 on every measure (pytrec_eval alone would
    skip it). As in BEIR, a document whose id equals the query's id is dropped from the run
    first (`ignore_identical_ids`).
"""

import os
from typing import Any, Iterable, Mapping

import pytrec_eval

from aligner_jax.io import write_json
from aligner_jax.retrieval.runs import Run
from aligner_jax.retrieval.runs import cut_run

Qrels = Mapping[str, Mapping[str, int]]

METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")
# Our name -> (pytrec_eval measure, result key, rank cut applied to the run first).
_PYTREC = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "mrr@10": ("recip_rank", "recip_rank", 10),
    "recall@100": ("recall.100", "recall_100", None),
    "recall@1000": ("recall.1000", "recall_1000", None),
    "map": ("map", "map", None),
}


def evaluate(qrels: Qrels, run: Mapping[str, Mapping[str, float]], *,
             metrics: Iterable[str] = METRICS,
             ignore_identical_ids: bool = True) -> tuple[dict[str, float],
                                                          dict[str, dict[str, float]]]:
  """BEIR metrics of `run` against `qrels` (see the module docstring).

  Returns:
    (mean over judged queries {metric: value}, per query {query id: {metric: value}}).
  """
  metrics = tuple(metrics)
  unknown = [m for m in metrics if m not in _PYTREC]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; known: {list(_PYTREC)}")
  qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
  if not qrels:
    raise ValueError("no judged queries to evaluate")
  clean: Run = {}
  for q, docs in run.items():
    if q in qrels:
      clean[q] = {d: float(s) for d, s in docs.items() if not (ignore_identical_ids and d == q)}
  per_query = {q: {m: 0.0 for m in metrics} for q in qrels}
  by_cut: dict[int | None, list[str]] = {}
  for m in metrics:
    by_cut.setdefault(_PYTREC[m][2], []).append(m)
  for cut, names in by_cut.items():
    sub = clean if cut is None else cut_run(clean, cut)
    sub = {q: docs for q, docs in sub.items() if docs}
    if not sub:
      continue
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {_PYTREC[m][0] for m in names})
    for q, values in evaluator.evaluate(sub).items():
      for m in names:
        per_query[q][m] = float(values[_PYTREC[m][1]])
  mean = {m: sum(v[m] for v in per_query.values()) / len(per_query) for m in metrics}
  return mean, per_query


def write_metrics(path: str | os.PathLike, mean: Mapping[str, float],
                  per_query: Mapping[str, Mapping[str, float]], **extra: Any) -> dict[str, Any]:
  """Writes `metrics.json`: the means at top level, `per_query`, `num_queries` and `extra`."""
  out = {**{m: float(v) for m, v in mean.items()}, "num_queries": len(per_query),
         **extra, "per_query": {q: dict(v) for q, v in sorted(per_query.items())}}
  write_json(path, out)
  return out
