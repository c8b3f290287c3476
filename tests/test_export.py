"""Export to the sentence-transformers / PyLate ColBERT layout (models/export.py) and its
reading back (models/pylate_layout.py) without PyLate: the round trip gives the same module
and parameters, and every part the layout cannot express, or a broken directory, is a clear
error. PyLate itself loading the export is tested in test_pylate_export.py."""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest
from train_testlib import run_main

from aligner_jax import models
from aligner_jax.io import write_json
from aligner_jax.models import export
from aligner_jax.models import hf_import
from aligner_jax.models import pylate_layout
from aligner_jax.models.framing import Framing
from aligner_jax.models.hf_import import CheckpointError
from aligner_jax.scoring.lite import LiteScorer

# Ids of all-MiniLM-L6-v2's vocabulary: [unused0], [unused1], [MASK], ",", ".".
UNUSED0, UNUSED1, MASK, COMMA, PERIOD = 1, 2, 103, 1010, 1012
BERT = models.bert_config("tiny", vocab_size=1100, max_position_embeddings=64,
                          dropout_rate=0.0, attention_dropout_rate=0.0)
QUERY_FRAMING = Framing(12, marker_id=UNUSED0, expansion_id=MASK, attend_to_expansion=True)
DOC_FRAMING = Framing(40, marker_id=UNUSED1, skip_ids=(COMMA, PERIOD))


def _tokenizer_dir() -> pathlib.Path:
  return hf_import.minilm_model_dir()


def _params(module):
  q = jnp.ones((1, 4), jnp.int32)
  return random_params(module, q, q.astype(bool), q, q.astype(bool), seed=3)


def _module(**fields):
  base = dict(projection_dim=16, projection_bias=True, projection_activation="tanh",
              query_framing=QUERY_FRAMING, doc_framing=DOC_FRAMING)
  return models.DualEncoder(BERT, **{**base, **fields})


def test_round_trip_keeps_module_and_params(tmp_path):
  module = _module()
  params = _params(module)
  out = export.export_colbert(tmp_path / "colbert", module, params,
                              tokenizer_dir=_tokenizer_dir())
  assert pylate_layout.is_colbert_dir(out)
  back = pylate_layout.load_colbert(out, dropout_rate=0.0, attention_dropout_rate=0.0)
  for field in ("projection_dim", "projection_bias", "projection_activation",
                "query_framing", "doc_framing"):
    assert getattr(back.module, field) == getattr(module, field), field
  assert (back.query_length, back.doc_length) == (12, 40)
  assert back.vocabulary == str(out / "tokenizer.json")
  flat = dict(jax.tree_util.tree_leaves_with_path(params))
  back_flat = dict(jax.tree_util.tree_leaves_with_path(back.params))
  assert set(flat) == set(back_flat)
  for path, value in flat.items():
    np.testing.assert_array_equal(back_flat[path], np.asarray(value), err_msg=str(path))
  settings = json.loads((out / pylate_layout.MODEL_CONFIG_FILE).read_text())
  assert settings["skiplist_words"] == [",", "."]
  assert (settings["query_prefix"], settings["document_prefix"]) == ("[unused0]", "[unused1]")


def test_model_without_framing_or_projection(tmp_path):
  """A plain multi-vector model: no prefixes, no expansion, no skip list, the lengths given,
  an identity projection."""
  module = models.DualEncoder(BERT)
  params = _params(module)
  with pytest.raises(export.ExportError, match="query_length"):
    export.export_colbert(tmp_path / "x", module, params, tokenizer_dir=_tokenizer_dir())
  out = export.export_colbert(tmp_path / "plain", module, params,
                              tokenizer_dir=_tokenizer_dir(), query_length=20, doc_length=30)
  settings = json.loads((out / pylate_layout.MODEL_CONFIG_FILE).read_text())
  assert settings["query_prefix"] == settings["document_prefix"] == ""
  assert not settings["do_query_expansion"] and settings["skiplist_words"] == []
  back = pylate_layout.load_colbert(out)
  np.testing.assert_array_equal(back.params["token_projection"]["kernel"],
                                np.eye(BERT.hidden_size, dtype=np.float32))
  assert back.module.query_framing == Framing(20)
  assert back.module.doc_framing == Framing(30)


@pytest.mark.parametrize("fields,message", [
    (dict(shared_encoder=False), "two towers"),
    (dict(lite_scorer=LiteScorer(query_len=12, doc_len=40, row_width=4, col_width=4)),
     "LITE"),
    (dict(normalize_vectors=False), "normalise"),
    (dict(doc_salience_ratio=0.5), "salience heads"),
    (dict(doc_framing=Framing(40, expansion_id=MASK)), "document expansion"),
    (dict(query_framing=Framing(12, skip_ids=(COMMA,))), "query skip list"),
    (dict(query_framing=Framing(12, expansion_id=UNUSED0)), "mask token"),
])
def test_what_the_layout_cannot_express_is_refused(tmp_path, fields, message):
  module = _module(**fields)
  # The check comes first: the LITE model's own parameters are not needed to refuse it.
  params = _params(_module() if "lite_scorer" in fields else module)
  with pytest.raises(export.ExportError, match=message):
    export.export_colbert(tmp_path / "x", module, params, tokenizer_dir=_tokenizer_dir())
  assert not (tmp_path / "x").exists()


def test_salience_heads_can_be_dropped(tmp_path):
  module = _module(doc_salience_ratio=0.5)
  out = export.export_colbert(tmp_path / "x", module, _params(module),
                              tokenizer_dir=_tokenizer_dir(), drop_salience=True)
  assert "doc_salience" not in pylate_layout.load_colbert(out).params


def test_t5_backbone_is_refused(tmp_path):
  module = models.DualEncoder(models.t5_1_1_config("tiny", vocab_size=1100),
                              query_framing=QUERY_FRAMING, doc_framing=DOC_FRAMING)
  with pytest.raises(export.ExportError, match="only BERT"):
    export.export_colbert(tmp_path / "x", module, _params(module),
                          tokenizer_dir=_tokenizer_dir())


@pytest.fixture(name="exported")
def _exported(tmp_path) -> pathlib.Path:
  module = _module()
  return export.export_colbert(tmp_path / "colbert", module, _params(module),
                               tokenizer_dir=_tokenizer_dir())


def _edit_json(path: pathlib.Path, **changes) -> None:
  write_json(path, {**json.loads(path.read_text()), **changes})


@pytest.mark.parametrize("change,message", [
    (lambda d: _edit_json(d / pylate_layout.MODEL_CONFIG_FILE, similarity_fn_name="cosine"),
     "not 'MaxSim'"),
    (lambda d: _edit_json(d / pylate_layout.MODEL_CONFIG_FILE, query_prefix="[QUERY] "),
     "query_prefix '\\[QUERY\\] ' is not a token"),
    (lambda d: _edit_json(d / pylate_layout.MODEL_CONFIG_FILE, document_length=1),
     "document_length must be an integer >= 2"),
    (lambda d: _edit_json(d / pylate_layout.MODEL_CONFIG_FILE, query_length=600),
     "exceeds the encoder's max_position_embeddings"),
    (lambda d: _edit_json(d / "1_Dense" / "config.json",
                          activation_function="torch.nn.modules.activation.Softmax"),
     "activation_function 'torch.nn.modules.activation.Softmax'"),
    (lambda d: _edit_json(d / "1_Dense" / "config.json", use_residual=True), "use_residual"),
    (lambda d: _edit_json(d / "1_Dense" / "config.json", out_features=17),
     "'linear.weight' has shape \\(16, 64\\), expected \\(17, 64\\)"),
    (lambda d: _edit_json(d / "1_Dense" / "config.json", in_features=65), "in_features 65"),
    (lambda d: _edit_json(d / pylate_layout.SBERT_CONFIG_FILE, do_lower_case=True),
     "do_lower_case"),
    (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda d: (d / pylate_layout.MODEL_CONFIG_FILE).write_text('{"query_prefix": '),
     "config_sentence_transformers.json:1: invalid JSON"),
    (lambda d: write_json(d / pylate_layout.MODULES_FILE,
                          json.loads((d / pylate_layout.MODULES_FILE).read_text())
                          + [{"idx": 2, "name": "2", "path": "1_Dense",
                              "type": pylate_layout.DENSE_TYPE}], sort_keys=False),
     "2 Dense modules"),
])
def test_broken_directories_are_named(exported, change, message):
  change(exported)
  with pytest.raises(CheckpointError, match=message):
    pylate_layout.load_colbert(exported)


def test_export_replaces_a_previous_directory_whole(exported):
  (exported / "stale.txt").write_text("from an older export")
  module = dataclasses.replace(_module(), projection_activation="relu")
  export.export_colbert(exported, module, _params(module), tokenizer_dir=_tokenizer_dir())
  assert not (exported / "stale.txt").exists()
  assert pylate_layout.load_colbert(exported).module.projection_activation == "relu"
  shutil.rmtree(exported)


def test_export_job_through_gin(tmp_path):
  """gin/runs/export_colbert.gin on the pretrained all-MiniLM-L6-v2 (no projection: an
  identity Dense is written): the export reads back as the same model."""
  out = tmp_path / "minilm_colbert"
  run_main(["gin/models/minilm.gin", "gin/runs/export_colbert.gin"],
           ["MODEL_DIR = None", f"EXPORT_DIR = '{out}'", "QUERY_LENGTH = 16",
            "DOC_LENGTH = 48", "CHECKPOINT_PATH = %MINILM_DIR"])
  back = pylate_layout.load_colbert(out)
  assert back.module.query_framing == Framing(16) and back.module.doc_framing == Framing(48)
  _, encoder = hf_import.load_hf_encoder(hf_import.minilm_model_dir(), add_pooler=False)
  for name, value in jax.tree_util.tree_leaves_with_path(encoder):
    got = back.params["encoder"]
    for key in name:
      got = got[key.key]
    np.testing.assert_array_equal(got, value, err_msg=str(name))
