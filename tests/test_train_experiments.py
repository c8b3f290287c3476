"""2-step smoke tests of every experiment file with a tiny-model override (8 fake devices).

Each experiment runs its own task, loss and model family: the MS MARCO experiments read a
small MS MARCO fixture in the official layout, the demo reads the built-in demo collection.
"""

import math

import pytest

import train_testlib as lib

TINY_T5 = "gin/models/t5_1_1_tiny.gin"
TINY_BERT = ("BertConfig.size = 'tiny'", "INITIAL_CHECKPOINT_PATH = None", *lib.NO_DROPOUT_BERT)


def _common(tmp_path, msmarco):
  return [f"MODEL_DIR = '{tmp_path / 'model'}'",
          "TRAIN_STEPS = 2", "BATCH_SIZE = 8", "CHECKPOINT_PERIOD = 2",
          "train.log_period = 1",
          f"train_pipeline.data_dirs = {{'msmarco': '{msmarco}'}}"]


def _check(tmp_path, steps=2):
  records = lib.read_metrics(tmp_path / "model")
  assert [r["step"] for r in records] == list(range(1, steps + 1))
  for r in records:
    assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]), r
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["mrr"] <= 1.0
  assert (tmp_path / "model" / "checkpoints" / str(steps)).is_dir()
  assert (tmp_path / "model" / "operative_config.gin").is_file()
  return records


@pytest.fixture
def msmarco(tmp_path):
  return lib.write_msmarco_fixture(tmp_path / "msmarco")


def test_aligner_t5_1_1_base_msmarco(tmp_path, msmarco):
  lib.run_main(
      ["gin/experiments/aligner_t5_1_1_base_msmarco.gin", TINY_T5],
      _common(tmp_path, msmarco) + list(lib.NO_DROPOUT_T5) + [
          "INITIAL_CHECKPOINT_PATH = None",
          "TASK_FEATURE_LENGTHS = {'query_tokens': 8, 'doc_tokens': (2, 16)}",
          "ACTIVATION_DTYPE = 'bfloat16'",  # the experiment's bfloat16 activations
          "DualEncoder.projection_dim = 16"])
  _check(tmp_path)
  operative = (tmp_path / "model" / "operative_config.gin").read_text()
  assert "ALIGNMENT = 'top_k:1'" in operative and "LOSS = 'softmax_ce'" in operative


def test_aligner_salience(tmp_path, msmarco):
  lib.run_main(
      ["gin/experiments/aligner_salience.gin", TINY_T5],
      _common(tmp_path, msmarco) + list(lib.NO_DROPOUT_T5) + [
          "INITIAL_CHECKPOINT_PATH = None",
          "TASK_FEATURE_LENGTHS = {'query_tokens': 8, 'doc_tokens': (2, 16)}",
          "DualEncoder.projection_dim = 16"])
  _check(tmp_path)
  operative = (tmp_path / "model" / "operative_config.gin").read_text()
  assert "DualEncoder.doc_salience_ratio = 0.4" in operative


def test_lite_msmarco(tmp_path, msmarco):
  lib.run_main(
      ["gin/experiments/lite_msmarco.gin"],
      _common(tmp_path, msmarco) + list(TINY_BERT) + [
          "QUERY_LENGTH = 8", "DOC_LENGTH = 16",
          "LiteScorer.row_width = 24", "LiteScorer.col_width = 12"])
  _check(tmp_path)


def test_de_distill_m3se(tmp_path, msmarco):
  lib.run_main(
      ["gin/experiments/de_distill_m3se.gin"],
      _common(tmp_path, msmarco) + list(TINY_BERT) + [
          "TASK_FEATURE_LENGTHS = {'query_tokens': 8, 'doc_tokens': (5, 16)}"])
  _check(tmp_path)


def test_demo_model_parallel(tmp_path):
  # The demo as written, shrunk, on a 4 x 2 (data x model) mesh.
  lib.run_main(["gin/experiments/demo.gin"],
               [f"MODEL_DIR = '{tmp_path / 'model'}'", *lib.TINY_DEMO_BINDINGS,
                "TRAIN_STEPS = 2", "NUM_PARTITIONS = 2"])
  _check(tmp_path)
