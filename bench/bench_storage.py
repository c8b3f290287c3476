"""Storage benchmark: the quality-vs-size curve of the token index on SciFact.

For every refinement vector format (float16 / int8 / product-quantised "pq:M") and document
pruning ratio β^d, builds the project's token index (`build_token_index`) over the cached
all-MiniLM-L6-v2 token vectors of SciFact, saves it (`save_index`), splits the bytes its
verified shard manifests list into what they are for, and measures nDCG@10 on SciFact test:
  refine     refinement vectors (vectors.npy, + scales.npy for int8, + codebook.npy for PQ)
  ann        the MIPS stage's own files (ScaNN's; none for the "exact" backend, which scans
             the refinement vectors — with PQ, the ANN stage runs on the PQ codes)
  maps       offsets (also the token → document map), document ids, the searched-row mask
  extras     saliences, vocabulary ids, pooled vectors (left out here: ALIGNER retrieval with
             top-1 alignment and no salience reads none of them)
`all_in` is every byte of the index divided by the documents' original token count.

Quality: top-1 alignment (MaxSim) refinement, nDCG@10 by pytrec_eval on every judged test
query, against float16 at β^d = 1 (the uncompressed index). Refining every document for every
query costs about 6 TFLOP per configuration at h = 384 (tens of minutes on this shared
machine), so each configuration re-ranks the same candidate pool: per query the union of the
BM25 top 100 and the MiniLM dense (pooled vector) top 100, chosen without any token index so
that it favours no configuration. `--exhaustive` refines every document instead (the limit of
exact candidate search as K′ grows; at the default K′ = 4,000 exact search already reaches
about 96 % of SciFact's documents) and is what checks the pooled numbers.

MiniLM has no salience head, so documents are pruned by a transparent proxy: the IDF of the
token's vocabulary id over the corpus (special tokens, in every document, go first). The
proxy is used only to choose the kept tokens; it is not stored.

`--head PATH.npz` first maps the cached vectors through a head trained on them (the frozen-
encoder regime of docs/reproduction.md: R4's ColBERT projection to 128-d, or R2's ALIGNER head
whose document saliences then replace the IDF proxy); the candidate pool stays MiniLM's, so the
rows of the two curves re-rank the same documents.

Inputs (never re-encoded here; regenerate the full cache with the encode job, see
bench/README.md): `--encoded-dir` (default /work/cache/minilm/scifact: corpus-*-of-*/ and
queries-test/, 256 tokens per document and query) and `--beir-dir` (SciFact).

  python -m bench.bench_storage [--quick] [--formats float16,pq:32] [--ratios 1,0.25]
      [--exhaustive] [--name storage_exhaustive]
  python -m bench.bench_storage --head runs/frozen/heads/colbert-seed0-<key>.npz \
      --name storage_colbert128

Quick: the 400-document bench cache (bench/minilm_vectors.py), every document refined,
nDCG@10 over that subset.
"""

import argparse
import collections
import dataclasses
import pathlib
import sys
import tempfile
import time

import numpy as np

from bench import harness
from bench import head_vectors
from bench import minilm_vectors

DEFAULT_ENCODED_DIR = "/work/cache/minilm/scifact"
ENCODED_LENGTH = 256  # document and query length of the shared cache
QUICK_DOCS = 400  # the cached encoding the quick modes share
PLAID_BYTES = 38.0  # ColBERTv2/PLAID all-in at 2 bits per dimension (issue 7)
GOAL_BYTES = 16.0
GOAL_NDCG_DROP = 0.01
FORMATS = ("float16", "int8", "pq:96", "pq:48", "pq:32", "pq:24", "pq:16")
RATIOS = (1.0, 0.5, 0.25, 0.1)
QUICK_FORMATS = ("float16", "int8", "pq:48", "pq:16")
QUICK_RATIOS = (1.0, 0.25)
POOL_DEPTH = 100
CATEGORIES = ("refine", "ann", "maps", "extras")
UNIT_NORM_NOTE = ("the vectors are L2-normalised, so PQ codes decode to unit norm "
                  "(TokenStore.unit_norm)")
COLUMNS = ("vector_format", "prune_ratio", "searched_tokens", "refine", "ann", "maps",
           "extras", "all_in", "ndcg@10", "delta_ndcg", "meets_goal", "build_s", "refine_s")


def category(rel_path: str) -> str:
  """Which part of the index a shard file (path relative to the shard) belongs to."""
  name = rel_path.split("/")[0]
  if name == "scann":
    return "ann"
  if name in ("vectors.npy", "scales.npy", "codebook.npy"):
    return "refine"
  if name in ("salience.npy", "token_ids.npy", "pooled.npy"):
    return "extras"
  return "maps"


def idf_salience(token_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """[T] float32 log(N / df) of each token's id, df counted over documents."""
  num_docs = len(offsets) - 1
  doc_of = np.repeat(np.arange(num_docs), np.diff(offsets))
  pairs = np.unique(np.stack([token_ids.astype(np.int64), doc_of]), axis=1)
  df = collections.Counter(pairs[0].tolist())
  return np.array([np.log(num_docs / df[t]) for t in token_ids.tolist()], np.float32)


def index_bytes(index_dir: pathlib.Path) -> dict[str, int]:
  """Bytes per category over all shards, from the verified manifests."""
  from aligner_jax.index import files
  from aligner_jax.index.token_index import SHARD_KIND
  from aligner_jax.index.token_index import VERSION
  info = files.read_json(index_dir / "index.json")
  out = dict.fromkeys(CATEGORIES, 0)
  for shard in info["shards"]:
    manifest = files.verify_dir(index_dir / shard["name"], kind=SHARD_KIND, version=VERSION)
    for rel, entry in manifest["files"].items():
      out[category(rel)] += int(entry["bytes"])
  if sum(out.values()) != info["total_bytes"]:
    raise ValueError(f"{index_dir}/index.json: total_bytes {info['total_bytes']} differs from "
                     f"the shard manifests' {sum(out.values())}")
  return out


def candidate_pool(collection, corpus, queries, depth: int = POOL_DEPTH) -> list[np.ndarray]:
  """Per query, the sorted corpus rows of the union of its BM25 and dense top `depth`."""
  from aligner_jax.retrieval.bm25 import BM25
  from aligner_jax.retrieval.dense import dense_search
  table = collection.corpus
  bm25 = BM25(table.ids, [table.text(i) for i in range(len(table))])
  qtable = collection.queries
  lexical = bm25.search([qtable.text(qtable.index[q]) for q in queries.ids], top_n=depth)
  row_of = {d: i for i, d in enumerate(corpus.doc_ids)}
  to_rows = np.array([row_of[d] for d in table.ids], np.int64)
  dense = dense_search(corpus.pooled, queries.pooled, top_n=depth)
  return [np.union1d(to_rows[b], d) for (b, _), (d, _) in zip(lexical, dense)]


def load_inputs(args) -> tuple:
  """(corpus TokenStore with IDF saliences, QueryBatch of judged queries, qrels, label,
  candidate pool per query or None for every document)."""
  from aligner_jax.eval import inputs
  from aligner_jax.retrieval.token_retrieval import QueryBatch
  if args.quick:
    minilm_vectors.prepare(QUICK_DOCS)  # encodes once; cached outside the repository
    corpus, q_store = minilm_vectors.load(QUICK_DOCS)
    collection = inputs.load_split(str(minilm_vectors.scifact_dir()), "test")
    qrels = {q: {d: r for d, r in docs.items() if d in set(corpus.doc_ids)}
             for q, docs in collection.qrels["test"].items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    query_ids = [q for q in q_store.doc_ids if q in qrels]
    rows = np.array([q_store.doc_ids.index(q) for q in query_ids])
    g = q_store.gather_padded(rows, int(q_store.lengths[rows].max()))
    queries = QueryBatch(query_ids, g["vectors"], g["mask"])
    label = f"a {corpus.num_docs}-document subset of SciFact (quick)"
    pool = None
  else:
    collection = inputs.load_split(args.beir_dir, "test")
    corpus = inputs.load_encoded_corpus(args.encoded_dir, collection,
                                        doc_length=ENCODED_LENGTH)
    qrels = collection.qrels["test"]
    query_ids = [q for q in collection.queries.ids if q in qrels]
    queries = inputs.load_encoded_queries(pathlib.Path(args.encoded_dir) / "queries-test",
                                          query_ids, query_length=ENCODED_LENGTH)
    label = "SciFact test (all 5,183 documents)"
    pool = None if args.exhaustive else candidate_pool(collection, corpus, queries)
  if corpus.token_ids is None:
    raise ValueError(f"{args.encoded_dir}: the encoded corpus has no token ids; the IDF "
                     "pruning proxy needs them")
  return corpus, queries, qrels, label, pool


def measure(corpus, queries, qrels, pool, fmt: str, ratio: float, *,
            pq_sample_size: int = 16_384) -> tuple[dict, bool]:
  """Builds, saves and evaluates one configuration; returns its table row (bytes per token)
  and whether the saved index decodes its PQ codes to unit norm (`TokenStore.unit_norm`)."""
  from aligner_jax.eval import ir_metrics
  from aligner_jax.index import IndexConfig
  from aligner_jax.index import build_token_index
  from aligner_jax.index import load_index
  from aligner_jax.index import save_index
  from aligner_jax.retrieval import token_retrieval as tr
  config = IndexConfig(backend="exact", vector_dtype=fmt, prune_doc_ratio=ratio, fields=(),
                       pq_sample_size=pq_sample_size)
  start = time.perf_counter()
  index = build_token_index(corpus, config)
  build_s = time.perf_counter() - start
  with tempfile.TemporaryDirectory(prefix="aligner_storage_") as tmp:
    out = pathlib.Path(tmp) / "index"
    info = save_index(index, out)
    parts = index_bytes(out)
    del index
    index = load_index(out)  # quality is measured on what was written and verified
  if index.doc_ids != corpus.doc_ids:
    raise ValueError("the index numbers documents differently from the corpus store")
  candidates = (tr.all_documents(index, queries) if pool is None else
                tr.Candidates(list(queries.ids), pool, 0, 1.0))
  start = time.perf_counter()
  results = tr.refine(index, queries, candidates, "top_k:1", top_n=100, use_salience=False)
  refine_s = time.perf_counter() - start
  run = tr.to_run(queries.ids, index.doc_ids, results)
  mean, _ = ir_metrics.evaluate(qrels, run, metrics=("ndcg@10",))
  tokens = info["counts"]["original_tokens"]
  row = {"vector_format": fmt, "prune_ratio": ratio,
         "searched_tokens": info["counts"]["ann_tokens"],
         "all_in": round(info["bytes_per_original_token"], 2),
         "ndcg@10": round(mean["ndcg@10"], 4), "build_s": round(build_s, 1),
         "refine_s": round(refine_s, 1)}
  row.update({k: round(v / tokens, 2) for k, v in parts.items()})
  return row, all(shard.store.unit_norm for shard in index.shards)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="token index quality vs bytes per token")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--encoded-dir", default=DEFAULT_ENCODED_DIR,
                      help="the encode job's output for SciFact test (see the docstring)")
  parser.add_argument("--beir-dir", default=None, help="SciFact (default: ../shared/data)")
  parser.add_argument("--formats", default=None, help="comma-separated vector formats")
  parser.add_argument("--ratios", default=None, help="comma-separated β^d values")
  parser.add_argument("--configs", default=None,
                      help="explicit FORMAT@RATIO list, e.g. pq:12@1,pq:24@0.5 (in this order)")
  parser.add_argument("--exhaustive", action="store_true",
                      help="refine every document (default: the BM25 ∪ dense top-100 pool)")
  parser.add_argument("--name", default="storage", help="result name (storage*.json)")
  head_vectors.add_head_args(parser, "the candidate pool stays MiniLM's")
  parser.add_argument("--pq-sample-size", type=int, default=16_384,
                      help="kept tokens sampled to train each PQ codebook")
  parser.add_argument("--resume", action="store_true",
                      help="keep the rows of an earlier run of the same table and measure only "
                           "the configurations it lacks")
  harness.add_results_dir_arg(parser)
  parser.add_argument("--no-report", action="store_true")
  args = harness.resolve_results_dir(parser.parse_args(argv))
  args.beir_dir = args.beir_dir or str(minilm_vectors.scifact_dir())
  formats = (args.formats.split(",") if args.formats else
             QUICK_FORMATS if args.quick else FORMATS)
  ratios = ([float(r) for r in args.ratios.split(",")] if args.ratios else
            QUICK_RATIOS if args.quick else RATIOS)

  if not args.name.startswith("storage"):
    raise SystemExit(f"--name must start with 'storage', got {args.name!r}")
  corpus, queries, qrels, label, pool = load_inputs(args)
  vectors_from = "all-MiniLM-L6-v2 token vectors"
  if args.head:
    corpus, queries = head_vectors.apply_head(args.head, args.head_kind, args.head_dim, corpus,
                                              queries, doc_length=ENCODED_LENGTH)
    vectors_from = (f"all-MiniLM-L6-v2 token vectors through the trained {args.head_kind} head "
                    f"{pathlib.Path(args.head).name}")
  pruned_by = "the head's saliences"
  if corpus.salience is None:
    pruned_by = "IDF proxy salience"
    corpus = dataclasses.replace(corpus,
                                 salience=idf_salience(corpus.token_ids, corpus.offsets))
  how = ("every document refined" if pool is None else
         f"re-ranking the union of the BM25 and dense top {POOL_DEPTH} "
         f"(mean {np.mean([len(p) for p in pool]):.0f} documents per query)")
  table = harness.TableRun(
      args.name, f"Token index quality vs size on {label}: {vectors_from} "
      f"(h = {corpus.dim}, {corpus.num_tokens} document tokens, {len(queries)} judged queries), "
      f"by refinement vector format and document pruning ratio β^d ({pruned_by}); "
      f"columns refine … all_in are bytes per original document token; nDCG@10 of top-1 "
      f"refinement, {how}.",
      COLUMNS, mode="quick" if args.quick else "full",
      plot={"x": "all_in", "y": "ndcg@10", "series": "vector_format", "kind": "line",
            "logx": True, "hlines": []})
  reference = None
  done = set()
  previous = pathlib.Path(args.results_dir) / f"{args.name}.json"
  if args.resume and previous.is_file():
    old = harness.load_result(previous)
    if old["description"] != table.record["description"] or old["columns"] != list(COLUMNS):
      raise SystemExit(f"{previous}: measured on other inputs; cannot resume it")
    for values in old["rows"]:
      row = dict(zip(COLUMNS, values))
      table.add(row)
      done.add((row["vector_format"], float(row["prune_ratio"])))
      if (row["vector_format"], float(row["prune_ratio"])) == ("float16", 1.0):
        reference = row["ndcg@10"]
    table.record["plot"]["hlines"] = old["plot"]["hlines"]
  if args.configs:
    pairs = [c.split("@") for c in args.configs.split(",")]
    grid = [(f, float(r)) for f, r in pairs]
  else:
    grid = [(f, r) for f in formats for r in ratios]
  runs = [("float16", 1.0)] + [c for c in grid if c != ("float16", 1.0)]
  results_dir = pathlib.Path(args.results_dir)
  notes = [
      f"goal (issue 7): all_in ≤ {GOAL_BYTES:.0f} bytes per original token within "
      f"{GOAL_NDCG_DROP * 100:.0f} nDCG@10 point of float16 at β^d = 1; PLAID (ColBERTv2) "
      f"≈ {PLAID_BYTES:.0f} bytes per token all-in at 2 bits",
      "backend exact: the MIPS stage scans the stored refinement vectors (PQ codes for pq:M), "
      "so ann = 0; a ScaNN index would add its AH codes (h / dims_per_block bytes per "
      "searched token) and, unless reorder='stored', an int8 reorder copy (h bytes)",
      ("pruning by the trained head's document saliences (not stored: extras = 0)"
       if pruned_by.startswith("the head") else
       "pruning by a proxy salience, the IDF of the token id over the corpus (MiniLM has no "
       "salience head); the proxy is not stored (extras = 0)"),
      "pq:M: M one-byte codes per token, 256 k-means centroids per sub-space of h / M "
      "dimensions, codebook trained (12 k-means iterations) on "
      f"{args.pq_sample_size:,} sampled kept tokens"]
  result = None
  for fmt, ratio in runs:
    if (fmt, ratio) in done:
      continue
    row, unit_norm = measure(corpus, queries, qrels, pool, fmt, ratio,
                             pq_sample_size=args.pq_sample_size)
    if unit_norm and UNIT_NORM_NOTE not in notes:
      notes.append(UNIT_NORM_NOTE)
    if reference is None:
      reference = row["ndcg@10"]
      table.record["plot"]["hlines"] = [
          {"y": reference, "label": f"float16, β^d = 1: {reference:.3f}"},
          {"y": reference - GOAL_NDCG_DROP, "label": "goal: within 1 point"}]
    row["delta_ndcg"] = round(row["ndcg@10"] - reference, 4)
    row["meets_goal"] = bool(row["all_in"] <= GOAL_BYTES and
                             row["delta_ndcg"] >= -GOAL_NDCG_DROP)
    table.add(row)
    # Written after every row: a long run keeps what it measured.
    result = table.write(results_dir, notes=notes)
  if result is None:
    result = table.write(results_dir, notes=notes)
  if not args.no_report:
    from bench import report
    report.write_plot(result, results_dir / f"{args.name}.png")
    report.update_bench_readme(results_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
