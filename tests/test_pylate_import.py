"""A PyLate ColBERT directory imported as a DualEncoder gives PyLate's own token embeddings.

The directory is written by PyLate itself (tests/pylate_worker.py `build`): all-MiniLM-L6-v2
with PyLate's prefix tokens added and a seeded Dense projection, in several settings (bias or
not, activation, prefixes as new tokens or existing ones, query expansion attended or not, or
none). PyLate then encodes SciFact queries and documents and a few edge texts; the project
encodes the same texts through its retrieval encoding loop. Every text keeps the same vectors
(count and values within 1e-4). And through the project's index, the model's nDCG@10 on
SciFact equals a brute-force MaxSim over PyLate's embeddings.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from pylate_testlib import EDGE_TEXTS
from pylate_testlib import REPO
from pylate_testlib import SETTINGS
from pylate_testlib import TOLERANCE
from pylate_testlib import build_reference
from pylate_testlib import max_difference
from pylate_testlib import project_encode
from pylate_testlib import pylate_encode
from pylate_testlib import scifact_texts
import pytest

from aligner_jax.data import beir
from aligner_jax.eval import ir_metrics
from aligner_jax.io import atomic_write
from aligner_jax.models import pylate_layout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_imported_colbert_equals_pylate(name, scifact_dir, tmp_path):
  model_dir = build_reference(tmp_path, name)
  queries, documents = scifact_texts(scifact_dir, 12)
  queries, documents = queries + EDGE_TEXTS, documents + EDGE_TEXTS
  want_q, want_d = pylate_encode(model_dir, queries, documents, tmp_path)

  model = pylate_layout.load_colbert(model_dir)
  setting = SETTINGS[name]
  assert (model.query_length, model.doc_length) == (setting["query_length"],
                                                     setting["document_length"])
  got_q = project_encode(model.module, model.params, model.vocabulary, queries, "query",
                         model.query_length)
  got_d = project_encode(model.module, model.params, model.vocabulary, documents, "doc",
                         model.doc_length)
  diff_q, diff_d = max_difference(got_q, want_q), max_difference(got_d, want_d)
  print(f"{name}: max |project - PyLate| queries {diff_q:.2e}, documents {diff_d:.2e}")
  assert diff_q <= TOLERANCE and diff_d <= TOLERANCE
  expanded = setting.get("do_query_expansion", True)
  assert all(len(q) == model.query_length for q in got_q) == expanded
  # Long SciFact abstracts are cut at the document length; punctuation is dropped.
  assert max(len(d) for d in got_d) < model.doc_length


def write_scifact_subset(scifact_dir: pathlib.Path, out: pathlib.Path, others: int
                         ) -> pathlib.Path:
  """A BEIR directory: SciFact's test queries, their relevant documents and `others` more."""
  judged = [line.rstrip("\n").split("\t") for line in
            (scifact_dir / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
  relevant = {d for _, d, _ in judged}
  lines = (scifact_dir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
  ids = [json.loads(line)["_id"] for line in lines]
  rest = [i for i, d in enumerate(ids) if d not in relevant]
  chosen = set(np.random.default_rng(0).choice(rest, others, replace=False).tolist())
  corpus = [line for i, line in enumerate(lines) if ids[i] in relevant or i in chosen]
  atomic_write(out / "corpus.jsonl", "\n".join(corpus) + "\n")
  atomic_write(out / "queries.jsonl", (scifact_dir / "queries.jsonl").read_text("utf-8"))
  atomic_write(out / "qrels" / "test.tsv", (scifact_dir / "qrels" / "test.tsv").read_text(
      "utf-8"))
  return out


def maxsim_run(queries: list[np.ndarray], documents: list[np.ndarray], query_ids: list[str],
               doc_ids: list[str], depth: int = 100) -> dict[str, dict[str, float]]:
  """Brute-force MaxSim (Σ_i max_j q_i · d_j) of every query against every document."""
  offsets = np.cumsum([0] + [len(d) for d in documents])
  stacked = np.concatenate(documents)
  run = {}
  for qid, q in zip(query_ids, queries):
    per_token = np.maximum.reduceat(q @ stacked.T, offsets[:-1], axis=1)  # [n, N]
    scores = per_token.sum(axis=0)
    top = np.argsort(-scores, kind="stable")[:depth]
    run[qid] = {doc_ids[i]: float(scores[i]) for i in top}
  return run


def _index_against_brute_force(scifact_dir, work_dir, others: int | None) -> tuple[float, float]:
  """(nDCG@10 of the imported model through the project's ScaNN token index -- the eval job of
  gin/experiments/pylate_colbert_beir.gin --, nDCG@10 of a brute-force MaxSim over PyLate's own
  embeddings), on SciFact's test queries against their relevant documents and `others` more
  (None: the whole corpus)."""
  model_dir = build_reference(work_dir, "bias_identity")
  beir_dir = scifact_dir if others is None else write_scifact_subset(
      scifact_dir, work_dir / "scifact_subset", others)
  collection = beir.read_beir(beir_dir, splits=["test"])
  query_ids = collection.split_queries("test")
  query_texts = [collection.queries.text(collection.queries.index[q]) for q in query_ids]
  doc_texts = [collection.corpus.text(r) for r in range(len(collection.corpus))]
  want_q, want_d = pylate_encode(model_dir, query_texts, doc_texts, work_dir)
  run = maxsim_run(want_q, want_d, query_ids, list(collection.corpus.ids))
  want = ir_metrics.evaluate(collection.qrels["test"], run)[0]["ndcg@10"]
  out = work_dir / "eval"
  subprocess.run([sys.executable, "-m", "aligner_jax.main",
                  "--gin_file=gin/experiments/pylate_colbert_beir.gin",
                  f"--gin.COLBERT_DIR='{model_dir}'", f"--gin.BEIR_DIR='{beir_dir}'",
                  f"--gin.OUTPUT_DIR='{out}'", f"--gin.INDEX_DIR='{out / 'index'}'"],
                 cwd=REPO, check=True, timeout=14000)
  got = json.loads((out / "metrics.json").read_text("utf-8"))["ndcg@10"]
  print(f"nDCG@10: project index {got:.4f}, brute-force MaxSim over PyLate {want:.4f}")
  return got, want


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_index_ndcg_equals_pylate_maxsim(scifact_dir, tmp_path):
  """300 test queries against their relevant documents and 300 others (583 documents)."""
  got, want = _index_against_brute_force(scifact_dir, tmp_path, 300)
  assert abs(got - want) <= 0.003


@pytest.mark.slow
@pytest.mark.timeout(14400)
def test_index_ndcg_equals_pylate_maxsim_full_corpus(scifact_dir, tmp_path):
  """The whole SciFact corpus (5,183 documents): about an hour of CPU on each side."""
  if not os.environ.get("ALIGNER_PYLATE_FULL"):
    pytest.skip("the full-corpus comparison encodes SciFact twice (about 2 CPU-hours); set "
                "ALIGNER_PYLATE_FULL=1 to run it")
  got, want = _index_against_brute_force(scifact_dir, tmp_path, None)
  assert abs(got - want) <= 0.003
