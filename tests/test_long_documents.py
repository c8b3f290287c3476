"""Long documents as overlapping passages (retrieval/passages.py): windows, ids, scoring back
per document, encoding, and on real data -- concatenations of 4 SciFact abstracts, relevance
inherited -- MaxP finds the right concatenation wherever the relevant abstract sits, while
cutting documents at the encoder length (or scoring the first passage) does not."""

import json
import pathlib

import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest
from train_testlib import run_main

from aligner_jax import models
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.eval import evaluators
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.retrieval import encoding
from aligner_jax.retrieval import passages as passages_lib


@pytest.mark.parametrize("n,room,overlap,want", [
    (0, 4, 1, [(0, 0)]), (3, 4, 1, [(0, 3)]), (4, 4, 1, [(0, 4)]), (5, 4, 1, [(0, 4), (3, 5)]),
    (10, 4, 1, [(0, 4), (3, 7), (6, 10)]), (10, 4, 0, [(0, 4), (4, 8), (8, 10)]),
])
def test_windows_cover_the_text_with_overlap(n, room, overlap, want):
  ids = list(range(100, 100 + n))
  assert passages_lib.windows(ids, room, overlap) == [ids[a:b] for a, b in want]


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="must be smaller"):
    passages_lib.windows([1, 2, 3], 4, 4)
  with pytest.raises(ValueError, match="scoring 'sum'"):
    passages_lib.Passages(8, "sum")
  with pytest.raises(ValueError, match="ENCODED_DIR"):
    inputs_lib.EvalInputs("demo", "test", encoded_dir="x", passages=passages_lib.Passages())


def test_document_run_maxp_and_firstp():
  run = {"q": {"a#b#0": 1.0, "a#b#2": 3.0, "c#1": 5.0, "d#0": 0.5}}
  assert passages_lib.document_run(run, "maxp") == {"q": {"a#b": 3.0, "c": 5.0, "d": 0.5}}
  assert passages_lib.document_run(run, "firstp") == {"q": {"a#b": 1.0, "d": 0.5}}
  assert passages_lib.document_of(passages_lib.passage_id("x#1", 12)) == ("x#1", 12)


def test_encode_corpus_stores_framed_passages():
  vocab = vocab_lib.get_vocabulary("minilm")
  config = models.bert_config("tiny", max_position_embeddings=32, dropout_rate=0.0,
                              attention_dropout_rate=0.0)
  module = models.DualEncoder(config)
  q = jnp.ones((1, 4), jnp.int32)
  params = random_params(module, q, q.astype(bool), q, q.astype(bool))
  enc = encoding.Encoder(encoding.make_encode_fn(module, "doc"), params, batch_size=4)
  texts = ["short one", " ".join(f"word{i}" for i in range(40)), ""]
  store = encoding.encode_corpus(enc, vocab, ["s", "long", "empty"], texts, max_length=16,
                                 vector_dtype="float32", passages=passages_lib.Passages(4))
  ids, lists = passages_lib.split_documents(vocab, ["s", "long", "empty"], texts, 16, 4)
  assert store.doc_ids == ids and ids[0] == "s#0" and ids[-1] == "empty#0"
  assert len([i for i in ids if i.startswith("long#")]) > 2
  assert np.diff(store.offsets).tolist() == [len(t) for t in lists]
  assert all(t[0] == 101 and t[-1] == 102 and len(t) <= 16 for t in lists)
  whole = vocab.encode_batch([texts[1]])[0]
  inner = [t[1:-1] for t in lists[1:-1]]
  assert inner[0] == whole[:14] and inner[1][:4] == inner[0][-4:]


def test_passages_refuse_what_reads_documents():
  inputs = inputs_lib.EvalInputs("demo", "test", passages=passages_lib.Passages())
  with pytest.raises(ValueError, match="PASSAGE_OVERLAP"):
    evaluators.evaluate_beir(evaluators.BM25Evaluator(), inputs, "/nonexistent")


# ---- concatenations of 4 SciFact abstracts -------------------------------------------------


def write_concatenations(scifact_dir: pathlib.Path, out: pathlib.Path, num_queries: int = 48,
                         extra: int = 24) -> dict[str, int]:
  """A BEIR directory whose documents join 4 SciFact abstracts: for query i, its one relevant
  abstract at position i % 4 among 3 others that no chosen query judges relevant; `extra`
  documents of 4 such others. Returns query id -> position of its abstract."""
  judged: dict[str, list[str]] = {}
  for line in (scifact_dir / "qrels" / "test.tsv").read_text().splitlines()[1:]:
    q, d, _ = line.split("\t")
    judged.setdefault(q, []).append(d)
  corpus = {}
  for line in (scifact_dir / "corpus.jsonl").read_text().splitlines():
    doc = json.loads(line)
    corpus[doc["_id"]] = f"{doc['title'].strip()}. {doc['text'].strip()}"
  chosen = [q for q, docs in judged.items() if len(docs) == 1][:num_queries]
  relevant = {d for docs in judged.values() for d in docs}
  fillers = iter(np.random.default_rng(0).permutation(sorted(set(corpus) - relevant)).tolist())
  docs, qrels, position = [], [], {}
  for i, q in enumerate(chosen):
    parts = [next(fillers) for _ in range(3)]
    parts.insert(i % 4, judged[q][0])
    docs.append({"_id": f"c{i}", "title": "", "text": " ".join(corpus[p] for p in parts)})
    qrels.append(f"{q}\tc{i}\t1")
    position[q] = i % 4
  for j in range(extra):
    docs.append({"_id": f"x{j}", "title": "",
                 "text": " ".join(corpus[next(fillers)] for _ in range(4))})
  (out / "qrels").mkdir(parents=True)
  (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  queries = [json.loads(x) for x in (scifact_dir / "queries.jsonl").read_text().splitlines()]
  (out / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in queries
                                             if x["_id"] in position))
  (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels)
                                          + "\n")
  return position


def found_in_top10(metrics: dict, position: dict[str, int]) -> list[float]:
  """Per position of the relevant abstract (0..3): the share of queries whose concatenation
  is in the top 10 (its one relevant document: nDCG@10 > 0)."""
  hits = [[] for _ in range(4)]
  for q, values in metrics["per_query"].items():
    hits[position[q]].append(values["ndcg@10"] > 0)
  return [float(np.mean(h)) for h in hits]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_maxp_finds_the_abstract_wherever_it_sits(scifact_dir, tmp_path):
  beir_dir = tmp_path / "concatenated"
  position = write_concatenations(scifact_dir, beir_dir)
  found = {}
  for name, extra in (("cut", []), ("maxp", ["PASSAGE_OVERLAP = 32"]),
                      ("firstp", ["PASSAGE_OVERLAP = 32", "PASSAGE_SCORING = 'firstp'"])):
    metrics = run_main(["gin/experiments/minilm_aligner_beir.gin"], [
        f"BEIR_DIR = '{beir_dir}'", f"OUTPUT_DIR = '{tmp_path / name}'", "INDEX_DIR = None",
        "RETRIEVER = 'exact'", "EVAL_DOC_LENGTH = 128", "EVAL_QUERY_LENGTH = 64",
        "NUM_NEIGHBORS = 4000", "NUM_REFINE = None", "LEAVES_TO_SEARCH = None", *extra])
    found[name] = found_in_top10(metrics, position)
  print("share of queries whose concatenation is in the top 10, by the position (0-3) of "
        "the relevant abstract:", json.dumps(found))
  # Measured: maxp [1.0, 1.0, 1.0, 1.0]; cut and firstp [1.0, 0.33, 0.08, 0.0]. Cut at 128
  # tokens a document shows its first abstract (and the start of the second after a short
  # first one): the abstracts further in are found by chance only.
  assert found["maxp"][0] >= 0.9 and min(found["maxp"][1:]) >= 0.8
  assert max(found["cut"][1:]) <= 0.4 and max(found["firstp"][1:]) <= 0.4
  assert min(m - c for m, c in zip(found["maxp"][1:], found["cut"][1:])) >= 0.5
