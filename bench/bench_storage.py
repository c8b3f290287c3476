"""Storage benchmark: all-in bytes per original document token of the token index, from its files.

For every refinement vector format (float32 / float16 / int8) and document pruning ratio β^d,
builds the project's ScaNN token index (`build_token_index`, default settings) over real
all-MiniLM-L6-v2 token vectors of SciFact (bench/minilm_vectors.py), saves it (`save_index`)
and splits the bytes its shard manifests list into what they are for:
  ann        the ScaNN files (partitioner, AH codes, int8 reorder vectors)
  refine     refinement vectors (vectors.npy + scales.npy for int8)
  salience   token saliences (needed by salience-weighted refinement, A = Ã ⊙ u^q ⊗ u^d)
  token_ids  vocabulary ids (only COIL needs them)
  maps       offsets, the token → document map, refinement rows, document ids
  pooled     pooled document vectors (the dense path)
`all_in` is every byte of the index divided by the documents' original token count;
`aligner` leaves out token_ids and pooled, which ALIGNER retrieval does not read.

MiniLM has no salience head, so documents are pruned by a proxy salience, the token's IDF over
the encoded corpus (special tokens, present in every document, go first); the byte counts do not
depend on which saliences choose the kept tokens.

  python -m bench.bench_storage [--quick]
"""

import argparse
import collections
import pathlib
import sys
import tempfile
import time

import numpy as np

from bench import harness
from bench import minilm_vectors

QUICK_DOCS = 400  # the cached encoding the quick modes share
QUICK_USE_DOCS = 100  # documents of it indexed in quick mode (ScaNN builds dominate the time)
PLAID_BYTES = 38.0  # ColBERTv2/PLAID all-in at 2 bits per dimension (issue 7)
GOAL_BYTES = 16.0
CATEGORIES = ("ann", "refine", "salience", "token_ids", "maps", "pooled")
COLUMNS = ("vector_dtype", "prune_ratio", "documents", "original_tokens", "searched_tokens",
           "ann", "refine", "salience", "token_ids", "maps", "pooled", "aligner", "all_in",
           "build_s")


def category(rel_path: str) -> str:
  """Which part of the index a shard file (path relative to the shard) belongs to."""
  name = rel_path.split("/")[0]
  if name == "scann":
    return "ann"
  return {"vectors.npy": "refine", "scales.npy": "refine", "salience.npy": "salience",
          "token_ids.npy": "token_ids", "pooled.npy": "pooled", "offsets.npy": "maps",
          "ann_doc.npy": "maps", "ann_rows.npy": "maps", "doc_ids.json": "maps"}.get(name, "maps")


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
  info = files.read_json(index_dir / "index.json")
  out = dict.fromkeys(CATEGORIES, 0)
  for shard in info["shards"]:
    manifest = files.verify_dir(index_dir / shard["name"], kind="token_index_shard", version=1)
    for rel, entry in manifest["files"].items():
      out[category(rel)] += int(entry["bytes"])
  if sum(out.values()) != info["total_bytes"]:
    raise ValueError(f"{index_dir}/index.json: total_bytes {info['total_bytes']} differs from "
                     f"the shard manifests' {sum(out.values())}")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="token index bytes per original token")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--docs", type=int, default=None, help="documents (0: all)")
  parser.add_argument("--results-dir", default=str(harness.RESULTS_DIR))
  parser.add_argument("--no-report", action="store_true")
  args = parser.parse_args(argv)
  num_docs = args.docs if args.docs is not None else (QUICK_DOCS if args.quick else 0)
  dtypes = ("float16", "int8") if args.quick else ("float32", "float16", "int8")
  ratios = (1.0, 0.25) if args.quick else (1.0, 0.5, 0.25, 0.1)

  from aligner_jax.index import IndexConfig, build_token_index, save_index
  from aligner_jax.index.store import TokenStore

  minilm_vectors.prepare(num_docs)  # encodes once; cached outside the repository

  corpus, _ = minilm_vectors.load(num_docs)
  use = corpus.num_docs if not args.quick else min(QUICK_USE_DOCS, corpus.num_docs)
  end = int(corpus.offsets[use])
  token_ids = corpus.token_ids[:end]
  store = TokenStore(corpus.doc_ids[:use], corpus.offsets[:use + 1], corpus.vectors[:end],
                     None, idf_salience(token_ids, corpus.offsets[:use + 1]), token_ids,
                     corpus.pooled[:use])
  table = harness.TableRun(
      "storage", "Token index bytes per original document token (MiniLM over SciFact, "
      f"{store.num_docs} documents, {store.num_tokens} tokens, h = {store.dim}), by refinement "
      "vector format and document pruning ratio; columns ann … pooled are bytes per original "
      "token.", COLUMNS, mode="quick" if args.quick else "full",
      plot={"x": "prune_ratio", "y": "aligner", "series": "vector_dtype", "kind": "line",
            "logy": True,
            "hlines": [{"y": PLAID_BYTES, "label": "PLAID 2-bit (38 B)"},
                       {"y": GOAL_BYTES, "label": "goal (16 B)"}]})
  for dtype in dtypes:
    for ratio in ratios:
      start = time.perf_counter()
      index = build_token_index(store, IndexConfig(backend="scann", vector_dtype=dtype,
                                                   prune_doc_ratio=ratio))
      build_s = time.perf_counter() - start
      with tempfile.TemporaryDirectory(prefix="aligner_storage_") as tmp:
        out = pathlib.Path(tmp) / "index"
        info = save_index(index, out)
        parts = index_bytes(out)
      tokens = info["counts"]["original_tokens"]
      row = {"vector_dtype": dtype, "prune_ratio": ratio, "documents": info["counts"]["documents"],
             "original_tokens": tokens, "searched_tokens": info["counts"]["ann_tokens"],
             "all_in": info["bytes_per_original_token"], "build_s": round(build_s, 1)}
      row.update({k: v / tokens for k, v in parts.items()})
      row["aligner"] = (sum(parts.values()) - parts["token_ids"] - parts["pooled"]) / tokens
      table.add(row)
  result = table.write(pathlib.Path(args.results_dir), notes=[
      f"reference points: PLAID (ColBERTv2) ≈ {PLAID_BYTES:.0f} bytes per token all-in at 2 "
      f"bits; the project's goal is ≤ {GOAL_BYTES:.0f} within 1 nDCG@10 point",
      "pruning uses a proxy salience (token IDF): MiniLM has no salience head",
      "quality (nDCG@10) of each configuration is not measured here yet"])
  if not args.no_report:
    from bench import report
    report.write_plot(result, pathlib.Path(args.results_dir) / "storage.png")
    report.update_readme(harness.BENCH_DIR / "README.md", pathlib.Path(args.results_dir))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
