"""Retrieval runs and their BEIR metrics: TREC run files and `metrics.json` via pytrec_eval.

Conventions:
  * A `Run` maps query id -> {document id -> score}; higher scores rank first. Ties rank as
    trec_eval ranks them: score descending, then document id descending (`ranked`), so the ranks
    written to a run file are the ones the metrics see.
  * A TREC run file has six whitespace-separated columns per line:
    `query-id Q0 doc-id rank score run-name`, ranks from 1.
  * `evaluate` computes, per query and as the mean over queries, `ndcg@10` (graded relevance,
    trec_eval's `ndcg_cut.10`), `mrr@10` (`recip_rank` of the run cut to its top 10),
    `recall@100`, `recall@1000` and `map` with pytrec_eval. Every query judged in the qrels
    counts: a query the run does not answer scores 0 on every measure (pytrec_eval alone would
    skip it). As in BEIR, a document whose id equals the query's id is dropped from the run
    first (`ignore_identical_ids`).
"""

import math
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping

import pytrec_eval

from aligner_jax.index.files import write_json

Run = dict[str, dict[str, float]]
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


class RunFileError(ValueError):
  """A TREC run file line that cannot be read; names the file and line."""


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
  """(doc id, score) best first, ties by document id descending (trec_eval's order)."""
  return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def cut_run(run: Mapping[str, Mapping[str, float]], depth: int) -> Run:
  """Each query's top-`depth` documents in `ranked` order."""
  return {q: dict(ranked(docs)[:depth]) for q, docs in run.items()}


def write_trec_run(path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], *,
                   run_name: str = "aligner_jax") -> None:
  """Writes `run` as a 6-column TREC run file (atomically), queries in sorted order."""
  if not run_name or any(c.isspace() for c in run_name):
    raise ValueError(f"run name must be one word, got {run_name!r}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for qid in sorted(run):
        _check_id(qid, "query id")
        for rank, (did, score) in enumerate(ranked(run[qid]), start=1):
          _check_id(did, "document id")
          if not math.isfinite(score):
            raise ValueError(f"query {qid!r} document {did!r}: score {score} is not finite")
          f.write(f"{qid} Q0 {did} {rank} {score:.6f} {run_name}\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _check_id(value: str, what: str) -> None:
  if not value or any(c.isspace() for c in value):
    raise ValueError(f"{what} {value!r} cannot be written to a TREC run (empty or whitespace)")


def read_trec_run(path: str | os.PathLike) -> Run:
  """Reads a 6-column TREC run file; errors name the file and line."""
  run: Run = {}
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      cols = line.split()
      if len(cols) != 6:
        raise RunFileError(f"{path}:{number}: expected 6 columns "
                           f"(query-id Q0 doc-id rank score run-name), found {len(cols)}")
      qid, _, did, rank, score, _ = cols
      try:
        int(rank)
        value = float(score)
      except ValueError:
        raise RunFileError(f"{path}:{number}: rank {rank!r} / score {score!r} are not "
                           "numbers") from None
      docs = run.setdefault(qid, {})
      if did in docs:
        raise RunFileError(f"{path}:{number}: document {did!r} appears twice for query {qid!r}")
      docs[did] = value
  return run


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
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_json(path, out)
  return out
