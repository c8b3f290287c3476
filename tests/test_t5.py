"""The T5 v1.1 encoder: buckets, norm, shapes and sizes, padding, dtypes, remat, dropout,
sharded initialisation on 8 fake devices, and the gin model files."""

import math
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

from aligner_jax import sharding
from aligner_jax.models import configs
from aligner_jax.models import t5

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = t5.t5_1_1_config("tiny", vocab_size=512, dropout_rate=0.0)


def _bucket_reference(rel: int, num_buckets: int = 32, max_distance: int = 128) -> int:
  """T5's bidirectional bucket for one relative position, written out with scalars."""
  half = num_buckets // 2
  bucket = half if rel > 0 else 0
  n = abs(rel)
  max_exact = half // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(np.float32(math.log(n / max_exact)) / np.float32(
      math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  return bucket + min(large, half - 1)


def test_relative_position_bucket_matches_reference_and_hf():
  rel = np.arange(-700, 700)
  ours = t5.relative_position_bucket(rel, num_buckets=32, max_distance=128)
  np.testing.assert_array_equal(ours, [_bucket_reference(int(r)) for r in rel])
  assert ours.min() == 0 and ours.max() == 31
  torch = pytest.importorskip("torch")
  from transformers.models.t5.modeling_t5 import T5Attention
  hf = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=True,
                                             num_buckets=32, max_distance=128).numpy()
  np.testing.assert_array_equal(ours, hf)


def test_relative_position_buckets_structure():
  b = t5.relative_position_buckets(300, num_buckets=32, max_distance=128)
  assert b.shape == (300, 300)
  np.testing.assert_array_equal(np.diag(b), 0)
  # Only relative position matters (Toeplitz), and the two directions use disjoint halves.
  np.testing.assert_array_equal(b[1:, 1:], b[:-1, :-1])
  assert set(np.unique(b[np.triu_indices(300, 1)])) <= set(range(16, 32))
  assert set(np.unique(b[np.tril_indices(300, -1)])) <= set(range(1, 16))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.floats(1e-6, 1e-2))
def test_rms_norm_matches_numpy(rows, width, eps):
  rng = np.random.default_rng(rows * 100 + width)
  x = rng.normal(size=(rows, width)).astype(np.float32) * 3
  scale = rng.uniform(0.5, 1.5, width).astype(np.float32)
  ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + eps) * scale
  out = t5.rms_norm(jnp.asarray(x), jnp.asarray(scale), eps=eps, dtype=jnp.float32)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def _abstract_init():
  """What `init` makes (boxed, with logical axes), without compiling the initialisers."""
  return jax.eval_shape(lambda rng: t5.T5Encoder(TINY).init(rng, jnp.ones((1, 8), jnp.int32)),
                        jax.random.PRNGKey(0))


def test_params_carry_logical_axes():
  boxed = _abstract_init()["params"]
  leaves = jax.tree_util.tree_leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert leaf.value.dtype == jnp.float32
  p = boxed
  assert p["token_embedder"]["embedding"].names == (sharding.VOCAB, sharding.EMBED)
  assert p["relpos_bias"]["rel_embedding"].names == (sharding.HEADS, sharding.RELPOS_BUCKETS)
  attn = p["layers_0"]["attention"]
  assert attn["query"]["kernel"].names == (sharding.EMBED, sharding.HEADS, sharding.KV)
  assert attn["out"]["kernel"].names == (sharding.HEADS, sharding.KV, sharding.EMBED)
  assert p["layers_1"]["mlp"]["wi_1"]["kernel"].names == (sharding.EMBED, sharding.MLP)
  assert p["layers_1"]["mlp"]["wo"]["kernel"].names == (sharding.MLP, sharding.EMBED)
  assert set(p) == {"token_embedder", "relpos_bias", "layers_0", "layers_1", "encoder_norm"}


def _expected_param_count(s: dict[str, int], vocab: int = 32128) -> int:
  inner = s["num_heads"] * s["d_kv"]
  per_layer = 4 * s["d_model"] * inner + 3 * s["d_model"] * s["d_ff"] + 2 * s["d_model"]
  return (vocab * s["d_model"] + s["num_heads"] * 32 + s["num_layers"] * per_layer
          + s["d_model"])


@pytest.mark.parametrize("size", ["small", "base", "large", "xl", "xxl"])
def test_t5_1_1_sizes(size):
  """Abstract init (no memory) of every size; base is the well-known ~110M encoder."""
  cfg = t5.t5_1_1_config(size)
  shapes = jax.eval_shape(lambda: t5.T5Encoder(cfg).init(jax.random.PRNGKey(0),
                                                          jnp.ones((1, 4), jnp.int32)))
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))
  assert count == _expected_param_count(t5.T5_1_1_SIZES[size])
  assert count == pytest.approx({"small": 35.3e6, "base": 109.6e6, "large": 341.2e6,
                                 "xl": 1.224e9, "xxl": 4.762e9}[size], rel=0.01)


def test_original_t5_config_is_relu_non_gated():
  cfg = configs.t5_config("small", version="1.0")
  assert not cfg.gated and cfg.activation == "relu"
  relu = t5.T5Encoder(dataclass_replace(TINY, gated=False, activation="relu"))
  p = jax.eval_shape(relu.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
  assert set(p["layers_0"]["mlp"]) == {"wi", "wo"}
  with pytest.raises(ValueError, match="unknown T5 v1.1 size"):
    t5.t5_1_1_config("huge")
  with pytest.raises(ValueError, match="dtype"):
    t5.T5Config(dtype="float8")


def dataclass_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


@pytest.fixture(scope="module")
def tiny_params():
  return random_params(t5.T5Encoder(TINY), jnp.ones((1, 8), jnp.int32))


_apply = jax.jit(lambda p, ids, mask: t5.T5Encoder(TINY).apply({"params": p}, ids, mask))


def _batch(seed: int, lengths=(16, 9, 1), width: int = 16):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, 512, (len(lengths), width))
  mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
  return ids, mask


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_padding_never_changes_real_positions(tiny_params, lengths, seed):
  """Real positions depend neither on what sits in padding nor on how much padding there is."""
  ids, mask = _batch(seed, lengths)
  other = np.where(mask, ids, np.random.default_rng(seed + 1).integers(2, 512, ids.shape))
  a = np.asarray(_apply(tiny_params, ids, mask))
  b = np.asarray(_apply(tiny_params, other, mask))
  c = np.asarray(_apply(tiny_params, ids[:, :12], mask[:, :12]))
  np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)
  np.testing.assert_allclose(a[:, :12][mask[:, :12]], c[mask[:, :12]], atol=1e-5)


def test_bfloat16_activations_float32_params(tiny_params):
  cfg16 = dataclass_replace(TINY, dtype="bfloat16")
  ids, mask = _batch(0)

  def loss(p):
    out = t5.T5Encoder(cfg16).apply({"params": p}, ids, mask)
    return jnp.sum(out.astype(jnp.float32) ** 2), out

  (_, out16), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(tiny_params)
  out32 = np.asarray(_apply(tiny_params, ids, mask))
  assert out16.dtype == jnp.bfloat16
  err = np.abs(np.asarray(out16, np.float32) - out32).max() / np.abs(out32).max()
  assert err < 0.05
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g))
             for g in jax.tree_util.tree_leaves(grads))


def test_remat_gives_same_outputs_and_gradients(tiny_params):
  ids, mask = _batch(1)

  def loss(p, cfg):
    return jnp.sum(t5.T5Encoder(cfg).apply({"params": p}, ids, mask) ** 2)

  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, TINY)))(tiny_params)
  remat = jax.jit(jax.value_and_grad(lambda p: loss(p, dataclass_replace(TINY, remat=True))))(
      tiny_params)
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         plain[1], remat[1])


def test_dropout_only_when_not_deterministic(tiny_params):
  cfg = dataclass_replace(TINY, dropout_rate=0.3)
  model = t5.T5Encoder(cfg)
  ids, mask = _batch(2, lengths=(16, 16, 16))
  # Deterministic runs ignore the rate entirely (same as the dropout-free model).
  base = np.asarray(_apply(tiny_params, ids, mask))
  noisy = jax.jit(lambda p, i, rng: model.apply({"params": p}, i, deterministic=False,
                                                rngs={"dropout": rng}))
  d1 = noisy(tiny_params, ids, jax.random.PRNGKey(1))
  d1b = noisy(tiny_params, ids, jax.random.PRNGKey(1))
  d2 = noisy(tiny_params, ids, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(d1, d1b)
  assert np.abs(d1 - base).max() > 1e-2 and np.abs(d1 - d2).max() > 1e-2
  with pytest.raises(Exception, match="dropout"):
    model.apply({"params": tiny_params}, ids, deterministic=False)


def test_sharded_init_on_8_devices_matches_unsharded():
  """maxtext-style init: eval_shape -> logical specs -> mesh shardings -> jit(out_shardings)."""
  assert jax.device_count() == 8
  # Auto axis types (jax.sharding.Mesh's default), as the trainer's mesh.
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), sharding.MESH_AXES)
  rules = sharding.logical_axis_rules()
  model = t5.T5Encoder(TINY)
  ids, mask = _batch(3, lengths=(16, 3, 9, 1, 12, 16, 5, 7))
  init = lambda rng: model.init(rng, jnp.ones((1, 8), jnp.int32))
  # An "rbg" key: the same sharded-init mechanism at half the compile time of threefry
  # (whose jitted init costs ~15 s of CPU here for the two compilations below).
  key = jax.random.key(0, impl="rbg")
  abstract = jax.eval_shape(init, key)
  specs = nn.get_partition_spec(abstract)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  sharded = jax.jit(init, out_shardings=shardings)(key)
  p = sharded["params"]
  P = jax.sharding.PartitionSpec
  assert p["token_embedder"]["embedding"].value.sharding.spec == P("model", None)
  assert p["layers_0"]["attention"]["query"]["kernel"].value.sharding.spec == P(None, "model",
                                                                                None)
  assert p["layers_0"]["attention"]["out"]["kernel"].value.sharding.spec == P("model", None,
                                                                              None)
  assert p["layers_0"]["mlp"]["wi_0"]["kernel"].value.sharding.spec == P(None, "model")
  assert p["layers_0"]["mlp"]["wo"]["kernel"].value.sharding.spec == P("model", None)
  assert p["relpos_bias"]["rel_embedding"].value.sharding.spec == P("model", None)
  assert p["encoder_norm"]["scale"].value.sharding.is_fully_replicated
  query = p["layers_0"]["attention"]["query"]["kernel"].value
  assert query.addressable_shards[0].data.shape == (64, 2, 16)

  # The same jitted init without shardings gives the same numbers (eager init may differ
  # from any jitted one in the last ulp, sharded or not).
  unsharded = nn.meta.unbox(jax.jit(init)(key)["params"])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                         nn.meta.unbox(p), unsharded)
  with mesh, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    assert sharding.mesh_is_active()
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(nn.meta.unbox(p), ids, mask)
  assert out.sharding.spec[0] == "data"  # activations constrained to the batch axis
  np.testing.assert_allclose(np.asarray(out), np.asarray(_apply(unsharded, ids, mask)),
                             atol=1e-5)


@gin.configurable
def _model_gin_probe(config=gin.REQUIRED):
  return config


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xl", "xxl"])
def test_gin_model_files(size):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(REPO / "gin" / "models" / f"t5_1_1_{size}.gin")],
                                        ["_model_gin_probe.config = %ENCODER_CONFIG"])
    cfg = _model_gin_probe()
    assert gin.query_parameter("%VOCABULARY") == "t5_1_1"
  finally:
    gin.clear_config()
  dtype = "float32" if size == "tiny" else "bfloat16"
  assert cfg == t5.t5_1_1_config(size, dtype=dtype, remat=size in ("xl", "xxl"))
