"""Figures of the frozen-encoder claims (PNG, matplotlib Agg, written atomically).

Each takes the result dict of `experiments` and a path: `plot_pruning` (R2: nDCG@10 against the
kept fraction of document tokens, one line per β^q), `plot_gates` (R3: one line per gate),
`plot_rerank` (R4) and `plot_distillation` (R5): bars with the seeds' standard deviation.
"""

import os
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt

from aligner_jax.plots import write_png


def _save(fig: Any, path: str | os.PathLike) -> pathlib.Path:
  fig.tight_layout()
  return write_png(fig, path)


def _curve(ax, summary: Sequence[Mapping[str, Any]], query_ratio: float, label: str) -> None:
  cells = sorted((c for c in summary if c["query_ratio"] == query_ratio),
                 key=lambda c: c["doc_ratio"])
  ax.errorbar([100 * c["doc_ratio"] for c in cells],
              [100 * c["ndcg@10"]["mean"] for c in cells],
              yerr=[100 * c["ndcg@10"]["std"] for c in cells], marker="o", capsize=3,
              label=label)


def _save_ratio_axes(fig: Any, ax: Any, path: str | os.PathLike, title: str) -> pathlib.Path:
  """Labels the nDCG@10-vs-β^d axes of the pruning curves (log x) and saves."""
  ax.set_xscale("log")
  ax.set_xticks([10, 20, 50, 100], ["10", "20", "50", "100"])
  ax.set_xlabel("document tokens kept, β^d (%)")
  ax.set_ylabel("nDCG@10 (mean ± std over seeds)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_pruning(result: Mapping[str, Any], path: str | os.PathLike, *, gate: str = "lp",
                 title: str = "") -> pathlib.Path:
  summary = result[gate]["summary"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for bq in sorted({c["query_ratio"] for c in summary}, reverse=True):
    _curve(ax, summary, bq, f"β^q = {100 * bq:g}%")
  full = max(summary, key=lambda c: (c["doc_ratio"], c["query_ratio"]))
  ref = 100 * full["ndcg@10"]["mean"]
  ax.axhspan(ref - 1.0, ref, color="0.85", zorder=0, label="within 1 point of no pruning")
  return _save_ratio_axes(fig, ax, path, title)


GATE_LABELS = {"lp": "entropic LP, exact solver", "relu": "ReLU gate",
               "hard_topk": "hard top-k"}


def gate_label(gate: str) -> str:
  """The legend of an R3 gate ("lp_iters3" -> "entropic LP, 3 Eq. 5 iterations")."""
  if gate.startswith("lp_iters"):
    return f"entropic LP, {gate[len('lp_iters'):]} Eq. 5 iterations"
  return GATE_LABELS.get(gate, gate)


def plot_gates(result: Mapping[str, Any], path: str | os.PathLike, *, query_ratio: float,
               title: str = "") -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for gate, entry in result.items():
    _curve(ax, entry["summary"], query_ratio, gate_label(gate))
  return _save_ratio_axes(fig, ax, path, title)


def _bars(ax, names: Sequence[str], means: Sequence[float], stds: Sequence[float]) -> None:
  ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)


def plot_rerank(result: Mapping[str, Any], path: str | os.PathLike, *, dataset: str,
                metric: str = "ndcg@10", title: str = "") -> pathlib.Path:
  names = [n for n in result if n != "bm25"]
  fig, ax = plt.subplots(figsize=(6, 3.8))
  _bars(ax, names, [100 * result[n]["summary"][dataset][metric]["mean"] for n in names],
        [100 * result[n]["summary"][dataset][metric]["std"] for n in names])
  ax.axhline(100 * result["bm25"][dataset][metric], color="k", ls="--", lw=1,
             label="BM25 (first stage)")
  ax.set_ylabel(f"{metric} × 100")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_distillation(result: Mapping[str, Any], path: str | os.PathLike, *, dataset: str,
                      metric: str = "ndcg@10", title: str = "") -> pathlib.Path:
  students = result["students"]
  names = list(students)
  fig, ax = plt.subplots(figsize=(6, 3.8))
  _bars(ax, names, [100 * students[n]["summary"][metric]["mean"] for n in names],
        [100 * students[n]["summary"][metric]["std"] for n in names])
  ax.axhline(100 * result["teacher"][dataset][metric], color="tab:red", lw=1,
             label=f"teacher ({result['teacher']['name']})")
  ax.axhline(100 * result["bm25"][metric], color="k", ls="--", lw=1, label="BM25")
  ax.set_ylabel(f"{metric} × 100 (students: mean ± std)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  return _save(fig, path)
