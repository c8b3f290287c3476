"""LITE: learnable late-interaction scorers over the token similarity matrix (Ji et al.).

Conventions:
  * Input is the padded similarity matrix `S [..., L1, L2]`, `S[..., i, j] = q_i · d_j`, with
    optional masks `q_mask [..., L1]`, `d_mask [..., L2]` (bool, False = padding). Leading axes are
    free: `[B]` for one document per query, `[B, K]` for K candidates per query. The output is
    one score per matrix, `[...]`.
  * The MLPs have fixed input sizes (L1 = `query_len`, L2 = `doc_len`), so shorter matrices are
    zero-padded up to them, and padded entries of S are set to 0 before any layer: the values
    at padded positions never change the score.
  * Separable LITE follows Eq. (3)-(4) literally: each update is LN(σ(W_b LN(σ(W_a x + b_a)) + b_b))
    with no residual; the score is w·vec(S″) with no bias (`use_output_bias` adds one).
  * Flattened LITE is the paper's class F_f: a two-layer ReLU network a·σ(W vec(S) + b), hidden
    width `row_width` (`col_width` is unused).
  * Document-token reduction (§4.4) pools or projects the document token axis. Both are linear
    in D, so reducing the columns of S equals scoring against reduced document vectors:
    reduce(S) = Qᵀ reduce(D). `LiteScorer.reduce_doc_tokens` reduces D for storage in an
    index; the scorer is then called with `doc_reduced=True` on the smaller matrix.
  * Parameters are float32 (`param_dtype`); `dtype` is the computation dtype (e.g. bfloat16).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from aligner_jax import sharding
from aligner_jax.scoring import dispatch

KINDS = ("separable", "flattened")
DOC_REDUCTIONS = (None, "avg_pool", "projection")
LAYER_NORM_EPS = 1e-6


def zero_padding(S: jax.Array, q_mask: jax.Array | None, d_mask: jax.Array | None) -> jax.Array:
  """S with rows of padded query tokens and columns of padded document tokens set to 0.

  Args:
    S: [..., L1, L2] similarities.
    q_mask: [..., L1] bool or None (all valid).
    d_mask: [..., L2] bool or None (all valid).
  Returns:
    [..., L1, L2], same dtype.
  """
  keep = jnp.ones(S.shape, bool)
  if q_mask is not None:
    keep = keep & jnp.asarray(q_mask, bool)[..., :, None]
  if d_mask is not None:
    keep = keep & jnp.asarray(d_mask, bool)[..., None, :]
  return jnp.where(keep, S, jnp.zeros((), S.dtype))


def avg_pool_tokens(x: jax.Array, mask: jax.Array | None, *,
                    window: int) -> tuple[jax.Array, jax.Array]:
  """Average of adjacent token vectors (LITE §4.4 "average pooling"), padding left out.

  Each output token is the mean of the valid tokens among `window` adjacent ones; a window
  without a valid token gives a zero vector and a False mask.

  Args:
    x: [..., m, h] token vectors, m divisible by `window`.
    mask: [..., m] bool or None (all valid).
    window: number of adjacent tokens averaged into one.
  Returns:
    ([..., m // window, h] pooled vectors, [..., m // window] bool mask).
  """
  m = x.shape[-2]
  if window < 1 or m % window:
    raise ValueError(f"average pooling needs the token count {m} to be a multiple of the "
                     f"window {window}")
  if mask is None:
    mask = jnp.ones(x.shape[:-1], bool)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1])
  lead = x.shape[:-2]
  w = mask.reshape(*lead, m // window, window).astype(x.dtype)
  blocks = x.reshape(*lead, m // window, window, x.shape[-1])
  total = jnp.einsum("...rwh,...rw->...rh", blocks, w)  # [..., r, h]
  count = jnp.sum(w, axis=-1)  # [..., r]
  pooled = total / jnp.maximum(count, 1)[..., None]
  return pooled, count > 0


def _dense_params(key, fan_in: int, features: int, axes: tuple[str | None, str | None],
                  param_dtype) -> dict:
  """{kernel [fan_in, features], bias [features]} as nn.Dense initialises them, boxed with axes."""
  kernel = nn.initializers.lecun_normal()(key, (fan_in, features), param_dtype)
  return {"kernel": nn.LogicallyPartitioned(kernel, names=axes),
          "bias": nn.LogicallyPartitioned(jnp.zeros((features,), param_dtype), names=(axes[1],))}


def _norm_params(size: int, axis: str, param_dtype) -> dict:
  """{scale, bias} [size] as nn.LayerNorm initialises them, boxed with the axis."""
  return {"scale": nn.LogicallyPartitioned(jnp.ones((size,), param_dtype), names=(axis,)),
          "bias": nn.LogicallyPartitioned(jnp.zeros((size,), param_dtype), names=(axis,))}


def block_params(key: jax.Array, features: int, hidden: int, param_dtype) -> dict:
  """Initial parameters of one LITE block (the tree `nn.Dense` / `nn.LayerNorm` would make).

  Returns:
    {"dense_a": {kernel [features, hidden], bias}, "norm_a": {scale, bias} [hidden],
     "dense_b": {kernel [hidden, features], bias}, "norm_b": {scale, bias} [features]}.
  """
  key_a, key_b = jax.random.split(key)
  return {"dense_a": _dense_params(key_a, features, hidden, (sharding.LENGTH, sharding.MLP),
                                   param_dtype),
          "norm_a": _norm_params(hidden, sharding.MLP, param_dtype),
          "dense_b": _dense_params(key_b, hidden, features, (sharding.MLP, sharding.LENGTH),
                                   param_dtype),
          "norm_b": _norm_params(features, sharding.LENGTH, param_dtype)}


def _axes(x: jax.Array, *tail: str | None) -> tuple[str | None, ...]:
  """Logical axes of a [batch, ..., *tail] activation: batch first, other leading axes free."""
  return (sharding.BATCH,) + (None,) * (x.ndim - 1 - len(tail)) + tail


def oriented_block(params: dict, axis: int) -> tuple:
  """A block's weights laid out for an update along `axis` of [..., L1, L2] (-1 rows, -2 columns).

  Rows multiply on the right (x [.., L2] @ kernel), columns on the left (kernelᵀ @ x [L1, ..]),
  so neither direction transposes S. Returns (Wa, ba, ga, ca, Wb, bb, gb, cb): kernels [in, out]
  for rows and [out, in] for columns; biases, LayerNorm scales and offsets as [1, size] rows or
  [size, 1] columns, broadcasting against the activations.
  """
  def vec(x):
    return x[None, :] if axis == -1 else x[:, None]

  def kernel(x):
    return x if axis == -1 else x.T

  out = []
  for dense, norm in (("dense_a", "norm_a"), ("dense_b", "norm_b")):
    out += [kernel(params[dense]["kernel"]), vec(params[dense]["bias"]),
            vec(params[norm]["scale"]), vec(params[norm]["bias"])]
  return tuple(out)


def _layer_norm(x: jax.Array, scale, offset, axis: int, dtype) -> jax.Array:
  """nn.LayerNorm(epsilon=1e-6) over `axis`: statistics in at least float32, output in dtype."""
  x = x.astype(jnp.promote_types(dtype, jnp.float32))
  mean = jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.maximum(jnp.mean(x * x, axis=axis, keepdims=True) - mean * mean, 0.0)
  y = (x - mean) * lax.rsqrt(var + LAYER_NORM_EPS) * scale.astype(x.dtype)
  return (y + offset.astype(x.dtype)).astype(dtype)


def block_apply(weights: tuple, x: jax.Array, *, axis: int, dtype, constrain: bool = True):
  """One LITE update LN(σ(W_b LN(σ(W_a x + b_a)) + b_b)) along `axis` of x [..., L1, L2].

  Args:
    weights: `oriented_block(params, axis)`.
    x: [..., L1, L2].
    axis: -1 (rows, LITE Eq. 3) or -2 (columns, LITE Eq. 4).
    dtype: computation dtype (as nn.Dense's: operands cast to it).
    constrain: add the logical sharding constraint on the hidden activation (XLA path only).
  Returns:
    [..., L1, L2] in dtype.
  """
  wa, ba, ga, ca, wb, bb, gb, cb = weights
  x = x.astype(dtype)

  def dense(x, w, b):
    w, b = w.astype(dtype), b.astype(dtype)
    return (jnp.matmul(x, w) if axis == -1 else jnp.matmul(w, x)) + b

  h = _layer_norm(jnp.maximum(dense(x, wa, ba), 0), ga, ca, axis, dtype)
  if constrain:
    tail = (sharding.LENGTH, sharding.MLP) if axis == -1 else (sharding.MLP, sharding.LENGTH)
    h = sharding.constrain(h, _axes(h, *tail))
  return _layer_norm(jnp.maximum(dense(h, wb, bb), 0), gb, cb, axis, dtype)


def separable_apply(row: dict, col: dict, w: jax.Array, S: jax.Array, *, dtype,
                    constrain: bool = True) -> jax.Array:
  """Separable LITE on zero-padded S [..., L1, L2′] -> [...] in dtype (LITE Eq. 3-4, §3)."""
  # LITE Eq. (3): S′_{i,:} = LN(σ(W₂ LN(σ(W₁ S_{i,:} + b₁)) + b₂)), every row
  s1 = block_apply(oriented_block(row, -1), S, axis=-1, dtype=dtype, constrain=constrain)
  # LITE Eq. (4): S″_{:,j} = LN(σ(W₄ LN(σ(W₃ S′_{:,j} + b₃)) + b₄)), every column
  s2 = block_apply(oriented_block(col, -2), s1, axis=-2, dtype=dtype, constrain=constrain)
  return readout(s2.reshape(*s2.shape[:-2], -1), w, dtype)


def readout(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
  """LITE §3: score = wᵀ x, x [..., k], accumulated in at least float32 even in bfloat16."""
  score = jnp.einsum("...k,k->...", x, w.astype(dtype),
                     preferred_element_type=jnp.promote_types(dtype, jnp.float32))
  return score.astype(dtype)


class LiteBlock(nn.Module):
  """One separable-LITE update along the last axis: LN(σ(W_b LN(σ(W_a x + b_a)) + b_b)).

  Row update, LITE Eq. (3): x = S_{i,:} (features = L2, hidden = m₂, W_a = W₁, W_b = W₂).
  Column update, LITE Eq. (4): x = S′_{:,j} (features = L1, hidden = m₁, W_a = W₃, W_b = W₄).
  Kernels are stored input-first, as nn.Dense stores them: `dense_a.kernel` is W₁ᵀ [L2, m₂]
  (the paper's W₁ is (m₂, L2), App. A.1), and likewise for the others.

  Attributes:
    hidden: width of the hidden layer (m₂ or m₁).
    features: size of the updated axis (L2 or L1); the block maps it to itself.
  """
  hidden: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., features] → [..., features]."""
    params = {name: self.param(name, lambda key, name=name: block_params(
        key, self.features, self.hidden, self.param_dtype)[name])
              for name in ("dense_a", "norm_a", "dense_b", "norm_b")}
    return block_apply(oriented_block(params, -1), x, axis=-1, dtype=self.dtype)


class LiteScorer(nn.Module):
  """Separable or flattened LITE over a padded similarity matrix, with optional §4.4 reduction.

  Attributes:
    query_len: L1, query tokens per matrix.
    doc_len: L2, document tokens per matrix before any reduction.
    row_width: m₂, hidden width of the row update (Eq. 3); the hidden width of flattened LITE.
    col_width: m₁, hidden width of the column update (Eq. 4); unused by flattened LITE.
    kind: "separable" (Eq. 3-4) or "flattened" (an MLP over vec(S)).
    doc_reduction: None, "avg_pool" (mean of doc_len / reduced_doc_len adjacent tokens) or
      "projection" (a learned [doc_len, reduced_doc_len] map over the token axis).
    reduced_doc_len: L2′, document tokens after reduction (required with a reduction).
    use_output_bias: add a learned bias to the score (the paper's w·vec(S″) has none).
    method: "auto" (the Pallas kernel for separable LITE on TPU without a multi-device mesh,
      `dispatch.resolve`), "xla" or "pallas" (interpret mode off TPU). The score is compiled
      once per shape and configuration (`jax.jit`), so a direct `apply` costs what a jitted one
      does.
  """
  query_len: int
  doc_len: int
  row_width: int
  col_width: int
  kind: str = "separable"
  doc_reduction: str | None = None
  reduced_doc_len: int | None = None
  use_output_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  method: str = dispatch.AUTO

  def setup(self):
    self._validate()
    L1, L2, pd = self.query_len, self.scored_doc_len, self.param_dtype
    if self.doc_reduction == "projection":
      self.doc_projection = self.param(
          "doc_projection",
          nn.with_logical_partitioning(nn.initializers.lecun_normal(), (sharding.LENGTH, None)),
          (self.doc_len, self.reduced_doc_len), pd)
    if self.kind == "separable":
      self.row = self.param("row", lambda key: block_params(key, L2, self.row_width, pd))
      self.col = self.param("col", lambda key: block_params(key, L1, self.col_width, pd))
      self.w = self.param(
          "w", nn.with_logical_partitioning(nn.initializers.normal((L1 * L2) ** -0.5),
                                            (sharding.LENGTH,)),
          (L1 * L2,), pd)
    else:
      self.hidden = self.param("hidden", lambda key: _dense_params(
          key, L1 * L2, self.row_width, (sharding.LENGTH, sharding.MLP), pd))
      self.w = self.param(
          "w", nn.with_logical_partitioning(nn.initializers.normal(self.row_width ** -0.5),
                                            (sharding.MLP,)),
          (self.row_width,), pd)
    if self.use_output_bias:
      self.bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                  ()), (), pd)

  def _validate(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"LiteScorer kind must be one of {KINDS}, got {self.kind!r}")
    if self.doc_reduction not in DOC_REDUCTIONS:
      raise ValueError(f"LiteScorer doc_reduction must be one of {DOC_REDUCTIONS}, "
                       f"got {self.doc_reduction!r}")
    for field in ("query_len", "doc_len", "row_width", "col_width"):
      if getattr(self, field) < 1:
        raise ValueError(f"LiteScorer {field} must be >= 1, got {getattr(self, field)}")
    if self.doc_reduction is None:
      if self.reduced_doc_len is not None:
        raise ValueError("LiteScorer reduced_doc_len is set but doc_reduction is None")
      return
    if self.reduced_doc_len is None or not 1 <= self.reduced_doc_len <= self.doc_len:
      raise ValueError(f"LiteScorer doc_reduction={self.doc_reduction!r} needs "
                       f"1 <= reduced_doc_len <= doc_len={self.doc_len}, "
                       f"got {self.reduced_doc_len}")
    if self.doc_reduction == "avg_pool" and self.doc_len % self.reduced_doc_len:
      raise ValueError(f"LiteScorer avg_pool needs doc_len={self.doc_len} to be a multiple of "
                       f"reduced_doc_len={self.reduced_doc_len}")

  @property
  def scored_doc_len(self) -> int:
    """Document tokens the MLPs see: L2′ with a reduction, else L2."""
    return self.doc_len if self.doc_reduction is None else self.reduced_doc_len

  def _config(self, doc_reduced: bool) -> "_Config":
    return _Config(self.kind, self.query_len, self.doc_len, self.doc_reduction,
                   self.reduced_doc_len, jnp.dtype(self.dtype), doc_reduced)

  def _weights(self) -> dict:
    """Every parameter the score reads, as one tree of arrays."""
    names = ("row", "col", "w") if self.kind == "separable" else ("hidden", "w")
    names += ("doc_projection",) if self.doc_reduction == "projection" else ()
    names += ("bias",) if self.use_output_bias else ()
    return {name: getattr(self, name) for name in names}

  def reduce_doc_tokens(self, d: jax.Array,
                        d_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """LITE §4.4: reduce document token vectors to `reduced_doc_len` for storage.

    Scoring Q against the result with `doc_reduced=True` equals scoring the full S.

    Args:
      d: [..., doc_len, h] document token vectors (shorter documents are zero-padded).
      d_mask: [..., doc_len] bool or None.
    Returns:
      ([..., reduced_doc_len, h], [..., reduced_doc_len] bool mask).
    """
    if self.doc_reduction is None:
      raise ValueError("LiteScorer.reduce_doc_tokens needs a doc_reduction")
    d_t = jnp.swapaxes(d, -1, -2)  # [..., h, m]: the token axis last, like S's columns
    mask = None if d_mask is None else jnp.asarray(d_mask, bool)[..., None, :]
    d_t, mask = _fit(d_t, mask, self.doc_len, "doc_len", "document token")
    out, out_mask = _reduce_columns(d_t, mask, self._config(False), self._weights())
    return jnp.swapaxes(out, -1, -2), out_mask[..., 0, :]

  def __call__(self, S: jax.Array, q_mask: jax.Array | None = None,
               d_mask: jax.Array | None = None, *, doc_reduced: bool = False) -> jax.Array:
    """Scores of padded similarity matrices.

    Args:
      S: [..., L1, L2] with L1 <= query_len and L2 <= doc_len (L2 <= reduced_doc_len when
        `doc_reduced`); smaller matrices are zero-padded.
      q_mask: [..., L1] bool or None.
      d_mask: [..., L2] bool or None.
      doc_reduced: S was computed against already-reduced document vectors
        (`reduce_doc_tokens`), so the reduction is not applied again.
    Returns:
      [...] scores in `dtype`.
    """
    if doc_reduced and self.doc_reduction is None:
      raise ValueError("LiteScorer got doc_reduced=True but has no doc_reduction")
    S = jnp.asarray(S)
    limit = self.scored_doc_len if doc_reduced else self.doc_len
    for size, field, what in ((S.shape[-1], "reduced_doc_len" if doc_reduced else "doc_len",
                               "document token"), (S.shape[-2], "query_len", "query token")):
      _check_fits(size, limit if what == "document token" else self.query_len, field, what,
                  S.shape)
    method = dispatch.resolve(self.method, xla="xla", allowed=METHODS,
                              backends=dispatch.LITE_BACKENDS, name="LiteScorer")
    if self.kind != "separable":
      method = "xla"  # flattened LITE is one dense layer: nothing for a kernel to fuse
    return _lite_scores(self._weights(), S, q_mask, d_mask, config=self._config(doc_reduced),
                        method=method)


METHODS = ("xla", "pallas")


@dataclasses.dataclass(frozen=True)
class _Config:
  """The static (hashable) part of a LiteScorer call."""
  kind: str
  query_len: int
  doc_len: int
  doc_reduction: str | None
  reduced_doc_len: int | None
  dtype: jnp.dtype
  doc_reduced: bool

  @property
  def scored_doc_len(self) -> int:
    return self.doc_len if self.doc_reduction is None else self.reduced_doc_len


def _check_fits(size: int, limit: int, field: str, what: str, shape) -> None:
  if size > limit:
    raise ValueError(f"LiteScorer got {size} {what}s on the last axis of shape {shape}, "
                     f"more than {field}={limit}")


@functools.partial(jax.jit, static_argnames=("config", "method"))
def _lite_scores(weights: dict, S: jax.Array, q_mask, d_mask, *, config: _Config,
                 method: str) -> jax.Array:
  """LiteScorer's score of S [..., L1, L2] -> [...] (see `LiteScorer.__call__`)."""
  S = S.astype(config.dtype)
  if q_mask is None:
    q_mask = jnp.ones(S.shape[:-1], bool)
  if d_mask is None:
    d_mask = jnp.ones(S.shape[:-2] + S.shape[-1:], bool)
  d_mask2 = jnp.asarray(d_mask, bool)[..., None, :]
  reduce_here = config.doc_reduction is not None and not config.doc_reduced
  if config.doc_reduced:
    S, d_mask2 = _fit(S, d_mask2, config.scored_doc_len, "reduced_doc_len", "document token")
  else:
    S, d_mask2 = _fit(S, d_mask2, config.doc_len, "doc_len", "document token")
  S_t, q_mask2 = _fit(jnp.swapaxes(S, -1, -2), jnp.asarray(q_mask, bool)[..., None, :],
                      config.query_len, "query_len", "query token")
  S = zero_padding(jnp.swapaxes(S_t, -1, -2), q_mask2[..., 0, :], d_mask2[..., 0, :])
  if reduce_here:
    S, _ = _reduce_columns(S, d_mask2, config, weights)
  S = sharding.constrain(S, _axes(S, sharding.LENGTH, None))
  if config.kind == "separable" and method == "pallas":
    from aligner_jax.scoring import pallas_lite  # it builds on this module's block functions
    score = pallas_lite.separable_scores(weights["row"], weights["col"], weights["w"], S,
                                         dtype=config.dtype)
  elif config.kind == "separable":
    score = separable_apply(weights["row"], weights["col"], weights["w"], S, dtype=config.dtype)
  else:
    score = _flattened(weights, S, config.dtype)
  if "bias" in weights:
    score = score + weights["bias"].astype(config.dtype)
  return score


def _flattened(weights: dict, S: jax.Array, dtype) -> jax.Array:
  """[..., L1, L2′] → [...]."""
  # LITE §3.1 class F_f: f(vec(S)) = aᵀ σ(W vec(S) + b)
  hidden = weights["hidden"]
  x = S.reshape(*S.shape[:-2], -1).astype(dtype)
  h = jnp.maximum(x @ hidden["kernel"].astype(dtype) + hidden["bias"].astype(dtype), 0)
  h = sharding.constrain(h, _axes(h, sharding.MLP))
  return readout(h, weights["w"], dtype)


def _reduce_columns(x: jax.Array, mask: jax.Array, config: _Config,
                    weights: dict) -> tuple[jax.Array, jax.Array]:
  """LITE §4.4 on the last axis (document tokens) of x [..., r, doc_len] with mask
  [..., 1, doc_len]; returns [..., r, reduced_doc_len] and its mask [..., 1, reduced_doc_len]."""
  if config.doc_reduction == "avg_pool":
    pooled, pooled_mask = avg_pool_tokens(
        jnp.swapaxes(x, -1, -2), mask[..., 0, :],
        window=config.doc_len // config.reduced_doc_len)
    return jnp.swapaxes(pooled, -1, -2), pooled_mask[..., None, :]
  x = jnp.where(mask, x, jnp.zeros((), x.dtype))
  out = jnp.einsum("...rm,mk->...rk", x, weights["doc_projection"].astype(x.dtype))
  # Every projected token mixes all document tokens, so it is valid whenever one is.
  valid = jnp.any(mask, axis=-1, keepdims=True)
  return out, jnp.broadcast_to(valid, mask.shape[:-1] + (config.reduced_doc_len,))


def _fit(x: jax.Array, mask: jax.Array | None, size: int, field: str,
         what: str) -> tuple[jax.Array, jax.Array]:
  """Zero-pads the last axis of x (and False-pads mask [..., 1, m]) up to `size`."""
  m = x.shape[-1]
  _check_fits(m, size, field, what, x.shape)
  if mask is None:
    mask = jnp.ones(x.shape[:-2] + (1, m), bool)
  mask = jnp.broadcast_to(mask, x.shape[:-2] + (1, m))
  if m < size:
    pad = [(0, 0)] * (x.ndim - 1) + [(0, size - m)]
    x = jnp.pad(x, pad)
    mask = jnp.pad(mask, pad)
  return x, mask
