"""The T5 encoder (T5 v1.1 and the original T5) in flax.linen.

T5 v1.1 (what ALIGNER builds on): RMSNorm pre-norm residual blocks, gated-GELU feed-forward
(GELU tanh approximation, Hugging Face "gelu_new"), no biases anywhere, relative position
buckets (bidirectional, 32 buckets, max distance 128) whose bias is computed once and shared
by every layer, dropout after the embedding, on attention weights, inside the MLP, on each
residual branch and after the final norm. The original T5 differs only in its ReLU,
non-gated feed-forward (its tied input/output embedding does not matter to an encoder).

Conventions:
  * `T5Encoder(config).apply({"params": p}, input_ids=..., attention_mask=...)` returns the
    final hidden states `[B, L, d_model]` in `config.dtype`; `attention_mask` None means all
    positions are real (Hugging Face semantics).
  * Parameter names follow T5X (`token_embedder/embedding`, `relpos_bias/rel_embedding`,
    `layers_0/attention/query/kernel`, `layers_0/mlp/wi_0/kernel`, `encoder_norm/scale`) so
    T5X checkpoints map almost one to one; kernels keep their axes unflattened
    (`query/kernel: [embed, heads, kv]`, `out/kernel: [heads, kv, embed]`).
  * T5 does not scale attention logits by 1/sqrt(kv): the scale lives in the query weights.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax import sharding
from aligner_jax.models import common


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder. `dtype` is the activation dtype; params are float32."""
  vocab_size: int = 32128
  d_model: int = 768
  num_heads: int = 12
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  activation: str = "gelu_new"
  gated: bool = True
  dtype: str = "float32"
  remat: bool = False
  # Recorded from config.json for the data side; the encoder itself reads padding only from
  # `attention_mask`.
  pad_token_id: int = 0

  def __post_init__(self):
    common.canonical_dtype(self.dtype)
    common.activation(self.activation)
    if self.relative_attention_num_buckets % 2:
      raise ValueError("relative_attention_num_buckets must be even (bidirectional buckets), "
                       f"got {self.relative_attention_num_buckets}")


# T5 v1.1 sizes (t5x/examples/t5/t5_1_1/*.gin); `tiny` is this project's test/demo size.
T5_1_1_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2),
    "small": dict(d_model=512, num_heads=6, d_kv=64, d_ff=1024, num_layers=8),
    "base": dict(d_model=768, num_heads=12, d_kv=64, d_ff=2048, num_layers=12),
    "large": dict(d_model=1024, num_heads=16, d_kv=64, d_ff=2816, num_layers=24),
    "xl": dict(d_model=2048, num_heads=32, d_kv=64, d_ff=5120, num_layers=24),
    "xxl": dict(d_model=4096, num_heads=64, d_kv=64, d_ff=10240, num_layers=24),
}


def t5_1_1_config(size: str, **overrides: Any) -> T5Config:
  """The T5 v1.1 encoder config of a named size (tiny/small/base/large/xl/xxl)."""
  if size not in T5_1_1_SIZES:
    raise ValueError(f"unknown T5 v1.1 size {size!r}; known: {list(T5_1_1_SIZES)}")
  return T5Config(**{**T5_1_1_SIZES[size], **overrides})


def relative_position_bucket(relative_position: np.ndarray, *, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of each relative position (memory - query position).

  Half the buckets are for keys to the right. Within a half, distances below
  `num_buckets // 4` get their own bucket, larger ones share logarithmically wider buckets up
  to `max_distance`, beyond which all fall in the last bucket. Computed in NumPy float32 with
  the same operation order as Mesh TensorFlow / Hugging Face so bucket boundaries agree.

  Args:
    relative_position: int array, any shape.
  Returns:
    int32 array of the same shape in [0, num_buckets).
  """
  half = num_buckets // 2
  buckets = (relative_position > 0).astype(np.int32) * half
  distance = np.abs(relative_position)
  max_exact = half // 2
  # max(., 1) only avoids log(0) warnings; those positions take the exact branch anyway.
  log_ratio = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
               / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + log_ratio.astype(np.int32), half - 1)
  return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


def relative_position_buckets(length: int, *, num_buckets: int, max_distance: int) -> np.ndarray:
  """[length, length] bucket ids for query i (rows) attending to key j (columns)."""
  positions = np.arange(length)
  return relative_position_bucket(positions[None, :] - positions[:, None],
                                  num_buckets=num_buckets, max_distance=max_distance)


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float, dtype: Any) -> jax.Array:
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, no mean subtraction, no bias.

  Args:
    x: [..., d]; scale: [d] float32. The statistic is taken in float32.
  """
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  return (normed * scale).astype(dtype)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (sharding.EMBED,)),
                       (x.shape[-1],), jnp.float32)
    return rms_norm(x, scale, eps=self.eps, dtype=self.dtype)


class RelativePositionBias(nn.Module):
  """Per-head scalar bias for each relative position bucket: `rel_embedding [heads, buckets]`."""
  config: T5Config

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    """Returns [1, heads, length, length] float32."""
    cfg = self.config
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(common.normal_init(cfg.d_model ** -0.5),
                                     (sharding.HEADS, sharding.RELPOS_BUCKETS)),
        (cfg.num_heads, cfg.relative_attention_num_buckets), jnp.float32)
    buckets = relative_position_buckets(length, num_buckets=cfg.relative_attention_num_buckets,
                                        max_distance=cfg.relative_attention_max_distance)
    return jnp.take(table, jnp.asarray(buckets), axis=1)[None]  # [1, heads, L, L]


class T5Attention(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, deterministic: bool) -> jax.Array:
    """x: [B, L, d_model]; bias: [B or 1, heads, L, L] float32 -> [B, L, d_model]."""
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    inner = cfg.num_heads * cfg.d_kv
    heads_axes = (sharding.BATCH, sharding.LENGTH, sharding.HEADS, sharding.KV)

    def projection(name: str, stddev: float) -> jax.Array:
      y = common.DenseGeneral(
          features=(cfg.num_heads, cfg.d_kv),
          kernel_axes=(sharding.EMBED, sharding.HEADS, sharding.KV),
          kernel_init=common.normal_init(stddev), dtype=dtype, name=name)(x)
      return sharding.constrain(y, heads_axes)

    # The query init carries T5's 1/sqrt(d_kv) logit scale (T5 never scales at run time).
    q = projection("query", (cfg.d_model * cfg.d_kv) ** -0.5)
    k = projection("key", cfg.d_model ** -0.5)
    v = projection("value", cfg.d_model ** -0.5)
    weights = common.attention_weights(q, k, bias)
    weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
    out = common.attend(weights, v)
    out = sharding.constrain(out, heads_axes)
    return common.DenseGeneral(
        features=(cfg.d_model,), contract=2,
        kernel_axes=(sharding.HEADS, sharding.KV, sharding.EMBED),
        kernel_init=common.normal_init(inner ** -0.5), dtype=dtype, name="out")(out)


class T5Mlp(nn.Module):
  """Gated (v1.1: act(x W_0) * (x W_1)) or plain (T5: act(x W)) feed-forward, then W_o."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    act = common.activation(cfg.activation)

    def dense_in(name: str) -> jax.Array:
      return common.DenseGeneral(
          features=(cfg.d_ff,), kernel_axes=(sharding.EMBED, sharding.MLP),
          kernel_init=common.normal_init(cfg.d_model ** -0.5), dtype=dtype, name=name)(x)

    if cfg.gated:
      hidden = act(dense_in("wi_0")) * dense_in("wi_1")
    else:
      hidden = act(dense_in("wi"))
    hidden = sharding.constrain(hidden, (sharding.BATCH, sharding.LENGTH, sharding.MLP))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    return common.DenseGeneral(
        features=(cfg.d_model,), kernel_axes=(sharding.MLP, sharding.EMBED),
        kernel_init=common.normal_init(cfg.d_ff ** -0.5), dtype=dtype, name="wo")(hidden)


class T5Layer(nn.Module):
  """One pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    dropout = nn.Dropout(cfg.dropout_rate)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    h = T5Attention(cfg, name="attention")(h, bias, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    h = T5Mlp(cfg, name="mlp")(h, deterministic=deterministic)
    x = x + dropout(h, deterministic=deterministic)
    return common.constrain_hidden(x)


class T5Encoder(nn.Module):
  """T5 / T5 v1.1 encoder stack: token ids [B, L] -> hidden states [B, L, d_model]."""
  config: T5Config

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """Encodes a batch.

    Args:
      input_ids: [B, L] int token ids.
      attention_mask: [B, L] bool / 0-1, True = real token; None = all real.
      deterministic: False enables dropout (needs the "dropout" rng).
    Returns:
      [B, L, d_model] final hidden states (after the final RMSNorm) in `config.dtype`.
    """
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    mask = common.default_mask(input_ids, attention_mask)
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(common.normal_init(1.0),
                                                    (sharding.VOCAB, sharding.EMBED)),
        name="token_embedder")
    dropout = nn.Dropout(cfg.dropout_rate)
    x = embed(input_ids.astype(jnp.int32))
    x = common.constrain_hidden(dropout(x, deterministic=deterministic))
    # Computed once and shared by all layers, as in T5 (the first layer owns it there).
    bias = (RelativePositionBias(cfg, name="relpos_bias")(input_ids.shape[1])
            + common.attention_bias(mask))
    layer_cls = nn.remat(T5Layer, static_argnums=(3,)) if cfg.remat else T5Layer
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
    return common.constrain_hidden(dropout(x, deterministic=deterministic))
