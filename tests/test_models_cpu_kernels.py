"""The encoders' CPU kernels (XLA FFI): the dense layers' (`aligner_jax/models/cpu_dense.py`)
and the fused self-attention (`cpu_attention.py`) against NumPy float64 references over ragged
shapes and masks, the exact GELU against math.erfc, gradients, the BERT forward against the XLA
path, and the switch (fallback when not built, never off the CPU)."""

import math
import os

from absl import logging as absl_logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest

from aligner_jax import sharding
from aligner_jax.models import bert
from aligner_jax.models import common
from aligner_jax.models import cpu_dense
from aligner_jax.models import native
from aligner_jax.scoring import dispatch
from aligner_jax.scoring import native as scoring_native


@pytest.fixture(scope="module")
def built_kernel():
  """The kernels are built by `make install`; without them these tests fail with the reason."""
  native.DENSE.require()
  native.ATTENTION.require()


def _gelu64(y: np.ndarray) -> np.ndarray:
  """x·Φ(x) in float64, Φ(x) = erfc(-x/√2)/2 (no cancellation for x < 0)."""
  return y * 0.5 * np.vectorize(math.erfc)(-y / math.sqrt(2.0))


def _xla(activation):
  def fn(x, kernel, bias):
    y = x @ kernel + (0.0 if bias is None else bias)
    return y if activation is None else common.activation(activation)(y)
  return fn


def _kernel(x, kernel, bias, activation):
  return jax.jit(lambda x, w, b: cpu_dense.dense(
      x, w, b, _xla(activation), contract=1, activation=activation))(x, kernel, bias)


# Rows: one, fewer than a tile (6 with AVX2), several row blocks (96) and a partial one;
# depths: one, not a multiple of the vector width, two and three slices (256 deep at most);
# columns: fewer than a panel (16 with AVX2), not a multiple of it, several panels.
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (6, 16, 16), (13, 300, 17),
                                   (97, 513, 33), (200, 384, 70)])
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_dense_matches_float64(m, k, n, activation, use_bias, built_kernel):
  rng = np.random.default_rng(m * 1000 + k + n)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
  b = rng.standard_normal(n).astype(np.float32) if use_bias else None
  got = np.asarray(_kernel(x, w, b, activation))
  want = x.astype(np.float64) @ w.astype(np.float64) + (0.0 if b is None else b)
  if activation == "gelu":
    want = _gelu64(want)
  # float32 accumulation over k terms: a few ulps of Σ|x·w|.
  scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + 1.0
  assert got.dtype == np.float32 and got.shape == (m, n)
  np.testing.assert_array_less(np.abs(got - want), 1e-6 * scale)


def test_gelu_relative_precision(built_kernel):
  # y = x through a 1 x 1 identity: the GELU alone, from -12 to 12 (x·Φ(x) down to 1e-32).
  x = np.linspace(-12.0, 12.0, 4801).astype(np.float32)[:, None]
  got = np.asarray(_kernel(x, np.ones((1, 1), np.float32), None, "gelu"))[:, 0]
  want = _gelu64(x[:, 0].astype(np.float64))
  # Relative to x·Φ(x) itself: a few ulps where Φ is not tiny; in the far negative tail the
  # float32 rounding of x²/2 (≈ 72 at x = -12) moves e^(-x²/2) by up to ~1e-5, as it does
  # XLA's float32 GELU.
  np.testing.assert_allclose(got[x[:, 0] > -5], want[x[:, 0] > -5], rtol=2e-6, atol=1e-37)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-37)
  assert got[x[:, 0] == 0.0] == 0.0


def test_dense_general_contracts_and_splits_axes_like_xla(built_kernel):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 9, 4, 8)), jnp.float32)
  for kwargs in (dict(features=(5, 3), contract=2,
                      kernel_axes=(sharding.HEADS, sharding.KV, None, None), use_bias=True,
                      activation="gelu"),
                 dict(features=(7,), contract=1, kernel_axes=(None, None))):
    params = common.DenseGeneral(**kwargs).init(jax.random.PRNGKey(0), x)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, nn.meta.unbox(params))
    got, want = (jax.jit(common.DenseGeneral(**kwargs, method=method).apply)(params, x)
                 for method in (dispatch.NATIVE, common.XLA))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_are_the_xla_paths(built_kernel):
  rng = np.random.default_rng(4)
  x, w, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((11, 20), (20, 9), (9,)))
  grads = []
  for use_kernel in (True, False):
    def loss(x, w, b, use_kernel=use_kernel):
      y = (cpu_dense.dense(x, w, b, _xla("gelu"), contract=1, activation="gelu")
           if use_kernel else _xla("gelu")(x, w, b))
      return jnp.sum(jnp.sin(y))
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b))
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_under_vmap(built_kernel):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((3, 4, 10)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 10, 6)), jnp.float32)
  got = jax.jit(jax.vmap(lambda x, w: cpu_dense.dense(
      x, w, None, _xla(None), contract=1, activation=None)))(x, w)
  np.testing.assert_allclose(got, jnp.einsum("bmk,bkn->bmn", x, w), rtol=1e-5, atol=1e-5)


def _unbuilt(monkeypatch, tmp_path, *names: str) -> list[str]:
  """Points the kernels `names` ("DENSE", "ATTENTION") at libraries that are not there;
  returns the warnings logged."""
  for name in names:
    built = getattr(native, name)
    monkeypatch.setattr(native, name, scoring_native.Library(
        str(tmp_path / os.path.basename(built.path)), built.what, built.source, built.handlers,
        built.fallback))
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
  return warnings


TINY = bert.bert_config("tiny", vocab_size=400, max_position_embeddings=32, dropout_rate=0.0,
                        attention_dropout_rate=0.0)


def test_bert_forward_matches_the_xla_path(monkeypatch, tmp_path, built_kernel):
  module = bert.BertEncoder(TINY)
  params = nn.meta.unbox(random_params(module, jnp.ones((1, 8), jnp.int32), boxed=True))
  rng = np.random.default_rng(6)
  ids = jnp.asarray(rng.integers(1, 400, (3, 16)), jnp.int32)
  mask = jnp.asarray(np.arange(16)[None, :] < np.array([16, 9, 1])[:, None])
  forward = lambda: jax.jit(  # noqa: E731
      lambda p, i, m: module.apply({"params": p}, i, m))(params, ids, mask)
  text = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m)).lower(
      params, ids, mask).as_text()
  assert text.count(native.DENSE_TARGET) == 6 * TINY.num_layers  # q, k, v, out, wi, wo
  assert text.count(native.ATTENTION_TARGET) == TINY.num_layers
  got = forward()
  warnings = _unbuilt(monkeypatch, tmp_path, "DENSE", "ATTENTION")
  want = forward()
  assert len(warnings) == 2 and all("not built" in w for w in warnings)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_missing_kernel_falls_back_or_fails_when_asked_for(monkeypatch, tmp_path):
  warnings = _unbuilt(monkeypatch, tmp_path, "DENSE")
  x = jnp.ones((2, 4), jnp.float32)
  layer = common.DenseGeneral(features=(3,), kernel_axes=(None, None))
  params = layer.init(jax.random.PRNGKey(0), x)
  for _ in range(2):
    assert native.DENSE_TARGET not in jax.jit(layer.apply).lower(params, x).as_text()
  assert len(warnings) == 1 and "the encoders use the XLA path" in warnings[0]
  with pytest.raises(RuntimeError, match="not built; run `make install`"):
    common.DenseGeneral(features=(3,), kernel_axes=(None, None),
                        method=dispatch.NATIVE).apply(params, x)


def test_auto_uses_the_kernel_only_where_it_computes_the_layer(monkeypatch, built_kernel):
  x = jnp.ones((2, 4), jnp.float32)

  def lowered(**kwargs) -> str:
    layer = common.DenseGeneral(features=(3,), kernel_axes=(None, None), **kwargs)
    params = layer.init(jax.random.PRNGKey(0), x)
    return jax.jit(layer.apply).lower(params, x).as_text()

  assert native.DENSE_TARGET in lowered()
  assert native.DENSE_TARGET in lowered(activation="gelu")
  assert native.DENSE_TARGET not in lowered(activation="relu")  # not fused by the kernel
  assert native.DENSE_TARGET not in lowered(dtype=jnp.bfloat16)
  assert native.DENSE_TARGET not in lowered(method=common.XLA)
  with jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",)):
    assert native.DENSE_TARGET not in lowered()
  with pytest.raises(ValueError, match="does not compute bfloat16"):
    lowered(dtype=jnp.bfloat16, method=dispatch.NATIVE)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert native.DENSE_TARGET not in lowered()


# ---------------------------------------------------------------- fused self-attention


def _attention64(q, k, v, lengths):
  """NumPy float64 softmax(q·kᵀ + key mask)·v; a sequence of no real keys gets equal weights
  over all of them, as jax.nn.softmax gives rows whose logits are all the float32 minimum."""
  q, k, v = (a.astype(np.float64) for a in (q, k, v))
  logits = np.einsum("bihd,bjhd->bhij", q, k)
  real = np.arange(q.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [B, L]
  logits = np.where(real[:, None, None, :], logits, -np.inf)
  logits = np.where(real.any(1)[:, None, None, None], logits, 0.0)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhij,bjhd->bihd", weights, v)


def _attention_inputs(seed, b, n, h, d, lengths):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3))
  mask = np.arange(n)[None, :] < np.asarray(lengths)[:, None]
  return q, k, v, common.attention_bias(jnp.asarray(mask))


# Lengths: one, fewer than a tile of query rows (6 with AVX2, 24 with AVX-512), not a multiple
# of a key panel (16) or the vector width; widths not a multiple of a value panel (16); padded
# sequences, and one of no real tokens.
@pytest.mark.parametrize("b,n,h,d,lengths", [
    (1, 1, 1, 1, [1]), (2, 7, 3, 5, [7, 3]), (3, 37, 2, 32, [37, 20, 0]),
    (2, 100, 4, 40, [100, 61]), (1, 300, 1, 8, [299])])
def test_attention_matches_float64(b, n, h, d, lengths, built_kernel):
  q, k, v, bias = _attention_inputs(b * n + h * d, b, n, h, d, lengths)
  got = jax.jit(lambda *a: common.dot_product_attention(*a, method=dispatch.NATIVE))(
      q, k, v, bias)
  assert got.dtype == jnp.float32 and got.shape == (b, n, h, d)
  np.testing.assert_allclose(got, _attention64(q, k, v, lengths), rtol=1e-5, atol=1e-5)


def test_attention_gradients_are_the_xla_paths(built_kernel):
  q, k, v, bias = _attention_inputs(8, 2, 11, 3, 8, [11, 5])
  grads = []
  for method in (dispatch.NATIVE, common.XLA):
    loss = lambda q, k, v, method=method: jnp.sum(jnp.sin(  # noqa: E731
        common.dot_product_attention(q, k, v, bias, method=method)))
    grads.append(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_attention_auto_uses_the_kernel_only_where_it_computes_the_call(monkeypatch,
                                                                        built_kernel):
  q, k, v, bias = _attention_inputs(9, 2, 5, 2, 4, [5, 2])

  def lowered(q=q, k=k, v=v, bias=bias, **kwargs) -> str:
    return jax.jit(lambda *a: common.dot_product_attention(*a, **kwargs)).lower(
        q, k, v, bias).as_text()

  assert native.ATTENTION_TARGET in lowered()
  assert native.ATTENTION_TARGET not in lowered(dropout=lambda w: w * 0.5)
  assert native.ATTENTION_TARGET not in lowered(bias=jnp.zeros((1, 2, 5, 5)))  # per head
  assert native.ATTENTION_TARGET not in lowered(q=q[:, :3])  # cross-attention
  assert native.ATTENTION_TARGET not in lowered(v=jnp.asarray(v, jnp.bfloat16))
  assert native.ATTENTION_TARGET not in lowered(method=common.XLA)
  with pytest.raises(ValueError, match="does not compute dropout"):
    lowered(dropout=lambda w: w * 0.5, method=dispatch.NATIVE)
  with jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",)):
    assert native.ATTENTION_TARGET not in lowered()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert native.ATTENTION_TARGET not in lowered()
