"""report.html: an evaluation's metrics and adaptation tables, and alignment pictures of the
first queries against their best-ranked documents (`aligner_jax.eval.visualize`)."""

import html
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from aligner_jax.data.collection import Collection
from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics
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


def _picture(out: pathlib.Path, collection: Collection, split: str, qid: str, doc_id: str,
             row: int, index: TokenIndex, queries: QueryBatch, b: int, model: ModelEncoders,
             alignment: str) -> str | None:
  """The HTML of query `b`'s alignment with document `doc_id` (index row `row`), its PNG
  written under out/pictures/; None without stored token ids (no token strings to draw)."""
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
  title = f"query {qid} → document {doc_id} ({'relevant' if relevant else 'not judged relevant'})"
  name = f"{spec_name(qid)}.png"
  visualize.save_png(view, out / "pictures" / name, title=title)
  return (visualize.render_html(view, title=title) +
          f'<p><img src="pictures/{html.escape(name)}" style="max-width:100%"></p>')


def write_report(out: pathlib.Path, collection: Collection, split: str, run: runs_lib.Run,
                 index: TokenIndex, queries: QueryBatch, model: ModelEncoders, *,
                 alignment: str, num_pictures: int, metrics: Mapping[str, Any],
                 adaptation_reports: Sequence[dict[str, Any]] = ()) -> pathlib.Path:
  """report.html: the metrics table, the adaptation table and, for the first `num_pictures`
  queries, the alignment picture of the query and its best-ranked document."""
  parts = [f"<h1>{html.escape(collection.name)} / {html.escape(split)}</h1>",
           _metrics_table(metrics)]
  for r in adaptation_reports:
    parts.append("<h2>Few-shot alignment adaptation</h2><pre>" +
                 html.escape(adaptation_lib.table_markdown([r])) + "</pre>")
  parts.append(f"<h2>Alignments ({html.escape(alignment)})</h2>")
  row_of_doc = {d: i for i, d in enumerate(index.doc_ids)}
  for b, qid in enumerate(queries.ids[:num_pictures]):
    ranked = runs_lib.ranked(run.get(qid, {}))
    if not ranked:
      continue
    doc_id = ranked[0][0]
    picture = _picture(out, collection, split, qid, doc_id, row_of_doc[doc_id], index, queries,
                       b, model, alignment)
    if picture is None:
      break
    parts.append(picture)
  page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>aligner_jax report"
          "</title></head><body style=\"font-family:sans-serif;max-width:70em\">" +
          "".join(parts) + "</body></html>\n")
  path = out / "report.html"
  atomic_write(path, page)
  return path
