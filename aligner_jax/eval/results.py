"""The one writer of evaluation results: run files, `metrics.json` and the console table.

Every evaluator's runs go through `write_results`, so every mode writes the same files with the
same names: `run.trec` for the primary (first) run, `run.<spec>.trec` for each further run, and
`metrics.json` with the primary run's means and per-query values, `by_alignment` means of every
run, `by_family` means when the queries carry a `family` (the demo's factoid / broad), timings
and the set-up.
"""

import pathlib
from typing import Any, Callable, Mapping

import numpy as np

from aligner_jax.data.collection import Collection
from aligner_jax.eval import ir_metrics
from aligner_jax.retrieval import runs as runs_lib

PerQuery = dict[str, dict[str, float]]


def spec_name(spec: str) -> str:
  """A file-name-safe form of an alignment spec ("top_p:0.015" -> "top_p-0.015")."""
  return "".join(c if c.isalnum() or c in "._-" else "-" for c in spec)


def write_results(out: pathlib.Path, collection: Collection, split: str,
                  runs: Mapping[str, runs_lib.Run], *, timings: Mapping[str, float],
                  setup: Mapping[str, Any], ignore_identical_ids: bool = True,
                  run_name: str = "aligner_jax",
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Judges every run against `split`'s qrels, writes the run files and metrics.json.

  Returns:
    The content of metrics.json.
  """
  by_name: dict[str, tuple[dict[str, float], PerQuery]] = {}
  for i, (name, run) in enumerate(runs.items()):
    mean, per_query = ir_metrics.evaluate(collection.qrels[split], run,
                                          ignore_identical_ids=ignore_identical_ids)
    by_name[name] = (mean, per_query)
    target = out / ("run.trec" if i == 0 else f"run.{spec_name(name)}.trec")
    runs_lib.write_trec_run(target, run, run_name=run_name)
    log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
  primary = next(iter(by_name))
  primary_mean, primary_per_query = by_name[primary]
  return ir_metrics.write_metrics(
      out / "metrics.json", primary_mean, primary_per_query, run=primary,
      by_alignment={n: m for n, (m, _) in by_name.items()}, timings=dict(timings),
      **family_means(collection, {n: pq for n, (_, pq) in by_name.items()}),
      dataset=collection.name, split=split, **setup)


def query_families(collection: Collection) -> dict[str, str | None]:
  """Query id -> the `family` of its metadata (None without one)."""
  meta = collection.queries.metadata or []
  return {q: ((meta[i] if i < len(meta) else None) or {}).get("family")
          for q, i in collection.queries.index.items()}


def family_means(collection: Collection, per_query: Mapping[str, PerQuery]) -> dict[str, Any]:
  """{"by_family": {run: {family: {metric: mean}}}} when the queries carry a `family` in their
  metadata (the demo collection's factoid / broad queries), else {}."""
  meta = collection.queries.metadata
  if not meta:
    return {}
  family = query_families(collection)
  out: dict[str, Any] = {}
  for name, pq in per_query.items():
    groups: dict[str, list[dict[str, float]]] = {}
    for q, values in pq.items():
      if family.get(q) is not None:
        groups.setdefault(family[q], []).append(values)
    if groups:
      out[name] = {f: {m: float(np.mean([v[m] for v in rows])) for m in rows[0]}
                   for f, rows in sorted(groups.items())}
  return {"by_family": out} if out else {}


def summary_table(metrics: Mapping[str, Any]) -> str:
  """A plain-text table of `by_alignment` means, then per query family when known (what the
  demo prints)."""
  keys = list(ir_metrics.METRICS)
  rows = [["run"] + keys]
  for name, row in metrics["by_alignment"].items():
    rows.append([name] + [f"{row[k]:.4f}" for k in keys])
  for name, families in metrics.get("by_family", {}).items():
    for family, row in families.items():
      rows.append([f"{name} [{family}]"] + [f"{row[k]:.4f}" for k in keys])
  widths = [max(len(r[i]) for r in rows) for i in range(len(keys) + 1)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
