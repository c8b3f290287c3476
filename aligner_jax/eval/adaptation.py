"""Few-shot alignment adaptation (ALIGNER §3.1, §4.1) and its Table-3-style report.

Protocol: the judged queries are shuffled (seeded) and split into folds of 8 (a remainder
smaller than a fold is never a fold, only test data). For each fold, the alignment strategy
with the highest mean nDCG@10 over the fold's 8 queries is chosen among top-k ∈ {1, 2, 4, 6, 8}
and top-p ∈ {0.5, 1, 1.5, 2} % (ties: the earlier strategy in that list, so top-1 wins a tie);
its mean nDCG@10 over all the other judged queries is that fold's test score. The report is the
mean ± standard deviation (population, ddof = 0) of the test scores over folds.

Only refinement depends on the alignment, so callers score every strategy on the same
candidate sets (`score_strategies` takes a function strategy -> per-query nDCG@10) and the fold
logic (`adapt`) works on the resulting [strategies, queries] matrix.
"""

import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from aligner_jax.io import atomic_write
from aligner_jax.io import write_json

TOP_K = (1, 2, 4, 6, 8)
TOP_P = (0.005, 0.01, 0.015, 0.02)
STRATEGIES = tuple(f"top_k:{k}" for k in TOP_K) + tuple(f"top_p:{p}" for p in TOP_P)
FOLD_SIZE = 8


def make_folds(num_queries: int, *, fold_size: int = FOLD_SIZE,
               seed: int = 0) -> list[np.ndarray]:
  """⌊num_queries / fold_size⌋ disjoint folds of query positions after a seeded shuffle."""
  if fold_size < 1:
    raise ValueError(f"fold size must be positive, got {fold_size}")
  if num_queries < fold_size + 1:
    raise ValueError(f"few-shot adaptation needs more than {fold_size} judged queries (one "
                     f"fold plus test queries), got {num_queries}")
  perm = np.random.default_rng(seed).permutation(num_queries)
  num_folds = num_queries // fold_size
  return [np.sort(perm[i * fold_size:(i + 1) * fold_size]) for i in range(num_folds)]


def adapt(ndcg: np.ndarray, folds: Sequence[np.ndarray]) -> dict[str, Any]:
  """The fold logic on per-query scores.

  Args:
    ndcg: [S, Q] float, nDCG@10 of query q under strategy s.
    folds: disjoint arrays of query positions (from `make_folds`).

  Returns:
    {"chosen": [F] strategy positions, "fold_scores": [F] best mean on the fold,
     "test_scores": [F] mean of the chosen strategy on the other queries,
     "mean": float, "std": float}.
  """
  ndcg = np.asarray(ndcg, np.float64)
  num_queries = ndcg.shape[1]
  chosen, fold_scores, test_scores = [], [], []
  for fold in folds:
    on_fold = ndcg[:, fold].mean(axis=1)
    best = int(np.argmax(on_fold))  # argmax takes the first maximum: earlier strategies win ties
    rest = np.setdiff1d(np.arange(num_queries), fold)
    chosen.append(best)
    fold_scores.append(float(on_fold[best]))
    test_scores.append(float(ndcg[best, rest].mean()))
  return {"chosen": chosen, "fold_scores": fold_scores, "test_scores": test_scores,
          "mean": float(np.mean(test_scores)), "std": float(np.std(test_scores))}


def score_strategies(per_query_ndcg: Callable[[str], Mapping[str, float]],
                     query_ids: Sequence[str], strategies: Sequence[str] = STRATEGIES,
                     progress: Callable[[str], None] | None = None) -> np.ndarray:
  """[S, Q] nDCG@10 matrix; `per_query_ndcg(strategy)` maps query id -> nDCG@10."""
  rows = []
  for s in strategies:
    values = per_query_ndcg(s)
    missing = [q for q in query_ids if q not in values]
    if missing:
      raise ValueError(f"strategy {s}: no nDCG@10 for queries {missing[:5]}")
    rows.append([float(values[q]) for q in query_ids])
    if progress is not None:
      progress(f"{s}: nDCG@10 {np.mean(rows[-1]):.4f}")
  return np.asarray(rows)


def adaptation_report(ndcg: np.ndarray, query_ids: Sequence[str],
                      strategies: Sequence[str] = STRATEGIES, *, fold_size: int = FOLD_SIZE,
                      seed: int = 0, dataset: str = "") -> dict[str, Any]:
  """The content of `adaptation.json` for one dataset."""
  folds = make_folds(len(query_ids), fold_size=fold_size, seed=seed)
  result = adapt(ndcg, folds)
  return {
      "dataset": dataset, "fold_size": fold_size, "seed": seed,
      "num_queries": len(query_ids), "num_folds": len(folds),
      "strategies": list(strategies),
      "ndcg@10": {s: float(np.mean(ndcg[i])) for i, s in enumerate(strategies)},
      "adapted": {"mean": result["mean"], "std": result["std"]},
      "folds": [{"queries": [query_ids[i] for i in fold], "chosen": strategies[c],
                 "fold_ndcg@10": f, "test_ndcg@10": t}
                for fold, c, f, t in zip(folds, result["chosen"], result["fold_scores"],
                                         result["test_scores"])],
  }


def _header(strategy: str) -> str:
  kind, value = strategy.split(":")
  if kind == "top_p":
    return f"p={float(value) * 100:g}%"
  return f"k={value}"


def table_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
  """A Markdown table like ALIGNER Table 3: nDCG@10 (×100) per dataset under each strategy and
  after few-shot adaptation (mean ± std); the best fixed strategy of each row in bold."""
  if not reports:
    raise ValueError("no adaptation reports to tabulate")
  strategies = list(reports[0]["strategies"])
  head = ["dataset"] + [_header(s) for s in strategies] + ["adapted (8-shot)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in reports:
    if list(r["strategies"]) != strategies:
      raise ValueError("reports use different strategy lists")
    values = [r["ndcg@10"][s] * 100 for s in strategies]
    best = max(values)
    cells = [f"**{v:.1f}**" if v == best else f"{v:.1f}" for v in values]
    adapted = r["adapted"]
    cells.append(f"{adapted['mean'] * 100:.1f} ± {adapted['std'] * 100:.1f}")
    lines.append("| " + " | ".join([r.get("dataset") or "-"] + cells) + " |")
  return "\n".join(lines) + "\n"


def write_adaptation(output_dir: str | pathlib.Path,
                     reports: Sequence[Mapping[str, Any]]) -> str:
  """Writes `adaptation.json` (all reports) and `adaptation.md` (the table); returns the table."""
  output_dir = os.fspath(output_dir)  # not pathlib: a gs:// directory works as well
  table = table_markdown(reports)
  write_json(os.path.join(output_dir, "adaptation.json"),
             {"reports": list(reports), "table": table})
  atomic_write(os.path.join(output_dir, "adaptation.md"), table)
  return table
