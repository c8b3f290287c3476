"""report.html: the claims first (per query family: top-1, the best fixed strategy, the 8-shot
adapted one; the cost of pruning), then the per-family, adaptation, pruning and metrics tables,
and alignment pictures of relevant query-document pairs, one per query family in turn, each
family drawn under its best fixed alignment (`aligner_jax.eval.visualize`)."""

import html
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from aligner_jax.data.collection import Collection
from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics
from aligner_jax.eval import results as results_lib
from aligner_jax.eval import visualize
from aligner_jax.eval.inputs import ModelEncoders
from aligner_jax.eval.results import spec_name
from aligner_jax.index import TokenIndex
from aligner_jax.io import atomic_write
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import runs as runs_lib
from aligner_jax.retrieval.encoding import token_strings


def _metrics_table(metrics: Mapping[str, Any]) -> str:
  keys = list(ir_metrics.METRICS)
  parts = ["<h2>Metrics</h2><table border=1 cellpadding=4><tr><th>run</th>",
           "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
  for name, row in metrics["by_alignment"].items():
    parts.append(f"<tr><td><code>{html.escape(name)}</code></td>" +
                 "".join(f"<td>{row[k]:.4f}</td>" for k in keys) + "</tr>")
  parts.append("</table>")
  return "".join(parts)


def _family_table(metrics: Mapping[str, Any], metric: str = "ndcg@10") -> str:
  """nDCG@10 per query family (columns) and alignment (rows), the best per family in bold;
  empty when the queries carry no family."""
  by_family = metrics.get("by_family") or {}
  families = sorted({f for row in by_family.values() for f in row})
  if not families:
    return ""
  best = {f: max(row[f][metric] for row in by_family.values() if f in row) for f in families}
  parts = [f"<h2>{html.escape(metric)} per query family</h2><table border=1 cellpadding=4>"
           "<tr><th>alignment</th>" + "".join(f"<th>{html.escape(f)}</th>" for f in families)
           + "<th>all</th></tr>"]
  for name, row in by_family.items():
    cells = []
    for f in families:
      value = row.get(f, {}).get(metric)
      text = "" if value is None else f"{value:.4f}"
      cells.append(f"<td><b>{text}</b></td>" if value == best[f] else f"<td>{text}</td>")
    overall = metrics["by_alignment"].get(name, {}).get(metric)
    parts.append(f"<tr><td><code>{html.escape(name)}</code></td>" + "".join(cells) +
                 ("<td></td>" if overall is None else f"<td>{overall:.4f}</td>") + "</tr>")
  parts.append("</table>")
  return "".join(parts)


def best_alignment_per_family(metrics: Mapping[str, Any], alignments: Sequence[str],
                               metric: str = "ndcg@10") -> dict[str, str]:
  """Family -> the alignment of `alignments` with the best `metric` on it (earlier ones win
  ties); empty when the queries carry no family."""
  by_family = metrics.get("by_family") or {}
  best: dict[str, tuple[float, str]] = {}
  for name in alignments:
    for family, row in by_family.get(name, {}).items():
      if family not in best or row[metric] > best[family][0]:
        best[family] = (row[metric], name)
  return {f: name for f, (_, name) in best.items()}


def _claims_section(adaptation_reports: Sequence[Mapping[str, Any]],
                    pruning: Mapping[str, Any] | None) -> str:
  """One row per adaptation report (all queries, then each family): nDCG@10 of top-1, of the
  best fixed strategy and of the 8-shot adapted one; then what pruning to the evaluation's
  β^d cost against searching every token."""
  parts = []
  if adaptation_reports:
    rows = []
    for r in adaptation_reports:
      scores = r["ndcg@10"]
      best = max(r["strategies"], key=lambda s: scores[s])  # first maximum wins ties
      top1 = scores.get("top_k:1")
      adapted = r["adapted"]["mean"]
      rows.append(f"<tr><td>{html.escape(r.get('dataset') or '-')}</td>"
                  f"<td>{'' if top1 is None else f'{top1:.3f}'}</td>"
                  f"<td><code>{html.escape(best)}</code> {scores[best]:.3f}</td>"
                  f"<td>{adapted:.3f} ± {r['adapted']['std']:.3f}</td>"
                  f"<td>{adapted - scores[best]:+.3f}</td></tr>")
    parts.append("<h2>Claims: the best alignment depends on the task</h2>"
                 "<table border=1 cellpadding=4><tr><th>queries</th><th>top-1</th>"
                 "<th>best fixed strategy</th><th>adapted (8-shot)</th>"
                 "<th>adapted − best fixed</th></tr>" + "".join(rows) + "</table>")
  if pruning:
    by_ratio = {p["prune_doc_ratio"]: p for p in pruning["points"]}
    if 1.0 in by_ratio and len(by_ratio) > 1:
      full = by_ratio[1.0]
      items = "".join(
          f"<li>β<sup>d</sup> = {ratio}: {p['searched_tokens']:,} of "
          f"{full['searched_tokens']:,} tokens searched, nDCG@10 {p['ndcg@10']:.3f} against "
          f"{full['ndcg@10']:.3f} unpruned ({p['ndcg@10'] - full['ndcg@10']:+.3f})</li>"
          for ratio, p in sorted(by_ratio.items(), reverse=True) if ratio != 1.0)
      parts.append("<h2>Claims: salience pruning</h2><ul>" + items + "</ul>")
  return "".join(parts)


def _pruning_section(pruning: Mapping[str, Any]) -> str:
  """The pruning curve: pruning.png and its numbers."""
  points = sorted(pruning["points"], key=lambda p: -p["prune_doc_ratio"])
  families = sorted({f for p in points for f in p["by_family"]})
  rows = "".join(
      f"<tr><td>{p['prune_doc_ratio']}</td><td>{p['searched_tokens']}</td>"
      f"<td>{p['ndcg@10']:.4f}</td>" +
      "".join(f"<td>{p['by_family'].get(f, float('nan')):.4f}</td>" for f in families) + "</tr>"
      for p in points)
  return (f"<h2>Salience pruning: nDCG@10 ({html.escape(pruning['alignment'])}) against "
          "β<sup>d</sup></h2><p><img src=\"pruning.png\"></p><table border=1 cellpadding=4>"
          "<tr><th>β<sup>d</sup></th><th>searched tokens</th><th>all</th>" +
          "".join(f"<th>{html.escape(f)}</th>" for f in families) + "</tr>" + rows + "</table>")


def _picture(out: pathlib.Path, collection: Collection, split: str, qid: str, doc_id: str,
             row: int, index: TokenIndex, queries: QueryBatch, b: int, model: ModelEncoders,
             alignment: str, *, rank: int, family: str) -> str | None:
  """The HTML of query `b`'s alignment with document `doc_id` (index row `row`, ranked `rank`
  by the run), its PNG written under out/pictures/; None without stored token ids (no token
  strings to draw)."""
  g = index.gather_padded(np.array([row]), int(index.doc_lengths[row]) or 1)
  if "token_ids" not in g:
    return None
  d_mask, q_mask = g["mask"][0], queries.mask[b]
  view = visualize.alignment_view(
      token_strings(model.vocabulary, queries.token_ids[b][q_mask]),
      token_strings(model.vocabulary, g["token_ids"][0][d_mask]),
      queries.vectors[b][q_mask], g["vectors"][0][d_mask], alignment=alignment,
      q_salience=None if queries.salience is None else queries.salience[b][q_mask],
      d_salience=g["salience"][0][d_mask] if "salience" in g else None)
  relevant = collection.qrels[split].get(qid, {}).get(doc_id, 0) > 0
  kind = f"{family} query" if family else "query"
  title = (f"{kind} {qid} → document {doc_id} "
           f"({'relevant' if relevant else 'not judged relevant'}, ranked {rank})")
  name = f"{spec_name(qid)}.png"
  visualize.save_png(view, out / "pictures" / name, title=title)
  return (visualize.render_html(view, title=title) +
          f'<p><img src="pictures/{html.escape(name)}" style="max-width:100%"></p>')


def picture_pairs(run: runs_lib.Run, qrels: Mapping[str, Mapping[str, int]],
                  query_ids: Sequence[str], family_of: Mapping[str, str],
                  num_pictures: int, *,
                  family_runs: Mapping[str, runs_lib.Run] | None = None,
                  ) -> list[tuple[str, str, int]]:
  """(query id, relevant document id, its rank) pairs to draw, at most `num_pictures`.

  Families take turns (in order of first appearance), so every family gets a picture before
  any gets a second. Within a family, queries whose relevant document the run ranks first come
  first, then the others by that document's rank; queries without a relevant document in the
  run are never drawn, so every picture shows a relevant pair. A family in `family_runs` is
  ranked by its own run there (its best alignment's), the others by `run`.
  """
  by_family: dict[str, list[tuple[int, int, str, str]]] = {}
  for position, qid in enumerate(query_ids):
    ranking = (family_runs or {}).get(family_of.get(qid, ""), run).get(qid, {})
    ranks = {d: r for r, (d, _) in enumerate(runs_lib.ranked(ranking), start=1)}
    relevant = [(ranks[d], d) for d, g in qrels.get(qid, {}).items() if g > 0 and d in ranks]
    family = by_family.setdefault(family_of.get(qid, ""), [])
    if relevant:
      rank, doc_id = min(relevant)
      family.append((rank, position, qid, doc_id))
  queues = [sorted(pairs) for pairs in by_family.values()]
  out = []
  while len(out) < num_pictures and any(queues):
    for queue in queues:
      if queue and len(out) < num_pictures:
        rank, _, qid, doc_id = queue.pop(0)
        out.append((qid, doc_id, rank))
  return out


def write_report(out: pathlib.Path, collection: Collection, split: str,
                 runs: Mapping[str, runs_lib.Run], index: TokenIndex, queries: QueryBatch,
                 model: ModelEncoders, *, num_pictures: int, metrics: Mapping[str, Any],
                 adaptation_reports: Sequence[dict[str, Any]] = (),
                 pruning: Mapping[str, Any] | None = None) -> pathlib.Path:
  """report.html (see the module docstring). `runs`: alignment -> run, the first one the
  evaluation's own; a query family's pictures use its best alignment among them (by nDCG@10),
  queries without a family the first."""
  alignment = next(iter(runs))
  parts = [f"<h1>{html.escape(collection.name)} / {html.escape(split)}</h1>",
           _claims_section(adaptation_reports, pruning), _family_table(metrics)]
  if adaptation_reports:
    parts.append("<h2>Few-shot alignment adaptation (nDCG@10 x 100; best fixed strategy in "
                 "bold)</h2><pre>" +
                 html.escape(adaptation_lib.table_markdown(adaptation_reports)) + "</pre>")
  if pruning:
    parts.append(_pruning_section(pruning))
  parts.append(_metrics_table(metrics))
  best = best_alignment_per_family(metrics, list(runs))
  drawn = ", ".join(f"{f}: {a}" for f, a in sorted(best.items())) or alignment
  parts.append(f"<h2>Alignments ({html.escape(drawn)})</h2>")
  row_of_doc = {d: i for i, d in enumerate(index.doc_ids)}
  row_of_query = {q: b for b, q in enumerate(queries.ids)}
  family_of = {q: f or "" for q, f in results_lib.query_families(collection).items()}
  pairs = picture_pairs(runs[alignment], collection.qrels[split], queries.ids, family_of,
                        num_pictures, family_runs={f: runs[a] for f, a in best.items()})
  for qid, doc_id, rank in pairs:
    family = family_of.get(qid, "")
    picture = _picture(out, collection, split, qid, doc_id, row_of_doc[doc_id], index, queries,
                       row_of_query[qid], model, best.get(family, alignment), rank=rank,
                       family=family)
    if picture is None:
      break
    parts.append(picture)
  page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>aligner_jax report"
          "</title></head><body style=\"font-family:sans-serif;max-width:70em\">" +
          "".join(parts) + "</body></html>\n")
  path = out / "report.html"
  atomic_write(path, page)
  return path
