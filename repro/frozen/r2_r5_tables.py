"""Markdown tables of the R2-R5 result files, with the papers' numbers beside ours.

`python -m repro.frozen.r2_r5_tables docs/results/r2.json [...]` (from the repository root)
prints them; the jobs write the same text next to each JSON file (`r<N>.md`). Numbers are
x 100, mean ± std over seeds. The papers' numbers come from `docs/results/papers.json`.
"""

import json
import sys
from typing import Any, Mapping, Sequence

from repro.papers import paper_numbers

# The paper's name of each student loss of R5 (Menon et al. Table 1), by objective key.
R5_LOSS_NAMES = {"one_hot_ce": "one-hot CE", "mse": "MSE", "margin_mse": "margin MSE",
                 "m3se": "M3SE", "softmax_ce": "softmax CE", "rankdistil_b": "RankDistil-B"}
R5_TEACHER = "teacher (cross-attention)"  # the paper's teacher row


def _ms(entry: Mapping[str, float], scale: float = 100.0) -> str:
  if entry.get("n", 1) > 1:
    return f"{scale * entry['mean']:.1f} ± {scale * entry['std']:.1f}"
  return f"{scale * entry['mean']:.1f}"


def r2_table(content: Mapping[str, Any]) -> str:
  lines = []
  for gate, entry in content["results"].items():
    lines += [f"Gate `{gate}` (seeds: {len(entry['seeds'])}); Δ = change from "
              f"β^d = {entry['summary'][0]['reference'][0]:g}, β^q = "
              f"{entry['summary'][0]['reference'][1]:g} in nDCG@10 points:", "",
              "| β^d | β^q | doc tokens indexed | nDCG@10 | Δ | MRR@10 |",
              "|---|---|---|---|---|---|"]
    for c in entry["summary"]:
      lines.append(f"| {100 * c['doc_ratio']:g} % | {100 * c['query_ratio']:g} % | "
                   f"{100 * c['indexed_fraction']:.1f} % | {_ms(c['ndcg@10'])} | "
                   f"{_ms(c['delta_points'], 1.0)} | {_ms(c['mrr@10'])} |")
    lines.append("")
  return "\n".join(lines)


def _setting(chosen: Mapping[str, Any] | None) -> str:
  """The swept settings a head kept ("lr 0.001, dropout 0.2"), or "—"."""
  if not chosen:
    return "—"
  short = {"learning_rate": "lr", "doc_token_dropout": "dropout", "weight_decay": "wd"}
  return ", ".join(f"{short.get(k, k)} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                   for k, v in chosen.items())


def _best_steps(entry: Mapping[str, Any]) -> str:
  return "/".join(str(s["training"].get("best_step", "—")) for s in entry["seeds"])


def sweep_table(rows_by_name: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
  """Dev nDCG@10 (and the step kept) of every swept setting, one row per head / student."""
  rows_by_name = {k: v for k, v in rows_by_name.items() if v}
  if not rows_by_name:
    return ""
  fields = [k for k in next(iter(rows_by_name.values()))[0]
            if k not in ("dev_ndcg@10", "best_step")]
  settings = [tuple(r[f] for f in fields) for r in next(iter(rows_by_name.values()))]
  label = lambda values: _setting(dict(zip(fields, values)))  # noqa: E731
  lines = ["Dev nDCG@10 × 100 (step kept) per swept setting:", "",
           "| | " + " | ".join(label(v) for v in settings) + " |",
           "|---" * (len(settings) + 1) + "|"]
  for name, rows in rows_by_name.items():
    by = {tuple(r[f] for f in fields): r for r in rows}
    lines.append(f"| {name} | " + " | ".join(
        f"{100 * by[v]['dev_ndcg@10']:.1f} ({by[v]['best_step']})" if v in by else ""
        for v in settings) + " |")
  return "\n".join(lines) + "\n"


def r4_table(content: Mapping[str, Any]) -> str:
  results = content["results"]
  datasets = list(results["bm25"])
  head = "| model | " + " | ".join(f"{d} MRR@10 | {d} nDCG@10" for d in datasets) + \
         " | dev nDCG@10 | setting (dev) | step kept | seeds |"
  lines = [head, "|---" * (2 * len(datasets) + 5) + "|"]
  lines.append("| BM25 (first stage) | " + " | ".join(
      f"{100 * results['bm25'][d]['mrr@10']:.1f} | {100 * results['bm25'][d]['ndcg@10']:.1f}"
      for d in datasets) + " | | | | |")
  for name, entry in results.items():
    if name == "bm25":
      continue
    cells = " | ".join(f"{_ms(entry['summary'][d]['mrr@10'])} | "
                       f"{_ms(entry['summary'][d]['ndcg@10'])}" for d in datasets)
    dev = entry.get("dev_ndcg@10")
    lines.append(f"| {name} | {cells} | {_ms(dev) if dev else '—'} | "
                 f"{_setting(entry.get('chosen'))} | {_best_steps(entry) if dev else '—'} | "
                 f"{len(entry['seeds'])} |")
  sweep = sweep_table({n: e.get("sweep") for n, e in results.items() if n != "bm25"})
  return "\n".join(lines) + "\n" + (f"\n{sweep}" if sweep else "")


def _paper_pair(entry: Mapping[str, float] | None) -> str:
  """"MRR@10 / nDCG@10" x 100 of a paper row, "—" without one."""
  if not entry:
    return "—"
  return f"{100 * entry['mrr@10']:.1f} / {100 * entry['ndcg@10']:.1f}"


def r5_table(content: Mapping[str, Any]) -> str:
  r = content["results"]
  paper = paper_numbers("r5")["msmarco"]
  names = R5_LOSS_NAMES
  ds = content["setup"]["data"]["name"]
  lines = ["| student loss | MRR@10 | nDCG@10 | setting (dev) | step kept | "
           "paper MS MARCO MRR@10 / nDCG@10 |",
           "|---|---|---|---|---|---|",
           f"| teacher ({r['teacher']['name']}) | {100 * r['teacher'][ds]['mrr@10']:.1f} | "
           f"{100 * r['teacher'][ds]['ndcg@10']:.1f} | "
           f"{_setting(r['teacher'].get('chosen'))} | "
           f"{r['teacher']['training'].get('best_step', '—')} | "
           f"{_paper_pair(paper[R5_TEACHER])} (cross-attention) |",
           f"| BM25 | {100 * r['bm25']['mrr@10']:.1f} | {100 * r['bm25']['ndcg@10']:.1f} | | | "
           f"{_paper_pair(paper['BM25'])} |"]
  for key, entry in r["students"].items():
    lines.append(f"| {names.get(key, key)} | {_ms(entry['summary']['mrr@10'])} | "
                 f"{_ms(entry['summary']['ndcg@10'])} | {_setting(entry.get('chosen'))} | "
                 f"{_best_steps(entry)} | {_paper_pair(paper.get(names.get(key, key)))} |")
  sweep = sweep_table({names.get(k, k): e.get("sweep") for k, e in r["students"].items()})
  return "\n".join(lines) + "\n" + (f"\n{sweep}" if sweep else "")


def table(content: Mapping[str, Any]) -> str:
  claim = content["claim"]
  if claim in ("r2", "r3"):
    return r2_table(content)
  return {"r4": r4_table, "r5": r5_table}[claim](content)


def main(argv: list[str]) -> None:
  for path in argv[1:]:
    with open(path, encoding="utf-8") as f:
      print(f"## {path}\n\n{table(json.load(f))}")


if __name__ == "__main__":
  main(sys.argv)
