"""Building blocks shared by the T5 and BERT encoders.

Conventions:
  * Parameters are always stored in float32 (`param_dtype`); `dtype` is the activation /
    computation dtype (float32 or bfloat16). Reductions that need range (softmax, norms)
    run in float32 whatever `dtype` is.
  * Every parameter carries logical axis names from `aligner_jax.sharding`
    (`nn.with_logical_partitioning`); no raw `PartitionSpec` appears here.
  * Kernels keep their natural multi-dimensional shape, e.g. a query kernel is
    `[embed, heads, kv]` and an attention output kernel `[heads, kv, embed]`, so each axis
    has its own logical name.
  * Attention masks are `[B, L]` (bool or 0/1 ints); True / 1 marks a real token.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aligner_jax import sharding
from aligner_jax.models import cpu_attention
from aligner_jax.models import cpu_dense
from aligner_jax.models import native
from aligner_jax.scoring import dispatch

Initializer = Callable[..., jax.Array]

# Hugging Face `hidden_act` / `dense_act_fn` names -> functions. "gelu" is the exact (erf)
# GELU BERT uses; "gelu_new" is the tanh approximation T5 v1.1 uses.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def canonical_dtype(name: str) -> Any:
  """The jnp dtype for a config's dtype string ("float32" | "bfloat16" | "float16")."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def normal_init(stddev: float) -> Initializer:
  return nn.initializers.normal(stddev=stddev)


XLA = "xla"
# The concrete methods of the layers with a CPU kernel (`method` attributes / arguments).
METHODS = (XLA, dispatch.NATIVE)


class DenseGeneral(nn.Module):
  """y = act(x · W (+ b)) contracting the last `len(in_shape)` axes of x.

  Attributes:
    features: output feature shape, e.g. `(heads, kv)`.
    contract: how many trailing input axes are contracted (1 for `[.., embed]`,
      2 for `[.., heads, kv]`).
    kernel_axes: logical names of the kernel, in-axes then out-axes.
    use_bias: whether to add a bias of shape `features` (BERT yes, T5 no).
    activation: a name in ACTIVATIONS applied after the bias, or None.
    method: "auto" (dispatch.resolve: the CPU kernel `cpu_dense` on the CPU backend when it
      computes the layer and is built, else XLA), "xla" or "native". The parameters and the
      gradients are the same either way.
  """
  features: Sequence[int]
  kernel_axes: Sequence[str | None]
  contract: int = 1
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  activation: str | None = None
  method: str = dispatch.AUTO

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., *in_shape] -> [..., *features] in `dtype`."""
    features = tuple(self.features)
    in_shape = x.shape[-self.contract:]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
        in_shape + features, jnp.float32).astype(self.dtype)
    bias = None
    if self.use_bias:
      bias_axes = tuple(self.kernel_axes[self.contract:])
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                        features, jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    act = None if self.activation is None else activation(self.activation)
    contract = self.contract

    def xla(x, kernel, bias):
      y = jax.lax.dot_general(
          x, kernel, ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))),
                      ((), ())))
      if bias is not None:
        y = y + bias
      return y if act is None else act(y)

    cpu_problem = cpu_dense.unsupported(x, kernel, self.activation)
    method = dispatch.resolve(self.method, xla=XLA, allowed=METHODS, backends=(),
                              name="DenseGeneral",
                              cpu_kernel=None if cpu_problem else native.DENSE)
    if method == XLA:
      return xla(x, kernel, bias)
    return cpu_dense.dense(x, kernel, bias, xla, contract=contract,
                           activation=self.activation)


def attention_bias(mask: jax.Array) -> jax.Array:
  """Additive key mask: 0 on real keys, the float32 minimum on padding.

  Args:
    mask: [B, L] bool / int, True = real token.
  Returns:
    [B, 1, 1, L] float32, broadcastable against attention logits [B, heads, Lq, Lk].
  """
  big_negative = jnp.finfo(jnp.float32).min
  return jnp.where(mask.astype(bool), 0.0, big_negative)[:, None, None, :].astype(jnp.float32)


def attention_weights(q: jax.Array, k: jax.Array, bias: jax.Array) -> jax.Array:
  """Softmax attention weights with an additive float32 bias; the softmax runs in float32.

  Args:
    q: [B, Lq, heads, kv], k: [B, Lk, heads, kv] (any 1/sqrt(kv) scaling already applied to q).
    bias: broadcastable to [B, heads, Lq, Lk] float32 (key mask and/or position bias).
  Returns:
    [B, heads, Lq, Lk] float32.
  """
  # Heads moved next to the batch first, so both products are plain batched matmuls: XLA's CPU
  # backend runs einsum("bqhd,bkhd->bhqk") with heads in the middle 1.3-1.7x slower end to end
  # (all-MiniLM-L6-v2 forward, batch 16 x 256 tokens, 2 cores).
  q_heads = jnp.transpose(q, (0, 2, 1, 3))  # [B, heads, Lq, kv]
  k_heads = jnp.transpose(k, (0, 2, 3, 1))  # [B, heads, kv, Lk]
  logits = jnp.matmul(q_heads, k_heads, preferred_element_type=jnp.float32)
  return jax.nn.softmax(logits + bias, axis=-1)


def attend(weights: jax.Array, v: jax.Array) -> jax.Array:
  """Weighted sum of values.

  Args:
    weights: [B, heads, Lq, Lk]; v: [B, Lk, heads, kv].
  Returns:
    [B, Lq, heads, kv] in v's dtype.
  """
  v_heads = jnp.transpose(v, (0, 2, 1, 3))  # [B, heads, Lk, kv]: see attention_weights
  return jnp.transpose(jnp.matmul(weights.astype(v.dtype), v_heads), (0, 2, 1, 3))


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, *,
                          dropout: Callable[[jax.Array], jax.Array] | None = None,
                          method: str = dispatch.AUTO) -> jax.Array:
  """attend(dropout(attention_weights(q, k, bias)), v).

  Args:
    q, k, v: [B, L, heads, kv] (any 1/sqrt(kv) scaling already applied to q).
    bias: broadcastable to [B, heads, L, L] float32.
    dropout: applied to the weights (training), or None.
    method: "auto" (dispatch.resolve: the fused CPU kernel `cpu_attention` on the CPU backend
      when it computes the call and is built: self-attention in float32 with a key bias
      [B, 1, 1, L] and no dropout; else XLA), "xla" or "native".
  Returns:
    [B, L, heads, kv] in v's dtype.
  """
  def xla(q, k, v, bias):
    weights = attention_weights(q, k, bias)
    return attend(weights if dropout is None else dropout(weights), v)

  cpu_problem = ("dropout on the weights" if dropout is not None
                 else cpu_attention.unsupported(q, k, v, bias))
  method = dispatch.resolve(method, xla=XLA, allowed=METHODS, backends=(),
                            name="dot_product_attention",
                            cpu_kernel=None if cpu_problem else native.ATTENTION)
  if method == XLA:
    return xla(q, k, v, bias)
  if dropout is not None:  # the kernel checks the rest itself
    raise ValueError("the CPU attention kernel does not compute dropout on the weights")
  return cpu_attention.attention(q, k, v, bias, xla)


def constrain_hidden(x: jax.Array) -> jax.Array:
  """Block boundary: [B, L, embed] activations sharded over the batch."""
  return sharding.constrain(x, (sharding.BATCH, sharding.LENGTH, sharding.EMBED))


def default_mask(input_ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
  """The attention mask as bool; None means every position is real (Hugging Face semantics)."""
  if attention_mask is None:
    return jnp.ones(input_ids.shape, bool)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape "
                     f"{input_ids.shape}")
  return attention_mask.astype(bool)

