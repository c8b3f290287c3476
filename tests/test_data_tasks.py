"""seqio tasks: cheap declarative registration, documented features, seqio == pipeline,
directories from the environment, the TFDS source, the fallback for other seqio tasks."""

import builtins
import os
import pathlib

import numpy as np
import pytest
import seqio
import tensorflow as tf

from aligner_jax.data import demo_collection
from aligner_jax.data import features as features_lib
from aligner_jax.data import input_pipeline as pipeline_lib
from aligner_jax.data import loaders
from aligner_jax.data import tfds_source
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.data.errors import DataError
import tasks
from tasks import beir as beir_tasks
from tasks import demo as demo_tasks
from tasks import msmarco as msmarco_tasks
from tasks import nq as nq_tasks

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
LENGTHS = {"query_tokens": 16, "doc_tokens": (3, 32)}


@pytest.fixture(autouse=True)
def _isolated_data_config(monkeypatch):
  for key in list(os.environ):
    if key.startswith("ALIGNER_") and key not in ("ALIGNER_SHARED_DATA", "ALIGNER_T5_VOCAB"):
      monkeypatch.delenv(key)
  # Tokenise with MiniLM here (always installed): re-register under that vocabulary.
  monkeypatch.setenv("ALIGNER_VOCABULARY", "minilm")
  for family in (beir_tasks, msmarco_tasks, nq_tasks, demo_tasks):
    family._register_all()
  yield
  loaders._overrides.clear()
  # Leave the registry as importing `tasks` made it, for tests that run later.
  monkeypatch.undo()
  for family in (beir_tasks, msmarco_tasks, nq_tasks, demo_tasks):
    family._register_all()


def test_registration_reads_no_file(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f"file system touched during registration: {args!r}")

  for module, name in ((builtins, "open"), (os, "stat"), (os, "listdir"), (os, "scandir"),
                       (os.path, "exists"), (os.path, "isfile"), (os.path, "isdir")):
    monkeypatch.setattr(module, name, refuse)
  for family in (beir_tasks, msmarco_tasks, nq_tasks, demo_tasks):
    family._register_all()
  monkeypatch.undo()
  names = set(seqio.TaskRegistry.names())
  expected = {"msmarco_passage_train", "msmarco_passage_train_distill",
              "msmarco_passage_train_hard_negatives",
              "msmarco_passage_train_distill_hard_negatives", "msmarco_passage_corpus",
              "msmarco_passage_queries", "nq_train", "nq_corpus", "nq_queries", "demo_train",
              "demo_corpus", "demo_queries", "beir_scifact_train", "beir_scifact_corpus",
              "beir_scifact_queries", "beir_cqadupstack_android_corpus", "beir_trec_covid_queries"}
  assert expected <= names
  assert tasks.beir.DATASETS["scifact"] == ("scifact", True)


def test_a_missing_directory_is_reported_when_data_is_requested():
  task = seqio.get_mixture_or_task("msmarco_passage_corpus")
  with pytest.raises(loaders.DataDirError, match="set ALIGNER_MSMARCO_DIR"):
    task.get_dataset(LENGTHS, split="corpus", shuffle=False)
  with pytest.raises(loaders.DataDirError, match="ALIGNER_BEIR_SCIFACT_DIR.*ALIGNER_BEIR_DIR"):
    pipeline_lib.get_pipeline("beir_scifact_corpus", batch_size=2)


def _seqio_examples(name, split, n, lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def _assert_seqio_equals_pipeline(name, split, n, lengths=LENGTHS):
  seqio_lengths = lengths
  if not name.endswith("train"):  # seqio trims a rank-1 doc_tokens by an int
    seqio_lengths = features_lib.FeatureLengths.parse(lengths).as_dict(doc_rank=1)
  examples = _seqio_examples(name, split, n, seqio_lengths)
  batch = next(pipeline_lib.get_pipeline(name, split=split, batch_size=n, shuffle=False,
                                         feature_lengths=lengths, prefetch=0))
  for key, value in batch.items():
    if key == "valid":
      continue
    stacked = np.stack([e[key] for e in examples])
    if value.dtype == object:
      stacked = np.array([s.decode() for s in stacked], dtype=object)
    np.testing.assert_array_equal(stacked, value, err_msg=key)
  return examples, batch


def test_beir_tasks_on_scifact(scifact_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("ALIGNER_BEIR_DIR", str(scifact_dir.parent))
  monkeypatch.setenv("ALIGNER_CACHE_DIR", str(tmp_path / "cache"))
  examples, batch = _assert_seqio_equals_pipeline("beir_scifact_train", "train", 4)
  assert examples[0]["query_tokens"].shape == (16,) and examples[0]["doc_tokens"].shape == (3, 32)
  assert batch["query_tokens"][0, 0] == 101  # MiniLM framing: [CLS] first
  assert len(os.listdir(tmp_path / "cache")) == 1  # the mined negatives, outside the data dir
  _, corpus = _assert_seqio_equals_pipeline("beir_scifact_corpus", "corpus", 3)
  assert list(corpus["doc_id"]) == ["4983", "5836", "7912"]
  assert corpus["doc_tokens"].shape == (3, 32)
  queries = pipeline_lib.get_pipeline("beir_scifact_queries", split="test", batch_size=128,
                                      feature_lengths=LENGTHS)
  ids = [i for b in queries for i, v in zip(b["query_id"], b["valid"]) if v]
  assert len(ids) == 300 and ids[0] == "1"
  with pytest.raises(DataError, match=r"qrels/dev.tsv: file not found"):
    pipeline_lib.get_pipeline("beir_scifact_queries", split="dev", batch_size=2)


def test_default_lengths_and_vocabulary_override(scifact_dir, monkeypatch, t5_tokenizer_json):
  monkeypatch.setenv("ALIGNER_BEIR_SCIFACT_DIR", str(scifact_dir))
  p = pipeline_lib.get_pipeline("beir_scifact_corpus", batch_size=2,
                                vocabulary=vocab_lib.get_vocabulary(t5_tokenizer_json))
  batch = next(p)
  assert batch["doc_tokens"].shape == (2, 256)  # default document length
  assert batch["doc_tokens"][0, 0] != 101  # T5 ids, no [CLS]
  assert batch["doc_tokens"][0][batch["doc_tokens"][0] != 0][-1] == 1  # ... ending in EOS


def test_msmarco_tasks_on_fixtures(monkeypatch):
  monkeypatch.setenv("ALIGNER_MSMARCO_DIR", str(FIXTURES / "msmarco" / "good"))
  lengths = {"query_tokens": 16, "doc_tokens": (2, 32)}
  for name in ("msmarco_passage_train", "msmarco_passage_train_hard_negatives"):
    examples, _ = _assert_seqio_equals_pipeline(name, "train", 3, lengths)
    assert set(examples[0]) == {"query_tokens", "doc_tokens"}
  for name in ("msmarco_passage_train_distill", "msmarco_passage_train_distill_hard_negatives"):
    examples, batch = _assert_seqio_equals_pipeline(name, "train", 3, lengths)
    assert examples[0]["teacher_scores"].dtype == np.float32
    assert batch["teacher_scores"].shape == (3, 2)
    assert batch["teacher_scores"][0, 0] == 9.5  # query 100's positive
  evaluation = next(pipeline_lib.get_pipeline("msmarco_passage_queries", split="eval",
                                              batch_size=2))
  assert list(evaluation["query_id"]) == ["300", ""]  # no qrels: every query of the file
  with pytest.raises(ValueError, match="smallest negative pool with teacher scores has 1"):
    pipeline_lib.get_pipeline("msmarco_passage_train_distill", batch_size=2,
                              feature_lengths={"doc_tokens": (4, 32)})


def test_nq_tasks_on_fixtures(monkeypatch):
  monkeypatch.setenv("ALIGNER_NQ_DIR", str(FIXTURES / "nq" / "good"))
  _assert_seqio_equals_pipeline("nq_train", "train", 2)
  _, corpus = _assert_seqio_equals_pipeline("nq_corpus", "corpus", 7)
  assert list(corpus["doc_id"]) == [str(i) for i in range(1, 8)]
  test = next(pipeline_lib.get_pipeline("nq_queries", split="test", batch_size=2))
  assert list(test["query_id"]) == ["test-0", "test-1"]


def test_demo_tasks_generated_in_memory_equal_the_written_files(monkeypatch, tmp_path):
  generated = _take_train("demo_train")
  demo_collection.main(["--out", str(tmp_path / "demo"), "--seed", "0"])
  monkeypatch.setenv("ALIGNER_DEMO_DIR", str(tmp_path / "demo"))
  from_files = _take_train("demo_train")
  for a, b in zip(generated, from_files):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  queries = next(pipeline_lib.get_pipeline("demo_queries", split="test", batch_size=4))
  assert queries["query_tokens"].shape == (4, 64)


def _take_train(name):
  p = pipeline_lib.get_pipeline(name, batch_size=8, seed=7,
                                feature_lengths={"query_tokens": 16, "doc_tokens": (4, 48)})
  return [next(p) for _ in range(3)]


def test_tfds_source_reports_an_unprepared_directory(tmp_path, monkeypatch):
  source = tfds_source.TfdsBeirSource("scifact", tmp_path)
  assert not source.prepared
  with pytest.raises(DataError, match=r"TFDS dataset beir/scifact is not prepared here \(prepare "
                     r"it where there is internet: tfds build beir/scifact --data_dir="):
    source.read()
  assert tfds_source.tfds_config("cqadupstack_android") == "cqadupstack.android"
  monkeypatch.setenv("ALIGNER_BEIR_SCIFACT_DIR", f"tfds:{tmp_path}")
  with pytest.raises(DataError, match="not prepared"):
    pipeline_lib.get_pipeline("beir_scifact_corpus", batch_size=2)


def test_other_seqio_tasks_use_the_tf_data_fallback():
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.range(20).map(
        lambda i: {"query_tokens": tf.fill([4], tf.cast(i, tf.int32) + 1)})

  vocabulary = vocab_lib.get_vocabulary("minilm")
  seqio.TaskRegistry.add(
      "test_plain_seqio_task", source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
      output_features={"query_tokens": seqio.Feature(vocabulary, add_eos=False)},
      preprocessors=[], shuffle_buffer_size=64)
  try:
    p = pipeline_lib.get_pipeline("test_plain_seqio_task", batch_size=4, seed=3,
                                  feature_lengths={"query_tokens": 4})
    first = [next(p)["query_tokens"] for _ in range(3)]
    state = p.state()
    expected = [next(p)["query_tokens"] for _ in range(4)]  # crosses into epoch 1
    fresh = pipeline_lib.get_pipeline("test_plain_seqio_task", batch_size=4, seed=3,
                                      feature_lengths={"query_tokens": 4})
    fresh.restore(state)
    for want in expected:
      np.testing.assert_array_equal(next(fresh)["query_tokens"], want)
    assert sorted(np.concatenate(first + expected[:2])[:, 0].tolist()) == list(range(1, 21))
  finally:
    seqio.TaskRegistry.remove("test_plain_seqio_task")
