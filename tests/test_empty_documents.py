"""Documents with neither title nor text: kept with a warning (refused only in strict mode),
encoded as their framing tokens, indexed, retrievable and judged on every path, with metrics
checked against references computed here by hand."""

import json
import math
import pathlib
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from test_eval_evaluators import write_beir

from aligner_jax import models
from aligner_jax.data import validate
from aligner_jax.data.beir import read_beir
from aligner_jax.data.errors import DataError
from aligner_jax.eval import evaluators
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval import ir_metrics
from aligner_jax.eval import retrieval_jobs
from aligner_jax.eval import visualize
from aligner_jax.index import IndexConfig
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import runs as runs_lib
from aligner_jax.retrieval import to_run

EMPTY_CISI = ("471", "995")  # 471 is judged relevant for query 5
EMPTY_TINY = ("doc3", "doc17", "doc29")  # doc17 is judged relevant for q0 (added below)


def blank(corpus: pathlib.Path, ids) -> None:
  """Rewrites the documents `ids` of a corpus.jsonl with empty title and text."""
  rows = []
  for line in corpus.read_text().splitlines():
    obj = json.loads(line)
    if obj["_id"] in ids:
      obj["title"], obj["text"] = "", ""
    rows.append(json.dumps(obj))
  corpus.write_text("\n".join(rows) + "\n")


@pytest.fixture
def empty_cisi(cisi_dir, tmp_path):
  root = tmp_path / "cisi"
  shutil.copytree(cisi_dir, root)
  for p in [root, *root.rglob("*")]:
    p.chmod(0o755 if p.is_dir() else 0o644)  # shared/ is read-only
  blank(root / "corpus.jsonl", EMPTY_CISI)
  return root


def reference_metrics(qrels, run) -> dict[str, dict[str, float]]:
  """nDCG@10, MRR@10 and recall@100 per judged query, by their definitions (trec_eval's order:
  score descending, then document id descending)."""
  out = {}
  for q, judged in qrels.items():
    ranked = [d for d, _ in sorted(run.get(q, {}).items(), key=lambda x: (x[1], x[0]),
                                   reverse=True) if d != q]
    gains = sorted((r for r in judged.values() if r > 0), reverse=True)
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
    dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    first = next((i for i, d in enumerate(ranked[:10]) if judged.get(d, 0) > 0), None)
    found = sum(1 for d in ranked[:100] if judged.get(d, 0) > 0)
    out[q] = {"ndcg@10": dcg / ideal, "mrr@10": 0.0 if first is None else 1 / (first + 1),
              "recall@100": found / len(gains)}
  return out


# -- validation --------------------------------------------------------------------------------


def test_validate_warns_and_passes(empty_cisi, capsys):
  code = validate.main(["--format", "beir", str(empty_cisi)])
  out, err = capsys.readouterr()
  assert code == 0
  assert "  documents: 1460" in out
  assert "  empty documents: 2 (neither title nor text; kept, see the warnings)" in out
  assert err.splitlines() == [
      "2 warnings in the data:",
      (f"{empty_cisi}/corpus.jsonl:471: empty document '471' (neither title nor text): kept, "
       "encoded as its framing tokens only"),
      (f"{empty_cisi}/corpus.jsonl:995: empty document '995' (neither title nor text): kept, "
       "encoded as its framing tokens only")]
  code = validate.main(["--format", "beir", str(empty_cisi), "--max_problems", "1"])
  _, err = capsys.readouterr()
  assert code == 0 and err.splitlines()[-1] == "... and 1 more warning(s) not listed"


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_strict_mode_refuses_and_names_the_refused_document(empty_cisi, capsys, monkeypatch,
                                                            how):
  args = ["--format", "beir", str(empty_cisi)]
  if how == "flag":
    args.append("--strict")
  else:
    monkeypatch.setenv("ALIGNER_STRICT_DATA", "1")
  code = validate.main(args)
  out, err = capsys.readouterr()
  assert code == 1 and not out
  assert err.splitlines()[1:] == [
      "3 problems in the data:",
      (f"{empty_cisi}/corpus.jsonl:471: empty text (document '471' has neither title nor "
       "text; refused in strict mode)"),
      (f"{empty_cisi}/corpus.jsonl:995: empty text (document '995' has neither title nor "
       "text; refused in strict mode)"),
      (f"{empty_cisi}/qrels/test.tsv:141: document id '471' names a document refused at "
       "corpus.jsonl:471 (see the problem reported there)")]
  assert "unknown document id" not in err


def test_what_is_broken_is_still_refused(tmp_path):
  root = write_beir(tmp_path / "tiny", num_docs=6, num_queries=2)
  blank(root / "corpus.jsonl", ("doc1",))
  with open(root / "corpus.jsonl", "a") as f:
    f.write('{"_id": "doc1", "title": "", "text": ""}\n{"title": "t", "text": "no id"}\n'
            '{"_id": "doc9", "text": "broken"\n')
  with open(root / "corpus.jsonl", "ab") as f:
    f.write(b'{"_id": "doc8", "text": "caf\xe9"}\n')
  with open(root / "qrels" / "test.tsv", "a") as f:
    f.write("q0\tdoc404\t1\n")
  with pytest.raises(DataError) as info:
    read_beir(root)
  assert [str(p).replace(f"{root}/", "") for p in info.value.problems] == [
      "corpus.jsonl:7: duplicate document id 'doc1' (first at line 2)",
      "corpus.jsonl:8: missing `_id`",
      "corpus.jsonl:9: broken JSON: Expecting ',' delimiter (column 33)",
      "corpus.jsonl:10: invalid UTF-8 (byte 28 of the line: b'\\xe9')",
      "qrels/test.tsv:4: unknown document id 'doc404' (not in the corpus)"]


# -- BM25 --------------------------------------------------------------------------------------


def test_bm25_on_cisi_with_empty_documents(empty_cisi, cisi_dir):
  """Empty documents score 0 and change no other score (Lucene leaves them out of N and the
  average length); query 5's relevant empty document counts in its nDCG."""
  c = read_beir(empty_cisi)
  assert [c.corpus.text(c.corpus.index[d]) for d in EMPTY_CISI] == ["", ""]
  qids = c.split_queries("test")
  texts = [c.queries.texts[c.queries.index[q]] for q in qids]
  bm25 = BM25(c.corpus.ids, [c.corpus.text(i) for i in range(len(c.corpus))])
  run = to_run(qids, c.corpus.ids, bm25.search(texts, 1000))
  assert not any(d in EMPTY_CISI for docs in run.values() for d in docs)
  kept = [i for i, d in enumerate(c.corpus.ids) if d not in EMPTY_CISI]
  without = BM25([c.corpus.ids[i] for i in kept], [c.corpus.text(i) for i in kept])
  assert run == to_run(qids, [c.corpus.ids[i] for i in kept], without.search(texts, 1000))
  mean, per_query = ir_metrics.evaluate(c.qrels["test"], run)
  reference = reference_metrics(c.qrels["test"], run)
  for q in qids:
    for metric, value in reference[q].items():
      assert per_query[q][metric] == pytest.approx(value, abs=1e-6), (q, metric)
  judged = {q: dict(d) for q, d in c.qrels["test"].items()}
  del judged["5"]["471"]
  _, unjudged = ir_metrics.evaluate(judged, run)
  # Query 5 has more than 10 relevant documents, so its ideal DCG@10 does not move; its recall
  # counts every relevant document, the empty one too.
  assert sum(r > 0 for r in c.qrels["test"]["5"].values()) > 10
  assert per_query["5"]["ndcg@10"] < 1.0
  assert 0 < per_query["5"]["recall@100"] < unjudged["5"]["recall@100"]
  # The unmodified collection's BM25 (no empty documents) is what it has always been.
  original = read_beir(cisi_dir)
  full = BM25(original.corpus.ids, [original.corpus.text(i) for i in range(1460)])
  base, _ = ir_metrics.evaluate(original.qrels["test"],
                                to_run(qids, original.corpus.ids, full.search(texts, 1000)))
  assert base["ndcg@10"] == pytest.approx(0.366917, abs=1e-6)
  assert mean["ndcg@10"] < base["ndcg@10"]


def test_bm25_evaluation_by_hand(tmp_path):
  """Three documents, one empty and judged relevant: nDCG@10 = 1 / (1 + 1/log2(3))."""
  root = tmp_path / "hand"
  (root / "qrels").mkdir(parents=True)
  docs = [("a", "apple orchards"), ("b", ""), ("c", "cherry trees")]
  (root / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs))
  (root / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "apple"}) + "\n")
  (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\ta\t1\nq\tb\t1\n")
  result = retrieval_jobs.eval_beir(beir_dir=str(root), split="test",
                                    output_dir=str(tmp_path / "out"), retriever="bm25")
  assert result["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-9)
  assert result["mrr@10"] == 1.0 and result["recall@100"] == 0.5
  assert list(runs_lib.read_trec_run(tmp_path / "out" / "run.trec")["q"]) == ["a"]
  # Strict mode, from the job's setting or the environment, refuses the collection.
  with pytest.raises(DataError, match="'b' has neither title nor text; refused"):
    retrieval_jobs.eval_beir(beir_dir=str(root), split="test",
                             output_dir=str(tmp_path / "strict"), retriever="bm25",
                             strict_data=True)


# -- the neural paths on a tiny collection -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  root = write_beir(tmp_path_factory.mktemp("empty") / "tiny")
  blank(root / "corpus.jsonl", EMPTY_TINY)
  with open(root / "qrels" / "test.tsv", "a") as f:
    f.write("q0\tdoc17\t1\n")
  return root


@pytest.fixture(scope="module")
def encoders():
  pytest.importorskip("tokenizers")
  from conftest import shared_path
  shared_path("tokenizers", "t5_v1_1", "tokenizer.json")  # skips when the vocabulary is absent
  module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                              query_salience_ratio=0.5, doc_salience_ratio=0.5)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(0), query_length=8,
                                             doc_length=8))
  return retrieval_jobs.model_encoders(module, params, "t5_1_1", batch_size=16)


def test_empty_documents_are_encoded_as_their_framing_tokens(tiny_dir, encoders):
  collection = inputs_lib.load_split(str(tiny_dir), "test")
  assert collection.counts()["empty_documents"] == 3 and collection.warnings.total == 3
  store = inputs_lib.encode_collection_corpus(encoders, collection, doc_length=64,
                                              log=lambda m: None)
  eos = encoders.vocabulary.eos_id
  for d in EMPTY_TINY:
    rows = store.doc_tokens(store.doc_ids.index(d))
    assert store.token_ids[rows].tolist() == [eos]  # T5 frames with </s> alone
  assert np.isfinite(store.dequantize()).all() and np.isfinite(store.pooled).all()
  # BERT frames with [CLS] [SEP].
  from aligner_jax.data.vocab import get_vocabulary
  from aligner_jax.retrieval.encoding import tokenize
  bert = get_vocabulary("minilm")
  assert tokenize(bert, [""], 16) == [list(bert.prefix_ids) + list(bert.suffix_ids)]
  assert len(tokenize(bert, [""], 16)[0]) == 2


RUNS = {
    "exact": {"retriever": "exact", "alignments": ["top_k:1", "top_p:0.25"],
              "adaptation": True, "num_pictures": 2},
    "exact_pruned_pq": {"retriever": "exact", "index_config": IndexConfig(
        prune_doc_ratio=0.25, vector_dtype="pq:4")},
    "scann": {"retriever": "scann"},
    "dense": {"retriever": "dense"},
    "bm25": {"retriever": "bm25"},
    "rerank": {"retriever": "bm25", "rerank_depth": 20},
}


@pytest.mark.parametrize("name", list(RUNS))
def test_every_retriever_completes_and_judges_the_empty_document(tiny_dir, encoders, tmp_path,
                                                                 name):
  settings = dict(RUNS[name])
  pictures = settings.pop("num_pictures", 0)
  inputs = inputs_lib.EvalInputs(str(tiny_dir), "test", encoders, doc_length=64,
                                 query_length=16)
  logs = []
  evaluator = evaluators.make_evaluator(num_neighbors=10**6, **settings)
  result = evaluators.evaluate_beir(evaluator, inputs, str(tmp_path), top_n=40,
                                    num_pictures=pictures, log=logs.append)
  assert any("3 warnings in the data" in line for line in logs)
  run = runs_lib.read_trec_run(tmp_path / "run.trec")
  qrels = read_beir(tiny_dir).qrels["test"]
  reference = reference_metrics(qrels, run)
  for q, values in reference.items():
    for metric, value in values.items():
      assert result["per_query"][q][metric] == pytest.approx(value, abs=1e-6), (q, metric)
  assert result["ndcg@10"] == pytest.approx(np.mean([v["ndcg@10"] for v in reference.values()]),
                                            abs=1e-6)
  top10 = [d for d, _ in runs_lib.ranked(run["q0"])[:10]]
  if "doc17" not in top10:
    assert result["per_query"]["q0"]["ndcg@10"] < 1.0
  empty_found = {d for docs in run.values() for d in docs} & set(EMPTY_TINY)
  if name in ("bm25", "rerank"):
    assert not empty_found  # no word in common with any query: BM25 score 0
  elif name != "exact_pruned_pq":
    assert empty_found == set(EMPTY_TINY)  # every document is a candidate here (K′ = all)
  if pictures:
    assert (tmp_path / "report.html").is_file() and (tmp_path / "adaptation.json").is_file()


# -- documents with no stored token at all -----------------------------------------------------


def _store_with_tokenless_documents():
  from aligner_jax.index.token_store import from_padded
  from aligner_jax.retrieval import QueryBatch
  rng = np.random.default_rng(0)
  num_docs, length, dim = 40, 12, 16
  lengths = rng.integers(2, length + 1, num_docs)
  lengths[[5, 20]] = 0  # no token at all
  lengths[7] = 1  # one framing token
  mask = np.arange(length)[None] < lengths[:, None]
  vectors = rng.normal(size=(num_docs, length, dim)).astype(np.float32)
  ids = rng.integers(1, 50, (num_docs, length)).astype(np.int32)
  store = from_padded([f"d{i}" for i in range(num_docs)], vectors, mask,
                      salience=rng.random((num_docs, length)).astype(np.float32),
                      token_ids=ids, pooled=vectors.mean(1))
  q_mask = np.ones((3, 5), bool)
  queries = QueryBatch(["q0", "q1", "q2"], rng.normal(size=(3, 5, dim)).astype(np.float32),
                       q_mask, rng.random((3, 5)).astype(np.float32),
                       rng.integers(1, 50, (3, 5)).astype(np.int32))
  return store, queries


@pytest.mark.parametrize("config", [
    IndexConfig(backend="exact", vector_dtype="float32"),
    IndexConfig(backend="exact", vector_dtype="int8", prune_doc_ratio=0.3),
    IndexConfig(backend="exact", vector_dtype="pq:4"),
    IndexConfig(backend="scann", prune_doc_ratio=0.5),
], ids=["exact", "int8_pruned", "pq", "scann_pruned"])
def test_tokenless_documents_in_the_token_index(config, tmp_path):
  from aligner_jax.index import build_token_index
  from aligner_jax.index import load_index
  from aligner_jax.index import prune_budget
  from aligner_jax.index import save_index
  from aligner_jax.retrieval import all_documents
  from aligner_jax.retrieval.token_retrieval import refine_many
  store, queries = _store_with_tokenless_documents()
  assert prune_budget(store.lengths[[5, 7, 20]], config.prune_doc_ratio).tolist() == [0, 1, 0]
  save_index(build_token_index(store, config), tmp_path / "index")
  index = load_index(tmp_path / "index")
  specs = ["top_k:1", "top_k:4", "top_p:0.5", "da:k=2,eps=0.1", "cls", "coil"]
  refined = refine_many(index, queries, all_documents(index, queries), specs, top_n=40)
  for spec, per_query in refined.items():
    for docs, scores in per_query:
      assert len(docs) == 40 and np.isfinite(scores).all(), spec
      got = dict(zip(docs.tolist(), scores.tolist()))
      assert got[5] == got[20] == 0.0, spec  # Σ A = 0: score 0 by the scorers' convention


def test_rerank_and_lite_over_tokenless_documents():
  from aligner_jax.retrieval import alignment_pair_fn
  from aligner_jax.retrieval import lite_pair_fn
  from aligner_jax.retrieval import rerank
  from aligner_jax.retrieval import token_scorer
  from aligner_jax.scoring import LiteScorer
  store, queries = _store_with_tokenless_documents()
  first = {"q0": {"d5": 3.0, "d7": 2.0, "d20": 1.0, "d0": 0.5}}
  out = rerank(first, token_scorer(queries, store, alignment_pair_fn("top_k:1")), depth=4)
  assert out["q0"]["d5"] == out["q0"]["d20"] == 0.0 and np.isfinite(list(out["q0"].values())).all()
  head = LiteScorer(query_len=8, doc_len=16, row_width=4, col_width=4)
  params = {"lite_scorer": nn.unbox(jax.jit(head.init)(
      jax.random.key(1), np.zeros((1, 8, 16), np.float32), np.ones((1, 8), bool),
      np.ones((1, 16), bool))["params"])}
  module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                              lite_scorer=head)
  lite = token_scorer(queries, store, lite_pair_fn(module, params), query_length=8,
                      doc_length=16)
  assert np.isfinite(lite("q0", ["d5", "d7", "d20", "d0"])).all()


@pytest.mark.parametrize("num_tokens", [0, 1, 2])
def test_pictures_of_documents_with_few_or_no_tokens(tmp_path, num_tokens):
  rng = np.random.default_rng(num_tokens)
  d_tokens = ["[CLS]", "[SEP]"][:num_tokens]
  view = visualize.alignment_view(["a", "b", "c"], d_tokens,
                                  rng.normal(size=(3, 8)), rng.normal(size=(num_tokens, 8)),
                                  alignment="top_k:2", q_salience=np.ones(3),
                                  d_salience=np.ones(num_tokens))
  assert view.similarity.shape == (3, num_tokens) and np.isfinite(view.score)
  visualize.save_png(view, tmp_path / "view.png")
  assert (tmp_path / "view.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  page = visualize.render_html(view)
  assert ("(no tokens)" in page) == (num_tokens == 0)
  if num_tokens == 0:
    assert view.score == 0.0
