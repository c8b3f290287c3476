"""Encoder records without a real model: module descriptions, the record's JSON, mismatches."""

import dataclasses
import json

import pytest

from aligner_jax import models
from aligner_jax.eval.encoder_record import EncoderMismatchError
from aligner_jax.eval.encoder_record import EncoderRecord
from aligner_jax.eval.encoder_record import check_same_encoder
from aligner_jax.index.files import IndexFileError
from aligner_jax.models import description
from aligner_jax.models.framing import Framing
from aligner_jax.models.hf_import import CheckpointError


def _module(**overrides):
  return models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                            query_salience_ratio=0.5,
                            query_framing=Framing(8, marker_id=3, expansion_id=4,
                                                  skip_ids=(5, 6)), **overrides)


def _record(module) -> EncoderRecord:
  return EncoderRecord(model=description.describe(module), params_source={"kind": "given"},
                       params_sha256="a" * 64, vocabulary="t5_1_1", vocabulary_sha256="b" * 64,
                       query_length=32, doc_length=128, dim=description.token_dim(module),
                       normalize_vectors=module.normalize_vectors)


def test_a_description_rebuilds_the_module_through_json():
  module = _module()
  text = json.dumps(description.describe(module))
  rebuilt = description.from_description(json.loads(text))
  assert rebuilt == module
  assert description.token_dim(rebuilt) == 16
  assert description.token_dim(models.DualEncoder(encoder_config=models.bert_config(
      "minilm_l6"))) == 384


def test_malformed_descriptions_are_named():
  good = description.describe(_module())
  with pytest.raises(CheckpointError, match="index.json: unknown DualEncoder settings"):
    description.from_description({**good, "future_field": 1}, source="index.json")
  with pytest.raises(CheckpointError, match="needs an encoder_config"):
    description.from_description({"pooling": "mean"})
  bad_framing = {**good, "query_framing": {"max_length": 0}}
  with pytest.raises(CheckpointError, match="malformed query_framing"):
    description.from_description(bad_framing)


def test_record_json_round_trip_and_version():
  record = _record(_module())
  assert EncoderRecord.from_json(json.loads(json.dumps(record.to_json())), "x") == record
  with pytest.raises(IndexFileError, match="unknown version"):
    EncoderRecord.from_json({**record.to_json(), "version": 99}, "index.json")
  with_defaults = record.with_defaults("top_k:4", {"num_neighbors": 64})
  assert with_defaults.alignment == "top_k:4" and with_defaults.search == {"num_neighbors": 64}
  check_same_encoder(record, with_defaults, index="I", model="M")  # defaults are no identity


def test_every_difference_is_named():
  record = _record(_module())
  other = dataclasses.replace(_record(_module(normalize_vectors=False)), query_length=64,
                              params_sha256="c" * 64)
  with pytest.raises(EncoderMismatchError) as e:
    check_same_encoder(record, other, index="runs/index", model="'runs/other'")
  message = str(e.value)
  for name in ("model", "params_sha256", "query_length", "normalize_vectors"):
    assert f"{name}:" in message
  assert "doc_length" not in message and "runs/index" in message
