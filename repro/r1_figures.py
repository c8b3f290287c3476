"""The R1 figures: nDCG@10 of every alignment strategy per dataset, and which strategies the
few-shot folds picked.

Both take R1 reports (`r1.r1_report`: "dataset", "strategies", "ndcg@10" {strategy: fraction},
"picked" {strategy: folds}, "num_folds") and write a PNG atomically with matplotlib's Agg
backend.
"""

import os
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from aligner_jax.plots import write_png


def _label(strategy: str) -> str:
  kind, value = strategy.split(":")
  return f"top-p {float(value) * 100:g}%" if kind == "top_p" else f"top-k {value}"


def strategy_matrix(reports: Sequence[Mapping[str, Any]],
                    paper_rows: Sequence[Mapping[str, Any]] = ()) -> tuple[
                        list[str], list[str], np.ndarray]:
  """(strategies, column names, values [S, D] nDCG@10 x 100): our datasets, then the paper's
  rows (`r1.paper_numbers()["rows"]`, already x 100) as extra columns."""
  if not reports:
    raise ValueError("no R1 reports to draw")
  strategies = list(reports[0]["strategies"])
  names, columns = [], []
  for r in reports:
    if list(r["strategies"]) != strategies:
      raise ValueError(f"{r['dataset']}: another strategy list than {reports[0]['dataset']}")
    names.append(r["dataset"])
    columns.append([r["ndcg@10"][s] * 100 for s in strategies])
  for row in paper_rows:
    if len(row["ndcg@10"]) != len(strategies):
      raise ValueError(f"{row['dataset']}: {len(row['ndcg@10'])} values for "
                       f"{len(strategies)} strategies")
    names.append(row["dataset"])
    columns.append(list(row["ndcg@10"]))
  return strategies, names, np.asarray(columns, np.float64).T


def plot_strategy_heatmap(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                          paper_rows: Sequence[Mapping[str, Any]] = ()) -> pathlib.Path:
  """Strategy x dataset heat map. Colour: points of nDCG@10 below the best strategy of the same
  dataset (each column normalised by its maximum, so the best per dataset is the brightest
  cell whatever the dataset's level); text: the nDCG@10 x 100 itself; the best cell is boxed."""
  strategies, names, values = strategy_matrix(reports, paper_rows)
  gap = values - values.max(axis=0, keepdims=True)
  num_s, num_d = values.shape
  fig, ax = plt.subplots(figsize=(2.2 + 1.45 * num_d, 1.4 + 0.42 * num_s))
  vmin = min(-10.0, float(gap.min()))
  im = ax.imshow(gap, aspect="auto", cmap="magma", vmin=vmin, vmax=0.0, interpolation="nearest")
  for s in range(num_s):
    for d in range(num_d):
      ax.text(d, s, f"{values[s, d]:.1f}", ha="center", va="center", fontsize=8,
              color="black" if gap[s, d] > 0.55 * vmin else "white")
  for d in range(num_d):
    best = int(np.argmax(values[:, d]))
    ax.add_patch(plt.Rectangle((d - 0.5, best - 0.5), 1, 1, fill=False, edgecolor="#00b050",
                               linewidth=2.2))
  if paper_rows:
    ax.axvline(len(reports) - 0.5, color="white", linewidth=3)
  ax.set_yticks(range(num_s), [_label(s) for s in strategies], fontsize=8)
  ax.set_xticks(range(num_d), [n.replace(" (", "\n(") for n in names], fontsize=7,
                rotation=30, ha="right")
  ax.set_title("nDCG@10 x 100 per alignment strategy (box: best of the column)", fontsize=9)
  fig.colorbar(im, ax=ax, label="points below the column's best")
  fig.tight_layout()
  return write_png(fig, path)


def plot_picks(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> pathlib.Path:
  """One stacked bar per dataset: the share of folds of 8 that picked each strategy."""
  if not reports:
    raise ValueError("no R1 reports to draw")
  strategies = list(reports[0]["strategies"])
  counts = np.asarray([[r["picked"][s] for s in strategies] for r in reports], np.float64)
  folds = np.asarray([r["num_folds"] for r in reports], np.float64)
  if np.any(counts.sum(axis=1) != folds):
    raise ValueError("picked counts do not add up to the number of folds")
  share = counts / folds[:, None]
  cmap = plt.get_cmap("tab10")
  fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.55 * len(reports)))
  left = np.zeros(len(reports))
  for i, s in enumerate(strategies):
    ax.barh(range(len(reports)), share[:, i], left=left, color=cmap(i % 10), label=_label(s))
    for row in np.nonzero(share[:, i] >= 0.08)[0]:
      ax.text(left[row] + share[row, i] / 2, row, f"{int(counts[row, i])}", ha="center",
              va="center", fontsize=7, color="white")
    left += share[:, i]
  ax.set_yticks(range(len(reports)),
                [f"{r['dataset']}\n({r['num_folds']} folds)" for r in reports], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("share of folds of 8 queries (numbers: folds)")
  ax.set_title("Alignment strategy picked by 8-shot adaptation", fontsize=9)
  ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  return write_png(fig, path)
