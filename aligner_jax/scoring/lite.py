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

import flax.linen as nn
import jax
import jax.numpy as jnp

from aligner_jax import sharding

KINDS = ("separable", "flattened")
DOC_REDUCTIONS = (None, "avg_pool", "projection")


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


def _dense(features: int, axes: tuple[str | None, str | None], *, dtype, param_dtype,
           use_bias: bool = True, name: str | None = None) -> nn.Dense:
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
      name=name)


def _layer_norm(axis: str, *, dtype, param_dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis,)),
      name=name)


def _axes(x: jax.Array, *tail: str | None) -> tuple[str | None, ...]:
  """Logical axes of a [batch, ..., *tail] activation: batch first, other leading axes free."""
  return (sharding.BATCH,) + (None,) * (x.ndim - 1 - len(tail)) + tail


class LiteBlock(nn.Module):
  """One separable-LITE update along the last axis: LN(σ(W_b LN(σ(W_a x + b_a)) + b_b)).

  Row update, LITE Eq. (3): x = S_{i,:} (features = L2, hidden = m₂, W_a = W₁, W_b = W₂).
  Column update, LITE Eq. (4): x = S′_{:,j} (features = L1, hidden = m₁, W_a = W₃, W_b = W₄).
  Flax stores kernels input-first, so `dense_a.kernel` is W₁ᵀ [L2, m₂] (the paper's W₁ is
  (m₂, L2), App. A.1), and likewise for the others.

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
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _dense(self.hidden, (sharding.LENGTH, sharding.MLP), name="dense_a", **kw)(x)
    h = _layer_norm(sharding.MLP, name="norm_a", **kw)(nn.relu(h))
    h = sharding.constrain(h, _axes(h, sharding.LENGTH, sharding.MLP))
    y = _dense(self.features, (sharding.MLP, sharding.LENGTH), name="dense_b", **kw)(h)
    return _layer_norm(sharding.LENGTH, name="norm_b", **kw)(nn.relu(y))


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

  def setup(self):
    self._validate()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    L1, L2 = self.query_len, self.scored_doc_len
    if self.doc_reduction == "projection":
      self.doc_projection = self.param(
          "doc_projection",
          nn.with_logical_partitioning(nn.initializers.lecun_normal(), (sharding.LENGTH, None)),
          (self.doc_len, self.reduced_doc_len), self.param_dtype)
    if self.kind == "separable":
      self.row = LiteBlock(self.row_width, L2, **kw)
      self.col = LiteBlock(self.col_width, L1, **kw)
      self.w = self.param(
          "w", nn.with_logical_partitioning(nn.initializers.normal((L1 * L2) ** -0.5),
                                            (sharding.LENGTH,)),
          (L1 * L2,), self.param_dtype)
    else:
      self.hidden = _dense(self.row_width, (sharding.LENGTH, sharding.MLP), **kw)
      self.w = self.param(
          "w", nn.with_logical_partitioning(nn.initializers.normal(self.row_width ** -0.5),
                                            (sharding.MLP,)),
          (self.row_width,), self.param_dtype)
    if self.use_output_bias:
      self.bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                  ()), (), self.param_dtype)

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
    d_t, mask = self._fit(d_t, mask, self.doc_len, "doc_len", "document token")
    out, out_mask = self._reduce_columns(d_t, mask)
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
    S = jnp.asarray(S).astype(self.dtype)
    if q_mask is None:
      q_mask = jnp.ones(S.shape[:-1], bool)
    if d_mask is None:
      d_mask = jnp.ones(S.shape[:-2] + S.shape[-1:], bool)
    d_mask2 = jnp.asarray(d_mask, bool)[..., None, :]
    S, d_mask2 = self._fit(S, d_mask2, self.scored_doc_len if doc_reduced else self.doc_len,
                           "reduced_doc_len" if doc_reduced else "doc_len", "document token")
    S_t, q_mask2 = self._fit(jnp.swapaxes(S, -1, -2), jnp.asarray(q_mask, bool)[..., None, :],
                             self.query_len, "query_len", "query token")
    S = jnp.swapaxes(S_t, -1, -2)
    S = zero_padding(S, q_mask2[..., 0, :], d_mask2[..., 0, :])
    if self.doc_reduction is not None and not doc_reduced:
      S, _ = self._reduce_columns(S, d_mask2)
    S = sharding.constrain(S, _axes(S, sharding.LENGTH, None))
    score = self._separable(S) if self.kind == "separable" else self._flattened(S)
    if self.use_output_bias:
      score = score + self.bias.astype(self.dtype)
    return score

  def _separable(self, S: jax.Array) -> jax.Array:
    """[..., L1, L2′] → [...]."""
    # LITE Eq. (3): S′_{i,:} = LN(σ(W₂ LN(σ(W₁ S_{i,:} + b₁)) + b₂)), every row
    S1 = self.row(S)
    # LITE Eq. (4): S″_{:,j} = LN(σ(W₄ LN(σ(W₃ S′_{:,j} + b₃)) + b₄)), every column
    S2 = jnp.swapaxes(self.col(jnp.swapaxes(S1, -1, -2)), -1, -2)
    # LITE §3: score = wᵀ vec(S″)
    return self._readout(S2.reshape(*S2.shape[:-2], -1))

  def _flattened(self, S: jax.Array) -> jax.Array:
    """[..., L1, L2′] → [...]."""
    # LITE §3.1 class F_f: f(vec(S)) = aᵀ σ(W vec(S) + b)
    h = nn.relu(self.hidden(S.reshape(*S.shape[:-2], -1)))
    h = sharding.constrain(h, _axes(h, sharding.MLP))
    return self._readout(h)

  def _readout(self, x: jax.Array) -> jax.Array:
    # Accumulate the L1·L2′-term dot product in float32 even when computing in bfloat16.
    score = jnp.einsum("...k,k->...", x, self.w.astype(self.dtype),
                       preferred_element_type=jnp.promote_types(self.dtype, jnp.float32))
    return score.astype(self.dtype)

  def _reduce_columns(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """LITE §4.4 on the last axis (document tokens) of x [..., r, doc_len] with mask
    [..., 1, doc_len]; returns [..., r, reduced_doc_len] and its mask [..., 1, reduced_doc_len]."""
    if self.doc_reduction == "avg_pool":
      pooled, pooled_mask = avg_pool_tokens(
          jnp.swapaxes(x, -1, -2), mask[..., 0, :], window=self.doc_len // self.reduced_doc_len)
      return jnp.swapaxes(pooled, -1, -2), pooled_mask[..., None, :]
    x = jnp.where(mask, x, jnp.zeros((), x.dtype))
    out = jnp.einsum("...rm,mk->...rk", x, self.doc_projection.astype(x.dtype))
    # Every projected token mixes all document tokens, so it is valid whenever one is.
    valid = jnp.any(mask, axis=-1, keepdims=True)
    return out, jnp.broadcast_to(valid, mask.shape[:-1] + (self.reduced_doc_len,))

  @staticmethod
  def _fit(x: jax.Array, mask: jax.Array | None, size: int, field: str,
           what: str) -> tuple[jax.Array, jax.Array]:
    """Zero-pads the last axis of x (and False-pads mask [..., 1, m]) up to `size`."""
    m = x.shape[-1]
    if m > size:
      raise ValueError(f"LiteScorer got {m} {what}s on the last axis of shape {x.shape}, "
                       f"more than {field}={size}")
    if mask is None:
      mask = jnp.ones(x.shape[:-2] + (1, m), bool)
    mask = jnp.broadcast_to(mask, x.shape[:-2] + (1, m))
    if m < size:
      pad = [(0, 0)] * (x.ndim - 1) + [(0, size - m)]
      x = jnp.pad(x, pad)
      mask = jnp.pad(mask, pad)
    return x, mask
