"""A model of the project exported to the PyLate layout is loaded by PyLate itself
(`models.ColBERT(path)`, tests/pylate_worker.py) and gives the project's token embeddings
within 1e-4: a MiniLM multi-vector model as the project trains them (no framing, every weight
moved off the pretrained values, a Dense projection with bias and tanh), and a PyLate model
imported and exported again (markers, query expansion, skip list)."""

import pathlib

import jax
import numpy as np
from pylate_testlib import EDGE_TEXTS
from pylate_testlib import TOLERANCE
from pylate_testlib import build_reference
from pylate_testlib import max_difference
from pylate_testlib import project_encode
from pylate_testlib import pylate_encode
from pylate_testlib import pylate_path
from pylate_testlib import scifact_texts
import pytest

from aligner_jax import models
from aligner_jax.models import export
from aligner_jax.models import hf_import
from aligner_jax.models import pylate_layout


def _moved(params, seed: int):
  """Every weight changed by ~1 % (seeded), as fine-tuning would, so each tensor the export
  writes matters to the comparison."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x, np.float32) * (1 + 0.01 * rng.standard_normal(np.shape(x))
                                             ).astype(np.float32), params)


def _compare(module, params, vocabulary, exported, lengths, scifact_dir, work_dir):
  queries, documents = scifact_texts(scifact_dir, 10)
  queries, documents = queries + EDGE_TEXTS, documents + EDGE_TEXTS
  want_q, want_d = pylate_encode(exported, queries, documents, work_dir)
  got_q = project_encode(module, params, vocabulary, queries, "query", lengths[0])
  got_d = project_encode(module, params, vocabulary, documents, "doc", lengths[1])
  diff_q, diff_d = max_difference(got_q, want_q), max_difference(got_d, want_d)
  print(f"max |project - PyLate| queries {diff_q:.2e}, documents {diff_d:.2e}")
  assert diff_q <= TOLERANCE and diff_d <= TOLERANCE


@pytest.mark.slow
def test_pylate_loads_a_project_model(scifact_dir, tmp_path):
  pylate_path()
  minilm = hf_import.minilm_model_dir()
  config, encoder = hf_import.load_hf_encoder(minilm, add_pooler=False)
  module = models.DualEncoder(config, projection_dim=64, projection_bias=True,
                              projection_activation="tanh")
  rng = np.random.default_rng(5)
  params = _moved({
      "encoder": encoder,
      "token_projection": {"kernel": rng.normal(0, 0.05, (384, 64)).astype(np.float32),
                           "bias": rng.normal(0, 0.05, 64).astype(np.float32)}}, seed=6)
  out = export.export_colbert(tmp_path / "exported", module, params, tokenizer_dir=minilm,
                              query_length=32, doc_length=128)
  _compare(module, params, str(minilm / "tokenizer.json"), out, (32, 128), scifact_dir,
           tmp_path)


@pytest.mark.slow
def test_pylate_loads_a_reexported_pylate_model(scifact_dir, tmp_path):
  imported = pylate_layout.load_colbert(build_reference(tmp_path, "bias_identity"))
  params = _moved(imported.params, seed=8)
  out = export.export_colbert(tmp_path / "exported", imported.module, params,
                              tokenizer_dir=pathlib.Path(imported.vocabulary).parent)
  back = pylate_layout.load_colbert(out).module
  for field in ("query_framing", "doc_framing", "projection_dim", "projection_bias"):
    assert getattr(back, field) == getattr(imported.module, field), field
  _compare(imported.module, params, imported.vocabulary, out,
           (imported.query_length, imported.doc_length), scifact_dir, tmp_path)
