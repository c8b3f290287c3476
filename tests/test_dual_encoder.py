"""DualEncoder / CrossEncoder: pooling and normalisation against NumPy, tower sharing, the
salience and LITE heads, pretrained-weight insertion, pair packing, sharded init on 8
devices, and gin construction."""

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
from aligner_jax.models import dual_encoder as de
from aligner_jax.scoring.lite import LiteScorer

REPO = pathlib.Path(__file__).resolve().parents[1]
T5_TINY = models.t5_1_1_config("tiny", vocab_size=256, dropout_rate=0.0)
BERT_TINY = models.bert_config("tiny", vocab_size=256, max_position_embeddings=32,
                               dropout_rate=0.0, attention_dropout_rate=0.0)
N, M = 8, 12  # query / document lengths


def _tokens(seed: int, rows: int, width: int, lengths=None):
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, 256, (rows, width))
  lengths = rng.integers(1, width + 1, rows) if lengths is None else np.asarray(lengths)
  return ids, np.arange(width)[None, :] < lengths[:, None]


# ---- pure functions against NumPy ----------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([(1, 1, 1), (3, 7, 5)]), st.integers(0, 2**31 - 1))
def test_pooling_matches_numpy(shape, seed):
  batch, length, width = shape
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(batch, length, width)).astype(np.float32)
  mask = rng.random((batch, length)) < 0.6
  mask[0] = False  # an empty row pools to zeros, never NaN
  mean = np.asarray(de.mean_pool(hidden, mask))
  mx = np.asarray(de.max_pool(hidden, mask))
  for b in range(batch):
    rows = [hidden[b, i] for i in range(length) if mask[b, i]]
    np.testing.assert_allclose(mean[b], np.mean(rows, 0) if rows else 0.0, atol=1e-6)
    np.testing.assert_allclose(mx[b], np.max(rows, 0) if rows else 0.0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(de.pool(hidden, mask, "first")), hidden[:, 0])
  normed = np.asarray(de.l2_normalize(hidden))
  np.testing.assert_allclose(normed, hidden / np.linalg.norm(hidden, axis=-1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(de.l2_normalize(jnp.zeros((2, 3)))) == 0)
  with pytest.raises(ValueError, match="pooling 'sum'"):
    de.pool(hidden, mask, "sum")


def _pack_reference(q, qm, d, dm, max_length, skip, sep_id):
  """Python loops: query tokens (+ separator), then document tokens from `skip`, last doc
  token kept on truncation."""
  ids, mask, types = [], [], []
  for b in range(len(q)):
    qt = [int(t) for t, m in zip(q[b], qm[b]) if m] + ([] if sep_id is None else [sep_id])
    dt = [int(t) for t, m in zip(d[b], dm[b]) if m][skip:]
    seq, ty = qt + dt, [0] * len(qt) + [1] * len(dt)
    if len(seq) > max_length:
      cut_doc = len(qt) < max_length and dt
      seq, ty = seq[:max_length], ty[:max_length]
      if cut_doc:
        seq[-1] = dt[-1]
    pad = max_length - len(seq)
    ids.append(seq + [0] * pad)
    mask.append([True] * len(seq) + [False] * pad)
    types.append(ty + [0] * pad)
  return np.array(ids), np.array(mask), np.array(types)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([(1, 1, 1), (3, 6, 7)]), st.sampled_from([1, 4, 9, 13]),
       st.integers(0, 1), st.sampled_from([None, 7]), st.integers(0, 2**31 - 1))
def test_pack_pair_matches_reference(shape, max_length, skip, sep_id, seed):
  batch, n, m = shape
  rng = np.random.default_rng(seed)
  q = rng.integers(2, 99, (batch, n))
  d = rng.integers(100, 199, (batch, m))
  qm = np.arange(n)[None, :] < rng.integers(1, n + 1, (batch, 1))
  dm = np.arange(m)[None, :] < rng.integers(1, m + 1, (batch, 1))
  ids, mask, types = de.pack_pair(q, qm, d, dm, max_length=max_length, skip_doc_prefix=skip,
                                  sep_id=sep_id)
  ref = _pack_reference(q, qm, d, dm, max_length, skip, sep_id)
  np.testing.assert_array_equal(np.asarray(ids), ref[0])
  np.testing.assert_array_equal(np.asarray(mask), ref[1])
  np.testing.assert_array_equal(np.asarray(types), ref[2])


def test_similarity_for_lite_zeroes_padding():
  rng = np.random.default_rng(0)
  q = de.Encoded(vectors=jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32),
                 mask=jnp.array([[1, 1, 0], [1, 0, 0]], bool), salience=None,
                 pooled=jnp.zeros((2, 4)))
  d = de.Encoded(vectors=jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32),
                 mask=jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool), salience=None,
                 pooled=jnp.zeros((2, 4)))
  s = np.asarray(de.similarity_for_lite(q, d))
  for b in range(2):
    for i in range(3):
      for j in range(5):
        expect = float(q.vectors[b, i] @ d.vectors[b, j]) if q.mask[b, i] and d.mask[b, j] else 0
        assert s[b, i, j] == pytest.approx(expect, abs=1e-5)


# ---- the DualEncoder module ----------------------------------------------------------------

ALIGNER = de.DualEncoder(T5_TINY, projection_dim=32, query_salience_ratio=0.5,
                         doc_salience_ratio=0.25)
def _dual_random_params(model, *, n=N, m=M, seed=0, boxed=False):
  q, d = jnp.ones((1, n), jnp.int32), jnp.ones((1, m), jnp.int32)
  return random_params(model, q, q.astype(bool), d, d.astype(bool), seed=seed, boxed=boxed)


@pytest.fixture(scope="module")
def aligner_params():
  return _dual_random_params(ALIGNER)


@jax.jit
def _encode_both(params, q_ids, q_mask, d_ids, d_mask):
  return ALIGNER.apply({"params": params}, q_ids, q_mask, d_ids, d_mask)


def test_aligner_outputs(aligner_params):
  assert set(aligner_params) == {"encoder", "token_projection", "query_salience",
                                 "doc_salience"}
  assert aligner_params["token_projection"]["kernel"].shape == (64, 32)
  q_ids, q_mask = _tokens(0, 3, N)
  d_ids, d_mask = _tokens(1, 3, M)
  out = _encode_both(aligner_params, q_ids, q_mask, d_ids, d_mask)
  q, d = out.query, out.doc
  assert q.vectors.shape == (3, N, 32) and d.vectors.shape == (3, M, 32)
  assert q.vectors.dtype == jnp.float32 and q.mask.dtype == jnp.bool_
  norms = np.linalg.norm(np.asarray(q.vectors), axis=-1)
  np.testing.assert_allclose(norms[q_mask], 1.0, rtol=1e-5)
  assert np.all(norms[~q_mask] == 0)  # padding vectors are exactly zero
  assert q.salience.shape == (3, N) and np.all(np.asarray(q.salience)[~q_mask] == 0)
  assert np.all(np.asarray(d.salience)[~d_mask] == 0)
  assert np.all(np.asarray(d.salience) >= 0)
  # The pooled vector is the normalised mean of the encoder states over real tokens.
  hidden = jax.jit(models.T5Encoder(T5_TINY).apply)({"params": aligner_params["encoder"]},
                                                    q_ids, q_mask)
  expect = np.asarray(de.l2_normalize(de.mean_pool(hidden, q_mask)))
  np.testing.assert_allclose(np.asarray(q.pooled), expect, atol=1e-5)
  assert out.lite is None


def _init_and_encode(model, ids, mask):
  """Random params and jit(encode both sides) of `model` on the same tokens."""
  p = _dual_random_params(model, n=ids.shape[1], m=ids.shape[1])
  out = jax.jit(model.apply)({"params": p}, ids, mask, ids, mask)
  return p, out.query, out.doc


def test_shared_towers_encode_both_sides_alike_separate_do_not():
  ids, mask = _tokens(2, 2, N)
  _, q, d = _init_and_encode(de.DualEncoder(BERT_TINY), ids, mask)
  np.testing.assert_array_equal(np.asarray(q.vectors), np.asarray(d.vectors))
  assert q.salience is None
  towers = de.DualEncoder(BERT_TINY, shared_encoder=False, projection_dim=16,
                          pooled_projection_dim=8, pooling="first")
  p2, q2, d2 = _init_and_encode(towers, ids, mask)
  assert set(p2) == {"query_encoder", "doc_encoder", "query_token_projection",
                     "doc_token_projection", "query_pooled_projection",
                     "doc_pooled_projection"}
  assert q2.pooled.shape == (2, 8)
  assert np.abs(np.asarray(q2.vectors) - np.asarray(d2.vectors)).max() > 1e-3


def test_lite_head_scores_pairs_and_candidates():
  lite = LiteScorer(query_len=N, doc_len=M, row_width=6, col_width=5)
  model = de.DualEncoder(T5_TINY, projection_dim=16, lite_scorer=lite)
  p = _dual_random_params(model, seed=1)
  assert "lite_scorer" in p
  q_ids, q_mask = _tokens(3, 2, N)
  d_ids, d_mask = _tokens(4, 6, M)  # 3 candidates per query
  out = jax.jit(model.apply)({"params": p}, q_ids, q_mask, d_ids, d_mask)
  assert out.lite.shape == (2, 3)
  # Each [b, k] score is LITE on that pair's own similarity matrix.
  lite_one = jax.jit(lambda s, qm, dm: lite.apply({"params": p["lite_scorer"]}, s, qm, dm))
  for b in range(2):
    for k in range(3):
      c = 3 * b + k
      s = de.similarity_for_lite(
          de.Encoded(out.query.vectors[b:b + 1], out.query.mask[b:b + 1], None,
                     out.query.pooled[b:b + 1]),
          de.Encoded(out.doc.vectors[c:c + 1], out.doc.mask[c:c + 1], None,
                     out.doc.pooled[c:c + 1]))
      single = lite_one(s, out.query.mask[b:b + 1], out.doc.mask[c:c + 1])
      assert float(out.lite[b, k]) == pytest.approx(float(single[0]), abs=1e-5)
  with pytest.raises(ValueError, match="K documents per query"):
    jax.eval_shape(lambda: model.apply({"params": p}, q_ids, q_mask, d_ids[:5], d_mask[:5]))


def test_insert_pretrained_encoder_params(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf = transformers.BertModel(transformers.BertConfig(
      vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_position_embeddings=32))
  hf.save_pretrained(tmp_path, safe_serialization=True)
  encoder, pretrained = models.from_pretrained(tmp_path)
  assert "pooler" in pretrained  # BertModel ships a pooler the dual encoder does not use
  model = de.DualEncoder(models.params_io.read_encoder_config(tmp_path), projection_dim=16)
  boxed = _dual_random_params(model, m=N, boxed=True)
  merged = de.insert_encoder_params(boxed, pretrained)
  assert isinstance(merged["encoder"]["token_embedder"]["embedding"], nn.LogicallyPartitioned)
  params = nn.meta.unbox(merged)
  np.testing.assert_array_equal(params["token_projection"]["kernel"],
                                nn.meta.unbox(boxed)["token_projection"]["kernel"])
  ids, mask = _tokens(5, 2, N)
  pooled = jax.jit(lambda p: model.apply({"params": p}, ids, mask,
                                         method=model.encode_queries).pooled)(params)
  hidden = jax.jit(encoder.apply)({"params": pretrained}, ids, mask)
  np.testing.assert_allclose(np.asarray(pooled),
                             np.asarray(de.l2_normalize(de.mean_pool(hidden, mask))), atol=1e-5)
  wrong = dict(pretrained)
  del wrong["layers_1"]
  with pytest.raises(ValueError, match=r"missing \['layers_1'\]"):
    de.insert_encoder_params(boxed, wrong)
  bad = jax.tree_util.tree_map(lambda x: x, pretrained)
  bad["token_embedder"]["embedding"] = np.zeros((10, 64), np.float32)
  with pytest.raises(ValueError, match="encoder/token_embedder/embedding' has shape"):
    de.insert_encoder_params(boxed, bad)


def test_cross_encoder_t5_and_bert_train():
  q_ids, q_mask = _tokens(6, 2, N)
  d_ids, d_mask = _tokens(7, 2, M)
  ids, mask, types = de.pack_pair(q_ids, q_mask, d_ids, d_mask, max_length=16)
  for cfg, kwargs in ((T5_TINY, {}), (BERT_TINY, {"token_type_ids": types})):
    ce = de.CrossEncoder(cfg, dropout_rate=0.1)
    p = random_params(ce, ids, mask, **kwargs)
    assert set(p) == {"encoder", "score"}

    def loss(params, ce=ce, kwargs=kwargs):
      scores = ce.apply({"params": params}, ids, mask, deterministic=False,
                        rngs={"dropout": jax.random.PRNGKey(1)}, **kwargs)
      return jnp.sum(scores ** 2), scores

    (_, scores), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(p)
    assert scores.shape == (2,)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  with pytest.raises(ValueError, match="only used by BERT"):
    jax.eval_shape(de.CrossEncoder(T5_TINY).init, jax.random.PRNGKey(0), ids, mask, types)


def test_sharded_dual_encoder_on_8_devices():
  """Params placed by their logical axes on a (data=4, model=2) mesh; encoding under the mesh
  (activation constraints active) equals the unsharded run. (Sharded *init* is covered by
  test_t5.py.)"""
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), sharding.MESH_AXES)
  rules = sharding.logical_axis_rules()
  boxed = _dual_random_params(ALIGNER, seed=3, boxed=True)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  plain = nn.meta.unbox(boxed)
  placed = jax.device_put(plain, nn.meta.unbox(shardings))
  P = jax.sharding.PartitionSpec
  assert placed["token_projection"]["kernel"].sharding.spec == P(None, None)
  assert placed["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec == P(None, "model")
  assert placed["encoder"]["token_embedder"]["embedding"].sharding.spec == P("model", None)
  q_ids, q_mask = _tokens(8, 8, N)
  d_ids, d_mask = _tokens(9, 8, M)
  with mesh, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(lambda p, *a: ALIGNER.apply({"params": p}, *a))(
        placed, q_ids, q_mask, d_ids, d_mask)
  assert out.query.vectors.sharding.spec[0] == "data"
  ref = _encode_both(plain, q_ids, q_mask, d_ids, d_mask)
  for got, want in ((out.query, ref.query), (out.doc, ref.doc)):
    np.testing.assert_allclose(np.asarray(got.vectors), np.asarray(want.vectors), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.pooled), np.asarray(want.pooled), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.salience), np.asarray(want.salience), atol=1e-4)


@gin.configurable
def _dual_gin_probe(model=gin.REQUIRED):
  return model


def test_dual_encoder_from_gin():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(REPO / "gin" / "models" / "t5_1_1_tiny.gin")],
        ["DualEncoder.projection_dim = 128", "DualEncoder.doc_salience_ratio = 0.4",
         "_dual_gin_probe.model = @DualEncoder()"])
    model = _dual_gin_probe()
  finally:
    gin.clear_config()
  assert isinstance(model, de.DualEncoder)
  assert model.encoder_config == models.t5_1_1_config("tiny")
  assert (model.projection_dim, model.doc_salience_ratio) == (128, 0.4)
