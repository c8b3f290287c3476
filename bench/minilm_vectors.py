"""Real token vectors for the index benchmarks: all-MiniLM-L6-v2 over BEIR SciFact, cached.

  python -m bench.minilm_vectors --docs 400     # encode (once) and print the cache directory

The documents are those relevant to a test query first (sorted by id), then the rest of the
corpus in file order, so a subset still has answers for many test queries; `--docs 0` takes the
whole corpus (5,183 documents). Documents are cut at 256 tokens, queries at 64, through the
project's encoder pipeline (`DualEncoder` with the real MiniLM weights: 384-d, L2-normalised
token vectors, no salience head). Stores are kept in float32 under the cache directory
(`ALIGNER_BENCH_CACHE`, default ~/.cache/aligner_jax/bench), never in the repository:
  scifact_minilm_<docs>docs_<doc_length>/corpus    token store of the documents
  scifact_minilm_<docs>docs_<doc_length>/queries   token store of the 300 test queries
Encoding runs in this process (JAX); benchmark workers only load the stores.
"""

import argparse
import json
import os
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_LENGTH = 256
QUERY_LENGTH = 64


def shared_data() -> pathlib.Path:
  return pathlib.Path(os.environ.get("ALIGNER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def scifact_dir() -> pathlib.Path:
  path = shared_data() / "beir" / "scifact"
  if not (path / "corpus.jsonl").is_file():
    raise FileNotFoundError(f"{path}/corpus.jsonl not found: the index benchmarks need BEIR "
                            "SciFact under ../shared/data (or set ALIGNER_SHARED_DATA)")
  return path


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("ALIGNER_BENCH_CACHE",
                                     pathlib.Path.home() / ".cache" / "aligner_jax" / "bench"))


def cache_dir(num_docs: int, doc_length: int = DOC_LENGTH) -> pathlib.Path:
  name = "all" if num_docs <= 0 else str(num_docs)
  return cache_root() / f"scifact_minilm_{name}docs_{doc_length}"


def is_cached(num_docs: int, doc_length: int = DOC_LENGTH) -> bool:
  d = cache_dir(num_docs, doc_length)
  return (d / "corpus" / "manifest.json").is_file() and (d / "queries" / "manifest.json").is_file()


def _require_cached(num_docs: int, doc_length: int) -> pathlib.Path:
  d = cache_dir(num_docs, doc_length)
  if not is_cached(num_docs, doc_length):
    raise FileNotFoundError(f"{d}: no cached MiniLM vectors; run "
                            f"`python -m bench.minilm_vectors --docs {num_docs}` first")
  return d


def load(num_docs: int, doc_length: int = DOC_LENGTH):
  """(corpus TokenStore, query TokenStore), verified against their manifests."""
  from aligner_jax.index.token_store_io import load_token_store
  d = _require_cached(num_docs, doc_length)
  return load_token_store(d / "corpus"), load_token_store(d / "queries")


def load_vectors(num_docs: int, part: str, doc_length: int = DOC_LENGTH) -> np.ndarray:
  """[T, h] float32 token vectors of "corpus" or "queries", NumPy only (no JAX import), with
  the shape and byte count checked against the store's manifest."""
  d = _require_cached(num_docs, doc_length) / part
  manifest = json.loads((d / "manifest.json").read_text())
  vectors = np.load(d / "vectors.npy", mmap_mode="r")
  want = (manifest["counts"]["tokens"], manifest["counts"]["dim"])
  if vectors.shape != want or vectors.dtype != np.float32:
    raise ValueError(f"{d}/vectors.npy: {vectors.dtype} {vectors.shape}, but the manifest says "
                     f"float32 {want}; delete the cache directory to re-encode")
  if (d / "vectors.npy").stat().st_size != manifest["files"]["vectors.npy"]["bytes"]:
    raise ValueError(f"{d}/vectors.npy: size differs from the manifest (truncated?)")
  return np.ascontiguousarray(vectors)


def load_encoded_vectors(encoded_dir: str | os.PathLike, part: str) -> np.ndarray:
  """[T, h] float32 token vectors of the encode job's output (NumPy only, no JAX import).

  Args:
    encoded_dir: the encode job's OUTPUT_DIR (e.g. /work/cache/minilm/scifact).
    part: "corpus" (every corpus-*-of-* shard, in order) or a store name such as
      "queries-test".
  """
  root = pathlib.Path(encoded_dir)
  dirs = sorted(root.glob("corpus-*-of-*")) if part == "corpus" else [root / part]
  if not dirs or not all((d / "manifest.json").is_file() for d in dirs):
    raise FileNotFoundError(f"{root}: no complete encoded {part!r} store (manifest.json "
                            "missing); run the encode job (bench/README.md) first")
  out = []
  for d in dirs:
    manifest = json.loads((d / "manifest.json").read_text())
    dtype = manifest["config"]["vector_dtype"]
    want = (manifest["counts"]["tokens"], manifest["counts"]["dim"])
    vectors = np.load(d / "vectors.npy", mmap_mode="r")
    if vectors.shape != want or vectors.dtype != np.dtype(dtype):
      raise ValueError(f"{d}/vectors.npy: {vectors.dtype} {vectors.shape}, but the manifest "
                       f"says {dtype} {want}")
    if (d / "vectors.npy").stat().st_size != manifest["files"]["vectors.npy"]["bytes"]:
      raise ValueError(f"{d}/vectors.npy: size differs from the manifest (truncated?)")
    out.append(np.asarray(vectors, np.float32))
  return out[0] if len(out) == 1 else np.concatenate(out)


def prepare(num_docs: int, doc_length: int = DOC_LENGTH) -> pathlib.Path:
  """Encodes and caches the stores unless they are there already; returns the directory."""
  out = cache_dir(num_docs, doc_length)
  if is_cached(num_docs, doc_length):
    return out
  from aligner_jax import models
  from aligner_jax.data.beir import read_beir
  from aligner_jax.eval import retrieval_jobs
  from aligner_jax.eval.inputs import encode_split_queries
  from aligner_jax.index.token_store import from_padded
  from aligner_jax.index.token_store_io import save_token_store
  from aligner_jax.retrieval.encoding import encode_corpus

  collection = read_beir(scifact_dir(), splits=["test"])
  corpus = collection.corpus
  relevant = sorted({d for docs in collection.qrels["test"].values() for d in docs})
  rows = [corpus.index[d] for d in relevant if d in corpus.index]
  chosen = set(rows)
  rows += [r for r in range(len(corpus)) if r not in chosen]
  if num_docs > 0:
    rows = rows[:num_docs]
  module = models.DualEncoder(encoder_config=models.bert_config("minilm_l6"))
  _, params = retrieval_jobs.load_model(module, checkpoint_path=str(models.minilm_model_dir()))
  enc = retrieval_jobs.model_encoders(module, params, "minilm", batch_size=32)
  log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  store = encode_corpus(enc.documents, enc.vocabulary, [corpus.ids[r] for r in rows],
                        [corpus.text(r) for r in rows], max_length=doc_length,
                        vector_dtype="float32", progress=log)
  queries = encode_split_queries(enc, collection, "test", query_length=QUERY_LENGTH, log=log)
  q_store = from_padded(queries.ids, queries.vectors, queries.mask, token_ids=queries.token_ids,
                        pooled=queries.pooled)
  save_token_store(q_store, out / "queries", dataset="scifact", split="test",
                   query_length=QUERY_LENGTH)
  save_token_store(store, out / "corpus", dataset="scifact", doc_length=doc_length,
                   model="all-MiniLM-L6-v2")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--docs", type=int, required=True, help="documents (0: all)")
  parser.add_argument("--doc-length", type=int, default=DOC_LENGTH)
  args = parser.parse_args(argv)
  print(prepare(args.docs, args.doc_length))
  return 0


if __name__ == "__main__":
  sys.exit(main())
