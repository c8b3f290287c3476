"""The BERT encoder: parameter layout and axes, padding, token types, pooler, limits, dtypes,
remat, sharding specs, and the MiniLM gin file. (Parity with transformers is in
test_from_pretrained.py.)"""

import dataclasses
import pathlib

import flax.linen as nn
import gin
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest

from aligner_jax import models
from aligner_jax import sharding
from aligner_jax.models import bert

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = bert.bert_config("tiny", vocab_size=400, max_position_embeddings=32, dropout_rate=0.0,
                        attention_dropout_rate=0.0)
WIDTH = 16

_apply = jax.jit(lambda p, ids, mask, types: bert.BertEncoder(TINY).apply(
    {"params": p}, ids, mask, types))


@pytest.fixture(scope="module")
def boxed_params():
  return random_params(bert.BertEncoder(TINY), jnp.ones((1, 8), jnp.int32), boxed=True)


@pytest.fixture(scope="module")
def params(boxed_params):
  return nn.meta.unbox(boxed_params)


def _batch(seed: int, lengths=(16, 9, 1)):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 400, (len(lengths), WIDTH))
  mask = np.arange(WIDTH)[None, :] < np.array(lengths)[:, None]
  types = rng.integers(0, 2, ids.shape)
  return ids, mask, types


def test_param_layout_and_logical_axes(boxed_params):
  p = boxed_params
  assert set(p) == {"token_embedder", "position_embedder", "type_embedder",
                    "embedding_layer_norm", "layers_0", "layers_1"}  # no pooler by default
  assert p["token_embedder"]["embedding"].names == (sharding.VOCAB, sharding.EMBED)
  assert p["position_embedder"]["embedding"].names == (None, sharding.EMBED)
  layer = p["layers_0"]
  assert set(layer) == {"attention", "attention_layer_norm", "wi", "wo", "mlp_layer_norm"}
  assert layer["attention"]["query"]["kernel"].value.shape == (64, 4, 16)
  assert layer["attention"]["query"]["kernel"].names == (sharding.EMBED, sharding.HEADS,
                                                         sharding.KV)
  assert layer["attention"]["query"]["bias"].names == (sharding.HEADS, sharding.KV)
  assert layer["attention"]["out"]["kernel"].names == (sharding.HEADS, sharding.KV,
                                                       sharding.EMBED)
  assert layer["wi"]["kernel"].names == (sharding.EMBED, sharding.MLP)
  assert layer["mlp_layer_norm"]["scale"].names == (sharding.EMBED,)
  leaves = jax.tree_util.tree_leaves(p, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) and x.value.dtype == jnp.float32
             for x in leaves)
  # With the standard rules, the wide axes split over "model" and nothing else is split.
  specs = nn.logical_to_mesh_axes(layer["attention"]["query"]["kernel"].names,
                                  sharding.logical_axis_rules())
  assert tuple(specs) == (None, "model", None)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 16), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_padding_never_changes_real_positions(params, lengths, seed):
  ids, mask, types = _batch(seed, lengths)
  rng = np.random.default_rng(seed + 1)
  other_ids = np.where(mask, ids, rng.integers(1, 400, ids.shape))
  other_types = np.where(mask, types, 1 - types)
  a = np.asarray(_apply(params, ids, mask, types))
  b = np.asarray(_apply(params, other_ids, mask, other_types))
  np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)
  assert np.all(np.isfinite(a))


def test_token_types_and_positions_matter(params):
  ids, mask, types = _batch(1, (16, 16, 16))
  a = np.asarray(_apply(params, ids, mask, types))
  b = np.asarray(_apply(params, ids, mask, 1 - types))
  assert np.abs(a - b).max() > 1e-3
  # Same tokens in a different order are not a permutation of the outputs (absolute
  # positions), unlike a position-free encoder.
  perm = np.asarray(_apply(params, ids[:, ::-1].copy(), mask, types[:, ::-1].copy()))
  assert np.abs(perm[:, ::-1] - a).max() > 1e-3
  # None means all type 0 and all tokens real.
  zeros = np.asarray(_apply(params, ids, mask, np.zeros_like(types)))
  default = bert.BertEncoder(TINY).apply({"params": params}, ids)
  np.testing.assert_allclose(np.asarray(default), zeros, atol=1e-5)


def test_too_long_and_pooler_errors(params):
  with pytest.raises(ValueError, match="exceeds max_position_embeddings 32"):
    bert.BertEncoder(TINY).apply({"params": params}, jnp.ones((1, 33), jnp.int32))
  hidden = jnp.zeros((1, 4, 64))
  with pytest.raises(ValueError, match="add_pooler=False"):
    bert.BertEncoder(TINY).apply({"params": params}, hidden, method=bert.BertEncoder.pool)
  with pytest.raises(ValueError, match="multiple of num_heads"):
    bert.BertConfig(hidden_size=65, num_heads=4)
  with pytest.raises(ValueError, match="unknown BERT size"):
    bert.bert_config("gigantic")


def test_pooler_params_only_with_add_pooler():
  cfg = dataclasses.replace(TINY, add_pooler=True)
  shapes = jax.eval_shape(bert.BertEncoder(cfg).init, jax.random.PRNGKey(0),
                          jnp.ones((1, 4), jnp.int32))["params"]
  assert nn.meta.unbox(shapes)["pooler"]["kernel"].shape == (64, 64)


def test_bfloat16_and_remat(params):
  ids, mask, types = _batch(2)
  cfg16 = dataclasses.replace(TINY, dtype="bfloat16", remat=True)

  def loss(p):
    out = bert.BertEncoder(cfg16).apply({"params": p}, ids, mask, types)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out16), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  ref = np.asarray(_apply(params, ids, mask, types))
  assert out16.dtype == jnp.bfloat16
  assert np.abs(np.asarray(out16, np.float32)[mask] - ref[mask]).max() < 0.1 * np.abs(ref).max()
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@gin.configurable
def _bert_gin_probe(config=gin.REQUIRED, path=gin.REQUIRED):
  return config, path


def test_minilm_gin_matches_shipped_config():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(REPO / "gin" / "models" / "minilm.gin")],
        ["_bert_gin_probe.config = %ENCODER_CONFIG", "_bert_gin_probe.path = %MINILM_DIR"])
    cfg, path = _bert_gin_probe()
    assert gin.query_parameter("%VOCABULARY") == "minilm"
  finally:
    gin.clear_config()
  assert cfg == models.params_io.read_encoder_config(path)
  assert pathlib.Path(path, "model.safetensors").is_file()
