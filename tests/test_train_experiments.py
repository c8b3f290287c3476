"""2-step smoke tests of every experiment file with a tiny-model override (8 fake devices).

Each experiment runs its own task, loss and model family: the MS MARCO experiments read a
small MS MARCO fixture in the official layout, the demo reads the built-in demo collection.
"""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
import train_testlib as lib

from aligner_jax import models

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


@pytest.mark.usefixtures("t5_tokenizer_json")  # the T5 v1.1 vocabulary: skip without it
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


@pytest.mark.usefixtures("t5_tokenizer_json")  # the T5 v1.1 vocabulary: skip without it
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
          "QUERY_LENGTH = 8", "DOC_LENGTH = 16", "warmup_linear_decay.warmup_steps = 1",
          "LiteScorer.row_width = 24", "LiteScorer.col_width = 12"])
  _check(tmp_path)


def test_de_distill_m3se_from_an_initial_checkpoint(tmp_path, msmarco):
  # INITIAL_CHECKPOINT_PATH: a tiny BERT encoder saved in the project's orbax format.
  config = models.bert_config("tiny", dropout_rate=0.0, attention_dropout_rate=0.0)
  ids = np.ones((1, 8), np.int32)
  pretrained = jax.tree.map(np.asarray, nn.unbox(models.build_encoder(config).init(
      jax.random.key(123), ids, ids.astype(bool))["params"]))
  models.save_params(tmp_path / "pretrained", pretrained, config=config)
  lib.run_main(
      ["gin/experiments/de_distill_m3se.gin"],
      _common(tmp_path, msmarco) + list(TINY_BERT) + [
          f"INITIAL_CHECKPOINT_PATH = '{tmp_path / 'pretrained'}'",
          "TASK_FEATURE_LENGTHS = {'query_tokens': 8, 'doc_tokens': (5, 16)}"])
  _check(tmp_path)
  # Two AdamW steps at lr <= 2.8e-5 move a weight by < 1e-4: the encoder started from the
  # imported weights, not from the (seed 0) random init.
  trained = lib.final_params(tmp_path / "model", 2)["encoder"]
  for got, want in zip(jax.tree.leaves(trained), jax.tree.leaves(pretrained), strict=True):
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.usefixtures("t5_tokenizer_json")  # the T5 v1.1 vocabulary: skip without it
def test_demo_model_parallel(tmp_path):
  # The demo as written, shrunk, on a 4 x 2 (data x model) mesh.
  lib.run_main(["gin/experiments/demo.gin"],
               [f"MODEL_DIR = '{tmp_path / 'model'}'", *lib.TINY_DEMO_BINDINGS,
                "TRAIN_STEPS = 2", "NUM_PARTITIONS = 2"])
  _check(tmp_path)
