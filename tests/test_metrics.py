"""BEIR metrics against pytrec_eval and hand computation; TREC run files; metrics.json."""

import json
import math

import numpy as np
import pytest
import pytrec_eval

from aligner_jax.eval.ir_metrics import METRICS
from aligner_jax.eval.ir_metrics import evaluate
from aligner_jax.eval.ir_metrics import write_metrics
from aligner_jax.retrieval.runs import RunFileError
from aligner_jax.retrieval.runs import cut_run
from aligner_jax.retrieval.runs import ranked
from aligner_jax.retrieval.runs import read_trec_run
from aligner_jax.retrieval.runs import write_trec_run


def test_ndcg_at_10_by_hand():
  qrels = {"q1": {"d1": 2, "d3": 1, "d9": 0}}
  run = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d4": 0.1}}
  mean, per_query = evaluate(qrels, run)
  dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
  idcg = 2 / math.log2(2) + 1 / math.log2(3)
  assert mean["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
  assert per_query["q1"]["mrr@10"] == pytest.approx(1 / 2)
  assert per_query["q1"]["recall@100"] == 1.0
  assert per_query["q1"]["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_relevant_document_beyond_rank_10_is_not_counted():
  qrels = {"q": {"rel": 1}}
  run = {"q": {**{f"x{i:02d}": 1.0 - i / 100 for i in range(10)}, "rel": 0.5}}
  mean, _ = evaluate(qrels, run)
  assert mean["ndcg@10"] == 0.0 and mean["mrr@10"] == 0.0
  assert mean["recall@100"] == 1.0 and mean["map"] == pytest.approx(1 / 11)


def _hand_made(seed=0, num_queries=25, num_docs=1500):
  rng = np.random.default_rng(seed)
  qrels, run = {}, {}
  for q in range(num_queries):
    qid = f"q{q}"
    rel = rng.choice(num_docs, rng.integers(1, 6), replace=False)
    qrels[qid] = {f"d{d}": int(rng.integers(1, 3)) for d in rel}
    qrels[qid][f"d{rng.integers(num_docs)}"] = 0  # explicit non-relevant judgements too
    if q % 7 == 3:
      continue  # unanswered queries
    docs = rng.choice(num_docs, 1200, replace=False)
    scores = np.round(rng.normal(size=1200), 2)  # coarse scores make ties
    run[qid] = {f"d{d}": float(s) for d, s in zip(docs, scores)}
  return qrels, run


def test_metrics_equal_pytrec_eval_on_a_hand_made_run():
  qrels, run = _hand_made()
  mean, per_query = evaluate(qrels, run)
  answered = {q for q in run}
  direct = pytrec_eval.RelevanceEvaluator(
      qrels, {"ndcg_cut.10", "recall.100", "recall.1000", "map"}).evaluate(run)
  mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut_run(run, 10))
  for q in qrels:
    got = per_query[q]
    if q not in answered:
      assert all(v == 0.0 for v in got.values())
      continue
    assert got["ndcg@10"] == pytest.approx(direct[q]["ndcg_cut_10"], abs=1e-12)
    assert got["recall@100"] == pytest.approx(direct[q]["recall_100"], abs=1e-12)
    assert got["recall@1000"] == pytest.approx(direct[q]["recall_1000"], abs=1e-12)
    assert got["map"] == pytest.approx(direct[q]["map"], abs=1e-12)
    assert got["mrr@10"] == pytest.approx(mrr[q]["recip_rank"], abs=1e-12)
    # MRR@10 by hand, ranking ties the way trec_eval does.
    rels = [d for d, _ in ranked(run[q])[:10] if qrels[q].get(d, 0) > 0]
    top = [d for d, _ in ranked(run[q])[:10]]
    assert got["mrr@10"] == pytest.approx(1 / (top.index(rels[0]) + 1) if rels else 0.0)
  for m in METRICS:
    assert mean[m] == pytest.approx(np.mean([per_query[q][m] for q in qrels]), abs=1e-12)
  assert set(mean) == set(METRICS)


def test_identical_ids_are_ignored_like_beir():
  qrels = {"a": {"b": 1}}
  run = {"a": {"a": 9.0, "b": 1.0}}
  assert evaluate(qrels, run)[0]["mrr@10"] == 1.0
  assert evaluate(qrels, run, ignore_identical_ids=False)[0]["mrr@10"] == 0.5


def test_trec_run_round_trip_and_format(tmp_path):
  run = {"q2": {"b": 1.0, "a": 1.0, "c": 3.5}, "q1": {"x": -0.25}}
  path = tmp_path / "sub" / "run.trec"
  write_trec_run(path, run, run_name="test")
  lines = path.read_text().splitlines()
  assert lines[0] == "q1 Q0 x 1 -0.250000 test"
  assert [x.split()[2] for x in lines[1:]] == ["c", "b", "a"]  # ties: doc id descending
  assert [x.split()[3] for x in lines[1:]] == ["1", "2", "3"]
  assert all(len(x.split()) == 6 for x in lines)
  assert read_trec_run(path) == {"q1": {"x": -0.25}, "q2": {"c": 3.5, "b": 1.0, "a": 1.0}}
  qrels, big = _hand_made(seed=1)
  write_trec_run(tmp_path / "big.trec", big)
  again = read_trec_run(tmp_path / "big.trec")
  assert evaluate(qrels, again)[0] == pytest.approx(evaluate(qrels, big)[0], abs=1e-6)


def test_bad_run_files_name_the_line(tmp_path):
  path = tmp_path / "bad.trec"
  path.write_text("q1 Q0 d1 1 0.5 run\nq1 Q0 d2 2 run\n")
  with pytest.raises(RunFileError, match=r"bad.trec:2: expected 6 columns"):
    read_trec_run(path)
  path.write_text("q1 Q0 d1 1 high run\n")
  with pytest.raises(RunFileError, match=r"bad.trec:1: .*not numbers"):
    read_trec_run(path)
  path.write_text("q1 Q0 d1 1 0.5 run\nq1 Q0 d1 2 0.4 run\n")
  with pytest.raises(RunFileError, match=r"bad.trec:2: document 'd1' appears twice"):
    read_trec_run(path)
  with pytest.raises(ValueError, match="whitespace"):
    write_trec_run(tmp_path / "x.trec", {"q 1": {"d": 1.0}})
  with pytest.raises(ValueError, match="not finite"):
    write_trec_run(tmp_path / "x.trec", {"q": {"d": float("nan")}})
  assert not (tmp_path / "x.trec").exists()


def test_metrics_json(tmp_path):
  qrels, run = _hand_made(seed=2, num_queries=5)
  mean, per_query = evaluate(qrels, run)
  out = write_metrics(tmp_path / "metrics.json", mean, per_query, retriever="exact")
  data = json.loads((tmp_path / "metrics.json").read_text())
  assert data == out
  assert set(METRICS) <= set(data) and data["num_queries"] == 5
  assert data["retriever"] == "exact" and set(data["per_query"]) == set(qrels)
