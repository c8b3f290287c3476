"""The evaluation pipeline behind the encode / index / eval_beir jobs, as plain functions.

`evaluate_beir` runs one model on one BEIR split and writes to `output_dir`:
  run.trec          the 6-column TREC run of the first alignment (or of the dense / BM25 path)
  run.<spec>.trec   one per further alignment (the same candidates, refined differently)
  metrics.json      ndcg@10, mrr@10, recall@100, recall@1000, map (first alignment) with
                    per-query values, `by_alignment` means, timings and the set-up
  adaptation.json / adaptation.md   few-shot alignment adaptation (when asked)
  report.html (+ pictures/)          tables and alignment pictures (when asked)
Retrievers: "scann" / "exact" (the token index with refinement), "dense" (pooled vectors),
"bm25". The token index is loaded from `index_dir` when one is there (checksums verified;
a different backend or pruning ratio is an error that names the fix), otherwise built from
the encoded corpus and saved; `rebuild_index=True` always rebuilds. The dense path reads the
pooled document vectors from that index when there is one, else encodes the corpus.
With `encoded_dir` (the encode job's output: corpus-*-of-*/ and queries-<split>/), the corpus
and, when that split is there, the queries are read from it instead of being encoded; their
lengths and document ids must match this run (an error names the directory otherwise).
`rerank_depth` > 0 re-ranks BM25's top documents instead, with each alignment
(`rerank_with="alignment"`) or with the model's LITE / KNRM head (`"lite"`).

Progress goes to `log` (print by default) with counts and rates.
"""

import dataclasses
import html
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from aligner_jax.data.beir import read_beir
from aligner_jax.data.collection import Collection
from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics as metrics_lib
from aligner_jax.retrieval import runs as runs_lib
from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenIndex
from aligner_jax.index import build_token_index
from aligner_jax.index import index_exists
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index import concatenate
from aligner_jax.index.files import IndexFileError
from aligner_jax.index.files import MANIFEST
from aligner_jax.index.files import read_json
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import dense_search
from aligner_jax.retrieval.token_retrieval import refine_many
from aligner_jax.retrieval import rerank
from aligner_jax.retrieval import to_run
from aligner_jax.retrieval import token_scorer
from aligner_jax.retrieval import alignment_pair_fn
from aligner_jax.retrieval.encoding import Encoder
from aligner_jax.retrieval.encoding import encode_corpus
from aligner_jax.retrieval.encoding import encode_queries
from aligner_jax.scoring import Alignment

RETRIEVERS = ("scann", "exact", "dense", "bm25")
Log = Callable[[str], None]


def _print(message: str) -> None:
  print(message, flush=True)


@dataclasses.dataclass
class ModelEncoders:
  """What the pipeline needs from a model: its vocabulary, the two sides' encoders and, for
  models with a LITE / KNRM head, that head as a re-ranking pair_fn with its fixed lengths."""
  vocabulary: Any
  queries: Encoder
  documents: Encoder
  lite: Callable[..., Any] | None = None
  lite_lengths: tuple[int, int] | None = None


DEMO = "demo"


def load_split(beir_dir: str, split: str) -> Collection:
  """The BEIR directory's corpus, queries and `split` qrels; "demo" is the built-in demo
  collection (ALIGNER_DEMO_DIR, or generated in memory)."""
  if beir_dir == DEMO:
    from aligner_jax.data import loaders  # pylint: disable=g-import-not-at-top
    collection = loaders.demo_collection()
    if split not in collection.qrels:
      raise ValueError(f"the demo collection has no split {split!r} "
                       f"(has {sorted(collection.qrels)})")
    return collection
  return read_beir(beir_dir, splits=[split])


def spec_name(spec: str) -> str:
  """A file-name-safe form of an alignment spec ("top_p:0.015" -> "top_p-0.015")."""
  return "".join(c if c.isalnum() or c in "._-" else "-" for c in spec)


def encode_split_queries(model: ModelEncoders, collection: Collection, split: str, *,
                         query_length: int, log: Log = _print) -> QueryBatch:
  ids = collection.split_queries(split)
  texts = [collection.queries.texts[collection.queries.index[q]] for q in ids]
  log(f"encoding {len(ids)} {split} queries")
  return encode_queries(model.queries, model.vocabulary, ids, texts, max_length=query_length,
                        progress=log)


def encode_collection_corpus(model: ModelEncoders, collection: Collection, *, doc_length: int,
                             vector_dtype: str = "float16", rows: slice = slice(None),
                             log: Log = _print) -> TokenStore:
  corpus = collection.corpus
  index = range(len(corpus))[rows]
  log(f"encoding {len(index)} documents (max {doc_length} tokens)")
  return encode_corpus(model.documents, model.vocabulary, [corpus.ids[i] for i in index],
                       [corpus.text(i) for i in index], max_length=doc_length,
                       vector_dtype=vector_dtype, progress=log)


def corpus_shards(encoded_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """The complete set of encoded corpus shards (corpus-<p>-of-<P>/) in `encoded_dir`."""
  found = sorted(pathlib.Path(encoded_dir).glob("corpus-*-of-*"))
  if not found:
    raise IndexFileError(encoded_dir, "no encoded corpus shards (corpus-*-of-*) here; "
                         "run the encode job first")
  counts = {p.name.rsplit("-of-", 1)[1] for p in found}
  if len(counts) != 1 or len(found) != int(counts.pop()):
    raise IndexFileError(encoded_dir, f"incomplete set of corpus shards: "
                         f"{[p.name for p in found]}")
  return found


def _check_encoded(directory: pathlib.Path, key: str, want: int) -> None:
  config = read_json(pathlib.Path(directory) / MANIFEST).get("config", {})
  if config.get(key) != want:
    raise IndexFileError(directory, f"encoded with {key}={config.get(key)!r} but this run asks "
                         f"for {want}; re-encode or set the evaluation length to match")


def load_encoded_corpus(encoded_dir: str | pathlib.Path, collection: Collection, *,
                        doc_length: int, log: Log = _print) -> TokenStore:
  """The encoded corpus shards of `encoded_dir` (verified) as one store, checked against
  `collection`'s document ids and `doc_length`."""
  t = time.time()
  shards = corpus_shards(encoded_dir)
  for shard in shards:
    _check_encoded(shard, "doc_length", doc_length)
  store = concatenate([load_token_store(p) for p in shards])
  if sorted(store.doc_ids) != sorted(collection.corpus.ids):
    raise IndexFileError(encoded_dir, f"the encoded corpus holds {store.num_docs} documents "
                         f"that are not the {len(collection.corpus)} of {collection.name}")
  log(f"read {store.num_docs} encoded documents from {encoded_dir} in {time.time() - t:.1f}s")
  return store


def load_encoded_queries(directory: str | pathlib.Path, query_ids: Sequence[str], *,
                         query_length: int) -> QueryBatch:
  """The encoded queries in `directory` (queries-<split>/, verified) as a padded batch in the
  order of `query_ids`."""
  directory = pathlib.Path(directory)
  _check_encoded(directory, "query_length", query_length)
  store = load_token_store(directory)
  row = {q: i for i, q in enumerate(store.doc_ids)}
  missing = [q for q in query_ids if q not in row]
  if missing:
    raise IndexFileError(directory, f"{len(missing)} queries were not encoded, e.g. {missing[:3]}")
  rows = np.array([row[q] for q in query_ids], np.int64)
  g = store.gather_padded(rows, max(1, int(store.lengths[rows].max(initial=0))))
  return QueryBatch(list(query_ids), g["vectors"], g["mask"], g.get("salience"),
                    g.get("token_ids"), None if store.pooled is None else store.pooled[rows])


def obtain_index(index_dir: str | None, config: IndexConfig, *, rebuild: bool,
                 corpus_fn: Callable[[], TokenStore], log: Log = _print) -> TokenIndex:
  """Loads the index in `index_dir` (verified) or builds it from `corpus_fn()` and saves it."""
  if index_dir and index_exists(index_dir) and not rebuild:
    t = time.time()
    index = load_index(index_dir)
    found = index.config
    for field in ("backend", "prune_doc_ratio", "vector_dtype", "refine_tokens"):
      if getattr(found, field) != getattr(config, field):
        raise ValueError(f"{index_dir}: the existing index has {field}={getattr(found, field)!r} "
                         f"but this run asks for {getattr(config, field)!r}; set "
                         "REBUILD_INDEX=True (or another INDEX_DIR) to rebuild it")
    log(f"loaded index {index_dir}: {index.num_docs} documents, {index.num_ann_tokens} "
        f"searched tokens, checksums verified in {time.time() - t:.1f}s")
    return index
  store = corpus_fn()
  t = time.time()
  log(f"building {config.backend} index over {store.num_tokens} tokens (β^d = "
      f"{config.prune_doc_ratio})")
  index = build_token_index(store, config)
  log(f"built {len(index.shards)} shard(s), {index.num_ann_tokens} searched tokens, in "
      f"{time.time() - t:.1f}s")
  if index_dir:
    info = save_index(index, index_dir)
    log(f"saved {index_dir}: {info['total_bytes'] / 2**20:.1f} MiB, "
        f"{info['bytes_per_original_token']:.1f} bytes per original token")
  return index


def _metrics_for(collection: Collection, split: str, run: runs_lib.Run,
                 ignore_identical_ids: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  return metrics_lib.evaluate(collection.qrels[split], run,
                              ignore_identical_ids=ignore_identical_ids)


def evaluate_beir(*, beir_dir: str, split: str, output_dir: str, retriever: str = "scann",
                  model: ModelEncoders | None = None, index_dir: str | None = None,
                  index_config: IndexConfig | None = None, rebuild_index: bool = False,
                  alignments: Sequence[str] = ("top_k:1",), num_neighbors: int = 4000,
                  prune_query_ratio: float = 1.0, top_n: int = 1000,
                  doc_length: int = 256, query_length: int = 64,
                  rerank_depth: int = 0, rerank_with: str = "alignment",
                  adaptation: bool = False,
                  num_pictures: int = 0, ignore_identical_ids: bool = True,
                  encoded_dir: str | None = None,
                  run_name: str = "aligner_jax", log: Log = _print) -> dict[str, Any]:
  """Runs one retriever on one BEIR split and writes the files of the module docstring.

  Returns:
    The content of metrics.json.
  """
  if retriever not in RETRIEVERS:
    raise ValueError(f"RETRIEVER must be one of {RETRIEVERS}, got {retriever!r}")
  if model is None and (retriever != "bm25" or rerank_depth > 0):
    raise ValueError(f"retriever {retriever!r} (re-rank depth {rerank_depth}) needs a model")
  alignments = [str(Alignment.parse(a)) for a in alignments]
  if not alignments:
    raise ValueError("give at least one alignment")
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  timings: dict[str, float] = {}
  t0 = time.time()
  collection = load_split(beir_dir, split)
  qids = collection.split_queries(split)
  log(f"{collection.name}/{split}: {len(collection.corpus)} documents, {len(qids)} judged "
      "queries")
  runs: dict[str, runs_lib.Run] = {}
  extra: dict[str, Any] = {"dataset": collection.name, "split": split, "retriever": retriever}
  index = queries = cands = None
  refined: dict[str, Any] = {}

  def corpus_store(vector_dtype: str = "float16") -> TokenStore:
    # Product-quantised codes are trained by the index build, after pruning, on the kept
    # tokens; the corpus is held as float16 until then.
    vector_dtype = "float16" if vector_dtype.startswith("pq:") else vector_dtype
    if encoded_dir:
      return load_encoded_corpus(encoded_dir, collection, doc_length=doc_length,
                                 log=log).with_vector_dtype(vector_dtype)
    return encode_collection_corpus(model, collection, doc_length=doc_length,
                                    vector_dtype=vector_dtype, log=log)

  def split_queries() -> QueryBatch:
    stored = pathlib.Path(encoded_dir or "") / f"queries-{split}"
    if encoded_dir and stored.is_dir():
      log(f"reading {len(qids)} encoded {split} queries from {stored}")
      return load_encoded_queries(stored, qids, query_length=query_length)
    return encode_split_queries(model, collection, split, query_length=query_length, log=log)

  if retriever == "bm25" or rerank_depth:
    t = time.time()
    corpus = collection.corpus
    bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
    texts = [collection.queries.texts[collection.queries.index[q]] for q in qids]
    first = to_run(qids, corpus.ids, bm25.search(texts, max(top_n, rerank_depth)))
    timings["bm25_s"] = time.time() - t
    if rerank_depth:
      store = corpus_store()
      queries = split_queries()
      t = time.time()
      if rerank_with == "lite":
        if model.lite is None:
          raise ValueError("RERANK_WITH='lite' needs a model with a LITE / KNRM head "
                           "(DualEncoder.lite_scorer)")
        q_len, d_len = model.lite_lengths
        runs["lite"] = rerank(first, token_scorer(queries, store, model.lite,
                                                  query_length=q_len, doc_length=d_len),
                              depth=rerank_depth)
      else:
        for spec in alignments:
          runs[spec] = rerank(first, token_scorer(queries, store, alignment_pair_fn(spec)),
                              depth=rerank_depth)
      timings["rerank_s"] = time.time() - t
      extra.update(first_stage="bm25", rerank_depth=rerank_depth, rerank_with=rerank_with)
    else:
      runs["bm25"] = first
  elif retriever == "dense":
    if index_dir and index_exists(index_dir) and not rebuild_index:
      # The token index stores every document's pooled vector: no need to encode again.
      index = load_index(index_dir)
      doc_ids, pooled = index.doc_ids, index.pooled()
      log(f"pooled document vectors from the index in {index_dir}")
    else:
      store = corpus_store()
      doc_ids, pooled = store.doc_ids, store.pooled
    if pooled is None:
      raise ValueError("the dense path needs pooled document vectors, and these have none")
    queries = split_queries()
    if queries.pooled is None:
      raise ValueError("the dense path needs pooled query vectors, and these have none")
    t = time.time()
    results = dense_search(pooled, queries.pooled, top_n)
    timings["search_s"] = time.time() - t
    runs["dense"] = to_run(queries.ids, doc_ids, results)
    index = None
  else:
    config = index_config or IndexConfig()
    config = dataclasses.replace(config, backend=retriever)
    index = obtain_index(index_dir, config, rebuild=rebuild_index, log=log,
                         corpus_fn=lambda: corpus_store(config.vector_dtype))
    queries = split_queries()
    t = time.time()
    cands = candidate_documents(index, queries, num_neighbors=num_neighbors,
                                prune_query_ratio=prune_query_ratio)
    timings["candidates_s"] = time.time() - t
    sizes = cands.sizes()
    log(f"candidates: K′ = {cands.num_neighbors}, β^q = {prune_query_ratio}, mean "
        f"{sizes.mean():.0f} / max {sizes.max()} documents per query "
        f"({timings['candidates_s']:.1f}s)")
    # One refinement pass scores the candidates under every alignment asked for and, with
    # adaptation, under every strategy it chooses from.
    specs = list(dict.fromkeys(alignments + (list(adaptation_lib.STRATEGIES)
                                             if adaptation else [])))
    t = time.time()
    refined = refine_many(index, queries, cands, specs, top_n=top_n, progress=log)
    timings["refine_s"] = time.time() - t
    log(f"refined {len(queries)} queries with {len(specs)} alignments in "
        f"{timings['refine_s']:.1f}s")
    for spec in alignments:
      runs[spec] = to_run(queries.ids, index.doc_ids, refined[spec])
    extra.update(num_neighbors=cands.num_neighbors, prune_query_ratio=prune_query_ratio,
                 index=index.config.to_json(), candidates_mean=float(sizes.mean()),
                 candidates_max=int(sizes.max()))

  names = list(runs)
  by_name = {}
  for i, name in enumerate(names):
    mean, per_query = _metrics_for(collection, split, runs[name], ignore_identical_ids)
    by_name[name] = (mean, per_query)
    target = out / ("run.trec" if i == 0 else f"run.{spec_name(name)}.trec")
    runs_lib.write_trec_run(target, runs[name], run_name=run_name)
    log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
  timings["total_s"] = time.time() - t0
  primary_mean, primary_per_query = by_name[names[0]]
  result = metrics_lib.write_metrics(
      out / "metrics.json", primary_mean, primary_per_query, run=names[0],
      by_alignment={n: m for n, (m, _) in by_name.items()}, timings=timings,
      **_family_means(collection, {n: pq for n, (_, pq) in by_name.items()}), **extra)

  reports = []
  if adaptation:
    if cands is None:
      raise ValueError("few-shot adaptation needs the token index (RETRIEVER 'scann' or "
                       "'exact'): it re-refines the same candidates")
    reports.append(run_adaptation(index, queries, cands, collection, split, top_n=top_n,
                                  ignore_identical_ids=ignore_identical_ids, log=log,
                                  refined=refined))
    table = adaptation_lib.write_adaptation(out, reports)
    log("few-shot alignment adaptation (nDCG@10 x 100):\n" + table)
  if num_pictures and index is not None:
    write_report(out, collection, split, runs[names[0]], index, queries, model,
                 alignment=names[0], num_pictures=num_pictures, metrics=result,
                 adaptation_reports=reports)
  return result


def run_adaptation(index: TokenIndex, queries: QueryBatch, cands: Any, collection: Collection,
                   split: str, *, top_n: int = 1000, ignore_identical_ids: bool = True,
                   strategies: Sequence[str] = adaptation_lib.STRATEGIES, seed: int = 0,
                   refined: dict[str, Any] | None = None, log: Log = _print) -> dict[str, Any]:
  """ALIGNER §4.1 few-shot adaptation over the fixed candidate sets `cands`; `refined` holds
  results of `refine_many` already computed on them (strategies missing there are refined
  here, all in one pass)."""
  qrels = collection.qrels[split]
  refined = dict(refined or {})
  missing = [s for s in strategies if s not in refined]
  if missing:
    refined.update(refine_many(index, queries, cands, missing, top_n=top_n, progress=log))

  def per_query(spec: str) -> dict[str, float]:
    run = to_run(queries.ids, index.doc_ids, refined[spec])
    _, pq = metrics_lib.evaluate(qrels, run, metrics=("ndcg@10",),
                                 ignore_identical_ids=ignore_identical_ids)
    return {q: v["ndcg@10"] for q, v in pq.items()}

  ids = [q for q in queries.ids if q in qrels]
  ndcg = adaptation_lib.score_strategies(per_query, ids, strategies, progress=log)
  return adaptation_lib.adaptation_report(ndcg, ids, strategies, seed=seed,
                                          dataset=f"{collection.name}/{split}")


def write_report(out: pathlib.Path, collection: Collection, split: str, run: runs_lib.Run,
                 index: TokenIndex, queries: QueryBatch, model: ModelEncoders, *,
                 alignment: str, num_pictures: int, metrics: dict[str, Any],
                 adaptation_reports: Sequence[dict[str, Any]] = ()) -> pathlib.Path:
  """report.html: the metrics table, the adaptation table and, for the first `num_pictures`
  queries, the alignment picture of the query and its best-ranked document."""
  from aligner_jax.eval import visualize  # pylint: disable=g-import-not-at-top  (matplotlib)
  from aligner_jax.retrieval.encoding import token_strings  # pylint: disable=g-import-not-at-top
  pictures = out / "pictures"
  parts = [f"<h1>{html.escape(collection.name)} / {html.escape(split)}</h1>",
           "<h2>Metrics</h2><table border=1 cellpadding=4><tr><th>run</th>"]
  names = list(metrics["by_alignment"])
  keys = list(metrics_lib.METRICS)
  parts.append("".join(f"<th>{k}</th>" for k in keys) + "</tr>")
  for name in names:
    row = metrics["by_alignment"][name]
    parts.append(f"<tr><td><code>{html.escape(name)}</code></td>" +
                 "".join(f"<td>{row[k]:.4f}</td>" for k in keys) + "</tr>")
  parts.append("</table>")
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
    g = index.gather_padded(np.array([row_of_doc[doc_id]]), int(index.doc_lengths[
        row_of_doc[doc_id]]) or 1)
    d_mask = g["mask"][0]
    if "token_ids" not in g:
      break  # without stored token ids there are no token strings to draw
    q_mask = queries.mask[b]
    view = visualize.alignment_view(
        token_strings(model.vocabulary, queries.token_ids[b][q_mask]),
        token_strings(model.vocabulary, g["token_ids"][0][d_mask]),
        queries.vectors[b][q_mask], g["vectors"][0][d_mask], alignment=alignment,
        q_salience=None if queries.salience is None else queries.salience[b][q_mask],
        d_salience=g["salience"][0][d_mask] if "salience" in g else None)
    relevant = collection.qrels[split].get(qid, {}).get(doc_id, 0) > 0
    title = f"query {qid} → document {doc_id} ({'relevant' if relevant else 'not judged relevant'})"
    name = f"{spec_name(qid)}.png"
    visualize.save_png(view, pictures / name, title=title)
    parts.append(visualize.render_html(view, title=title))
    parts.append(f'<p><img src="pictures/{html.escape(name)}" style="max-width:100%"></p>')
  page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>aligner_jax report"
          "</title></head><body style=\"font-family:sans-serif;max-width:70em\">" +
          "".join(parts) + "</body></html>\n")
  path = out / "report.html"
  tmp = out / ".report.html.tmp"
  tmp.write_text(page, encoding="utf-8")
  tmp.replace(path)
  return path


def _family_means(collection: Collection,
                  per_query: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
  """{"by_family": {run: {family: {metric: mean}}}} when the queries carry a `family` in their
  metadata (the demo collection's factoid / broad queries), else {}."""
  meta = collection.queries.metadata
  if not meta:
    return {}
  family = {q: (meta[i] or {}).get("family") for q, i in collection.queries.index.items()}
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


def summary_table(metrics: dict[str, Any]) -> str:
  """A plain-text table of `by_alignment` means, then per query family when known (what the
  demo prints)."""
  keys = list(metrics_lib.METRICS)
  rows = [["run"] + keys]
  for name, row in metrics["by_alignment"].items():
    rows.append([name] + [f"{row[k]:.4f}" for k in keys])
  for name, families in metrics.get("by_family", {}).items():
    for family, row in families.items():
      rows.append([f"{name} [{family}]"] + [f"{row[k]:.4f}" for k in keys])
  widths = [max(len(r[i]) for r in rows) for i in range(len(keys) + 1)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
