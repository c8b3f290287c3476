"""The teacher pipeline: a cross-encoder trained through the trainer, its scores of each
training query's candidates written as teacher scores, students distilled from them, the
cross-encoder's re-ranking evaluation and a student's export, all through the gin files of the
SciFact recipe on a small generated BEIR collection (tiny BERT, MiniLM's vocabulary)."""

import json
import pathlib

import jax
import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest
from train_testlib import read_metrics
from train_testlib import run_main

from aligner_jax import losses
from aligner_jax import models
from aligner_jax.data import loaders
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.training_files import read_hard_negatives_jsonl
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.models import pylate_layout
from aligner_jax.retrieval import encoding
from aligner_jax.train import cross_encoder
from aligner_jax.train import teacher_job

WORDS = ("protein cell gene tumour virus vaccine brain heart blood insulin receptor enzyme "
         "mutation therapy infection immune dose trial mouse neuron cancer liver kidney lung "
         "signal pathway membrane antibody risk patient").split()
TINY = ("BertConfig.size = 'tiny'", "BertConfig.dropout_rate = 0.0",
        "BertConfig.attention_dropout_rate = 0.0", "BertConfig.max_position_embeddings = 64")
LENGTHS = ("QUERY_LENGTH = 12", "DOC_LENGTH = 24")
TRAIN = ("TRAIN_STEPS = 2", "BATCH_SIZE = 8", "CHECKPOINT_PERIOD = 2",
         "warmup_linear_decay.warmup_steps = 1", "INITIAL_CHECKPOINT_PATH = None",
         "TASK_FEATURE_LENGTHS = {'query_tokens': 12, 'doc_tokens': (3, 24)}")


def write_beir(root: pathlib.Path, num_docs: int = 40, seed: int = 0) -> pathlib.Path:
  """Documents of random words; train and test queries made of words of one document."""
  rng = np.random.default_rng(seed)
  (root / "qrels").mkdir(parents=True)
  docs = [" ".join(rng.choice(WORDS, int(rng.integers(8, 20)))) for _ in range(num_docs)]
  with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
    for i, text in enumerate(docs):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
  queries = []
  for split, count in (("train", 16), ("test", 8)):
    with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as g:
      g.write("query-id\tcorpus-id\tscore\n")
      for _ in range(count):
        q, target = f"q{len(queries)}", int(rng.integers(num_docs))
        queries.append({"_id": q, "text": " ".join(docs[target].split()[:3])})
        g.write(f"{q}\td{target}\t1\n")
  with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(q) + "\n" for q in queries)
  return root


# ---- pieces ---------------------------------------------------------------------------------


def _cross_encoder(vocab_size: int = 64):
  config = models.bert_config("tiny", vocab_size=vocab_size, max_position_embeddings=40,
                              dropout_rate=0.0, attention_dropout_rate=0.0)
  module = models.CrossEncoder(config)
  ids = jnp.ones((1, 20), jnp.int32)
  return module, random_params(module, ids, ids.astype(bool), ids * 0)


def _framed(rng, rows, width, length_range):
  ids = np.zeros((rows, width), np.int32)
  for r in range(rows):
    n = int(rng.integers(*length_range))
    ids[r, :n] = [2] + list(rng.integers(5, 64, n - 2)) + [3]
  return ids


def test_candidate_scores_and_loss_match_pairs_scored_alone():
  module, params = _cross_encoder()
  rng = np.random.default_rng(0)
  q, d = _framed(rng, 3, 8, (3, 9)), _framed(rng, 12, 12, (3, 13)).reshape(3, 4, 12)
  d[1, 3] = 0  # a padding candidate
  scores = cross_encoder.candidate_scores(module, params, q, d, max_length=19,
                                          skip_doc_prefix=1)
  for b in range(3):
    for k in range(3 if b == 1 else 4):
      ids, mask, types = models.pack_pair(q[b:b + 1], q[b:b + 1] != 0, d[b, k][None],
                                          d[b, k][None] != 0, max_length=19, skip_doc_prefix=1)
      alone = module.apply({"params": params}, ids, mask, types)
      np.testing.assert_allclose(scores[b, k], alone[0], rtol=1e-5, atol=1e-5)
  model = cross_encoder.CrossEncoderModel(module, max_length=19)
  loss, metrics = model.loss_fn(params, {"query_tokens": q, "doc_tokens": d},
                                rng=jax.random.key(0), train=False)
  valid = np.any(d != 0, axis=-1)
  logits = np.where(valid, np.asarray(scores), -np.inf)
  want = np.mean([-(logits[b, 0] - np.log(np.sum(np.exp(logits[b][valid[b]]))))
                  for b in range(3)])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert 0 <= float(metrics["mrr"]) <= 1
  distill = cross_encoder.CrossEncoderModel(module, max_length=19, loss="m3se")
  with pytest.raises(ValueError, match="no 'teacher_scores'"):
    distill.loss_fn(params, {"query_tokens": q, "doc_tokens": d}, rng=jax.random.key(0),
                    train=False)
  teacher = np.asarray(scores) * 2
  got, _ = distill.loss_fn(params, {"query_tokens": q, "doc_tokens": d,
                                    "teacher_scores": teacher}, rng=jax.random.key(0),
                           train=False)
  labels = np.zeros((3, 4), np.float32)
  labels[:, 0] = 1
  np.testing.assert_allclose(got, losses.m3se(teacher, scores, labels, mask=valid), rtol=1e-6)


def test_teacher_lines_are_what_the_reader_accepts(tmp_path):
  beir_dir = write_beir(tmp_path / "beir")
  collection = inputs_lib.load_split(str(beir_dir), "train")
  lists = teacher_job.candidate_lists(collection, "train", candidates="bm25", depth=5,
                                      include_positives=True)
  judged = collection.qrels["train"]
  for q, docs in lists.items():
    assert len(docs) == len(set(docs))
    assert all(d in docs for d, r in judged[q].items() if r > 0)
  scores = {q: {d: float(i) for i, d in enumerate(docs)} for q, docs in lists.items()}
  lines = teacher_job.teacher_lines(collection, "train", lists, scores)
  path = tmp_path / "teacher_scores.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  log = ProblemLog()
  groups = read_hard_negatives_jsonl(path, collection, log, teacher_scores=True)
  assert not log and len(groups) == len(lines) == 16
  first = lines[0]
  assert groups.teacher_positive[0] == first["scores"][first["pos"][0]]
  run = tmp_path / "run.trec"
  run.write_text("q0 Q0 d1 1 2.0 x\nq0 Q0 d2 2 1.0 x\nq1 Q0 nope 1 1.0 x\n")
  with pytest.raises(ValueError, match="document 'nope' is not in the corpus"):
    teacher_job.candidate_lists(collection, "train", candidates=str(run), depth=5,
                                include_positives=False)


def test_pair_scorer_equals_the_module():
  module, params = _cross_encoder(vocab_size=30522)
  scorer = teacher_job.PairScorer(module, params, "minilm", query_length=8, doc_length=12,
                                  batch_size=4)
  queries = ["protein cell", "virus", "protein cell", "brain heart blood", "gene"]
  docs = ["cell gene tumour", "virus vaccine", "brain", "heart blood insulin receptor", "gene"]
  got = scorer.score(queries, docs)
  vocab = vocab_lib.get_vocabulary("minilm")
  for i, (q, d) in enumerate(zip(queries, docs)):
    q_ids = np.asarray([encoding.tokenize(vocab, [q], 8)[0]])
    d_ids = np.asarray([[encoding.tokenize(vocab, [d], 12)[0]]])
    want = cross_encoder.candidate_scores(module, params, q_ids, d_ids, max_length=19,
                                          skip_doc_prefix=1)
    np.testing.assert_allclose(got[i], want[0, 0], rtol=1e-5, atol=1e-5)


def test_missing_teacher_scores_name_the_variable(tmp_path):
  beir_dir = write_beir(tmp_path / "beir")
  loaders.set_data_dirs({"beir/tiny": str(beir_dir), "teacher/tiny": str(tmp_path / "none")})
  try:
    with pytest.raises(loaders.DataDirError, match="ALIGNER_TEACHER_TINY_DIR"):
      loaders.beir_teacher_train("beir/tiny", "train")
  finally:
    loaders.set_data_dirs({"beir/tiny": None, "teacher/tiny": None})


# ---- the gin recipe end to end -------------------------------------------------------------


@pytest.mark.slow
def test_teacher_pipeline_through_gin(tmp_path):
  beir_dir = write_beir(tmp_path / "beir")
  data = (f"BEIR_DIR = '{beir_dir}'",)
  teacher_dir = tmp_path / "cross_encoder"
  run_main(["gin/experiments/scifact_cross_encoder.gin"],
           [*TINY, *TRAIN, *data, f"MODEL_DIR = '{teacher_dir}'",
            "CrossEncoderModel.max_length = 35"])
  assert np.isfinite(read_metrics(teacher_dir)[-1]["loss"])

  scores_dir = tmp_path / "scores"
  run_main(["gin/experiments/scifact_teacher_scores.gin"],
           [*TINY, *LENGTHS, *data, f"MODEL_DIR = '{teacher_dir}'", "DEPTH = 6",
            f"OUTPUT_DIR = '{scores_dir}'"])
  lines = [json.loads(x) for x in (scores_dir / "teacher_scores.jsonl").read_text().splitlines()]
  assert len(lines) == 16 and all(len(x["scores"]) == len(x["pos"]) + len(x["neg"])
                                  for x in lines)

  rerank_dir = tmp_path / "rerank"
  metrics = run_main(["gin/experiments/scifact_cross_encoder_rerank.gin"],
                     [*TINY, *LENGTHS, *data, f"MODEL_DIR = '{teacher_dir}'", "DEPTH = 10",
                      f"OUTPUT_DIR = '{rerank_dir}'"])
  assert metrics["num_queries"] == 8 and (rerank_dir / "run.trec").is_file()

  student_dir = tmp_path / "student"
  run_main(["gin/experiments/scifact_student.gin"],
           [*TINY, *TRAIN, *data, f"TEACHER_DIR = '{scores_dir}'",
            f"MODEL_DIR = '{student_dir}'", "ALIGNMENT = 'top_k:1'", "LOSS = 'm3se'",
            "DualEncoder.projection_dim = 16"])
  assert np.isfinite(read_metrics(student_dir)[-1]["loss"])
  result = run_main(["gin/experiments/scifact_student_eval.gin"],
                    [*TINY, *data, f"MODEL_DIR = '{student_dir}'",
                     f"OUTPUT_DIR = '{tmp_path / 'student_eval'}'",
                     "DualEncoder.projection_dim = 16"])
  assert result["num_queries"] == 8

  exported = tmp_path / "student_colbert"
  run_main(["gin/models/minilm.gin", "gin/runs/export_colbert.gin"],
           [*TINY, f"MODEL_DIR = '{student_dir}'", f"EXPORT_DIR = '{exported}'",
            "QUERY_LENGTH = 12", "DOC_LENGTH = 24", "DualEncoder.projection_dim = 16"])
  _check_export_equals_student(exported, student_dir, beir_dir)


def _doc_vectors(module, params, texts):
  vocab = vocab_lib.get_vocabulary("minilm")
  enc = encoding.Encoder(encoding.make_encode_fn(module, "doc"), params, batch_size=8)
  return [e["vectors"] for e in enc.encode(encoding.tokenize(vocab, texts, 24), 24)]


def _check_export_equals_student(exported, student_dir, beir_dir):
  """The exported student, read back, gives the trained student's document vectors."""
  from aligner_jax.eval.retrieval_jobs import restore_trained_params  # pylint: disable=g-import-not-at-top
  back = pylate_layout.load_colbert(exported)
  student = models.DualEncoder(back.module.encoder_config, projection_dim=16)
  collection = inputs_lib.load_split(str(beir_dir), "test")
  texts = [collection.corpus.text(i) for i in range(5)]
  want = _doc_vectors(student, restore_trained_params(str(student_dir)), texts)
  got = _doc_vectors(back.module, back.params, texts)
  for a, b in zip(want, got):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_scores_resume_from_finished_chunks(tmp_path):
  """Finished chunks are read back (a killed job resumes), and only under the same key."""
  module, params = _cross_encoder(vocab_size=30522)
  scorer = teacher_job.PairScorer(module, params, "minilm", query_length=8, doc_length=12,
                                  batch_size=4)
  collection = inputs_lib.load_split(str(write_beir(tmp_path / "beir")), "train")
  pairs = [(q, d) for q in collection.split_queries("train")[:3] for d in ("d1", "d2", "d3")]
  first = teacher_job.chunked_scores(scorer, collection, pairs, tmp_path / "partial",
                                     lambda part: "k", chunk=4)
  assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == [
      "chunk-00000.json", "chunk-00001.json", "chunk-00002.json"]
  saved = tmp_path / "partial" / "chunk-00001.json"
  saved.write_text(json.dumps({"key": "k", "scores": [7.0] * 4}))
  again = teacher_job.chunked_scores(scorer, collection, pairs, tmp_path / "partial",
                                     lambda part: "k", chunk=4)
  assert again == first[:4] + [7.0] * 4 + first[8:]
  fresh = teacher_job.chunked_scores(scorer, collection, pairs, tmp_path / "partial",
                                     lambda part: "other", chunk=4)
  np.testing.assert_allclose(fresh, first, rtol=1e-6)
