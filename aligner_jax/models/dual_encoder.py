"""Retrieval models built on an encoder: the dual encoder (multi-vector and pooled) and the
cross-encoder.

`DualEncoder` encodes queries and documents with one shared encoder (or two towers) and
returns `Encoded(vectors, mask, salience, pooled)`:
  * vectors [B, L, h]: token vectors, optionally projected (ALIGNER: 128-d) and L2-normalised
    -- what the alignment scorers and the token index consume;
  * mask [B, L] bool: real tokens;
  * salience [B, L] or None: the side's `SalienceHead` (ALIGNER Eq. 3) on the token vectors;
  * pooled [B, h']: mean over real tokens (or the first token) of the encoder states, then an
    optional projection and L2 norm -- the single-vector dual encoder (GTR, Menon et al.);
  * token_ids [B, L]: the ids the encoder saw.
A side with a `Framing` (framing.py: ColBERT's marker tokens, query expansion, skip list)
frames its ids first; its `mask` then marks the kept vectors, which may differ from the input
mask (expansion tokens kept, skip-list tokens dropped) and `L` may differ from the input width.
All outputs are float32 whatever the encoder's activation dtype. An optional LITE scorer
module (`lite_scorer`, e.g. `aligner_jax.scoring.LiteScorer(...)`) scores query/document
pairs from their padded similarity matrix.

`CrossEncoder` scores a query and a document packed into one sequence (`pack_pair`):
encoder -> first-token (or mean) pooling -> optional BERT tanh pooler -> linear -> score.

Parameter layout (shared towers): `encoder` (exactly the params `from_pretrained` returns),
`token_projection`, `pooled_projection`, `query_salience`, `doc_salience`, `lite_scorer`;
with separate towers `query_encoder` / `doc_encoder` and `query_` / `doc_` prefixed
projections. `insert_encoder_params` puts pretrained encoder weights into that layout.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from aligner_jax import sharding
from aligner_jax.models import common
from aligner_jax.models import configs
from aligner_jax.models import framing as framing_lib
from aligner_jax.scoring.salience import SalienceHead

POOLINGS = ("mean", "first", "max")
# Activations after the token projection (sentence-transformers' Dense `activation_function`).
PROJECTION_ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid", "silu")


@flax.struct.dataclass
class Encoded:
  """Encoder outputs for a batch of queries or documents (see the module docstring)."""
  vectors: jax.Array  # [B, L, h] float32
  mask: jax.Array  # [B, L] bool
  salience: jax.Array | None  # [B, L] float32, zeros on padding
  pooled: jax.Array  # [B, h'] float32
  token_ids: jax.Array | None = None  # [B, L] int32: the encoder's input ids


@flax.struct.dataclass
class DualEncoderOutput:
  query: Encoded
  doc: Encoded
  lite: jax.Array | None  # [B] (one document per query) or [B, K] LITE scores


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the real tokens' states: hidden [B, L, H], mask [B, L] -> [B, H] float32.

  A row without real tokens gives zeros.
  """
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=-2)
  return total / jnp.maximum(jnp.sum(m, axis=-2), 1.0)


def max_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-feature max over real tokens: [B, L, H] -> [B, H] float32 (zeros for empty rows)."""
  masked = jnp.where(mask[..., None], hidden.astype(jnp.float32), -jnp.inf)
  return jnp.where(jnp.any(mask, axis=-1, keepdims=True), jnp.max(masked, axis=-2), 0.0)


def pool(hidden: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Pools token states [B, L, H] into [B, H] float32 by `mode` in POOLINGS."""
  if mode == "mean":
    return mean_pool(hidden, mask)
  if mode == "first":
    return hidden[:, 0].astype(jnp.float32)
  if mode == "max":
    return max_pool(hidden, mask)
  raise ValueError(f"pooling {mode!r} is not one of {POOLINGS}")


def l2_normalize(x: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis (zero vectors stay zero, never NaN)."""
  x = x.astype(jnp.float32)
  # sqrt(max(Σx², ε²)) = max(||x||, ε) with a finite gradient at x = 0 (zero padding vectors
  # of cached encoder states), where the gradient of sqrt(Σx²) is 0 · ∞.
  norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))
  return x / norm


_PROJECTION_ACTIVATION = {
    "identity": lambda x: x, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False), "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu}


def similarity_for_lite(q: Encoded, d: Encoded) -> jax.Array:
  """Padded similarity matrices S_ij = q_i · d_j, zero where either token is padding.

  Args:
    q: vectors [B, n, h]; d: vectors [B, m, h] (one document per query) or [B, K, m, h].
  Returns:
    [B, n, m] or [B, K, n, m] float32.
  """
  if d.vectors.ndim == 3:
    s = jnp.einsum("bnh,bmh->bnm", q.vectors, d.vectors)
    return s * (q.mask[:, :, None] & d.mask[:, None, :])
  s = jnp.einsum("bnh,bkmh->bknm", q.vectors, d.vectors)
  return s * (q.mask[:, None, :, None] & d.mask[:, :, None, :])


class DualEncoder(nn.Module):
  """Query/document encoder with token, pooled, salience and LITE heads.

  Attributes:
    encoder_config: T5Config or BertConfig of the encoder.
    shared_encoder: one encoder (and projections) for both sides; False = two towers.
    projection_dim: token vectors are projected to this width (ALIGNER: 128); None = none.
    projection_bias: the token projection has a bias (PyLate's Dense `bias`).
    projection_activation: applied after the token projection, one of
      PROJECTION_ACTIVATIONS (sentence-transformers' Dense `activation_function`).
    normalize_vectors: L2-normalise token vectors.
    pooling: "mean" | "first" | "max" for the pooled vector.
    pooled_projection_dim: pooled vector projection width; None = none.
    normalize_pooled: L2-normalise the pooled vector.
    query_salience_ratio / doc_salience_ratio: add that side's SalienceHead with this
      sparsity ratio α (None = no salience).
    salience_eps / salience_gate: passed to the SalienceHeads ("lp" | "relu" | "hard_topk").
    salience_num_iters: the LP gate's solver: None = exact, an int = that many Eq. (5) steps.
    lite_scorer: optional module `(S [B, n, m], q_mask, d_mask) -> [B]`, e.g. LiteScorer.
    query_framing / doc_framing: that side's `Framing` (marker token, query expansion, skip
      list; see framing.py), None = the vocabulary's framing as it is.
  """
  encoder_config: configs.EncoderConfig
  shared_encoder: bool = True
  projection_dim: int | None = None
  projection_bias: bool = False
  projection_activation: str = "identity"
  normalize_vectors: bool = True
  pooling: str = "mean"
  pooled_projection_dim: int | None = None
  normalize_pooled: bool = True
  query_salience_ratio: float | None = None
  doc_salience_ratio: float | None = None
  salience_eps: float = 0.002
  salience_gate: str = "lp"
  salience_num_iters: int | None = None
  lite_scorer: Any = None
  query_framing: framing_lib.Framing | None = None
  doc_framing: framing_lib.Framing | None = None

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
    if self.projection_activation not in PROJECTION_ACTIVATIONS:
      raise ValueError(f"projection_activation {self.projection_activation!r} is not one of "
                       f"{PROJECTION_ACTIVATIONS}")
    dtype = common.canonical_dtype(self.encoder_config.dtype)
    width = configs.hidden_size(self.encoder_config)

    def projection(dim: int | None, name: str, bias: bool = False) -> nn.Module | None:
      if dim is None:
        return None
      return common.DenseGeneral(features=(dim,), kernel_axes=(sharding.EMBED, sharding.PROJ),
                                 kernel_init=common.normal_init(width ** -0.5), dtype=dtype,
                                 use_bias=bias, name=name)

    sides = ("",) if self.shared_encoder else ("query_", "doc_")
    self.towers = {
        side: (configs.build_encoder(self.encoder_config, name=f"{side}encoder"),
               projection(self.projection_dim, f"{side}token_projection",
                          self.projection_bias),
               projection(self.pooled_projection_dim, f"{side}pooled_projection"))
        for side in sides}
    in_axis = sharding.EMBED if self.projection_dim is None else sharding.PROJ

    def salience(ratio: float | None, name: str) -> nn.Module | None:
      if ratio is None:
        return None
      return SalienceHead(ratio=ratio, eps=self.salience_eps, gate=self.salience_gate,
                          num_iters=self.salience_num_iters, in_axis=in_axis, dtype=dtype,
                          name=name)

    self.saliences = {"query": salience(self.query_salience_ratio, "query_salience"),
                      "doc": salience(self.doc_salience_ratio, "doc_salience")}

  def framing(self, side: str) -> framing_lib.Framing | None:
    """The `Framing` of `side` ("query" | "doc"); usable on an unbound module."""
    return self.query_framing if side == "query" else self.doc_framing

  def _encode(self, side: str, input_ids: jax.Array, attention_mask: jax.Array,
              deterministic: bool) -> Encoded:
    encoder = self.towers["" if self.shared_encoder else f"{side}_"][0]
    ids, attention = input_ids, attention_mask.astype(bool)
    keep = attention
    side_framing = self.framing(side)
    if side_framing is not None:
      ids, attention, keep = framing_lib.frame(side_framing, ids, attention)
    hidden = encoder(ids, attention, deterministic=deterministic)
    return self.encode_hidden(side, hidden, keep).replace(token_ids=ids.astype(jnp.int32))

  def encode_hidden(self, side: str, hidden: jax.Array, mask: jax.Array) -> Encoded:
    """The heads of `side` ("query" | "doc") alone, on encoder states computed elsewhere.

    Used to train heads over cached states of a frozen encoder: only head parameters are
    created and touched (the encoder submodule is never called).

    Args:
      hidden: [B, L, H] encoder states; mask: [B, L] bool.
    """
    _, token_proj, pooled_proj = self.towers["" if self.shared_encoder else f"{side}_"]
    mask = mask.astype(bool)
    vectors = hidden
    if token_proj is not None:
      vectors = _PROJECTION_ACTIVATION[self.projection_activation](token_proj(hidden))
    vectors = vectors.astype(jnp.float32)
    if self.normalize_vectors:
      vectors = l2_normalize(vectors)
    vectors = vectors * mask[..., None]  # padding vectors are exactly zero
    vectors = sharding.constrain(vectors, (sharding.BATCH, sharding.LENGTH, sharding.PROJ))
    pooled = pool(hidden, mask, self.pooling)
    if pooled_proj is not None:
      pooled = pooled_proj(pooled).astype(jnp.float32)
    if self.normalize_pooled:
      pooled = l2_normalize(pooled)
    head = self.saliences[side]
    salience = None if head is None else head(vectors, mask)
    return Encoded(vectors=vectors, mask=mask, salience=salience, pooled=pooled)

  def encode_queries(self, input_ids: jax.Array, attention_mask: jax.Array, *,
                     deterministic: bool = True) -> Encoded:
    """input_ids, attention_mask: [B, n] -> Encoded with vectors [B, n, h]."""
    return self._encode("query", input_ids, attention_mask, deterministic)

  def encode_documents(self, input_ids: jax.Array, attention_mask: jax.Array, *,
                       deterministic: bool = True) -> Encoded:
    """input_ids, attention_mask: [C, m] -> Encoded with vectors [C, m, h]."""
    return self._encode("doc", input_ids, attention_mask, deterministic)

  def lite_scores(self, q: Encoded, d: Encoded) -> jax.Array:
    """LITE scores of each query against its document(s).

    Args:
      q: Encoded queries, vectors [B, n, h].
      d: Encoded documents, vectors [B, m, h] (one per query) or [B, K, m, h].
    Returns:
      [B] or [B, K] float32.
    """
    if self.lite_scorer is None:
      raise ValueError("this DualEncoder has no lite_scorer")
    s = similarity_for_lite(q, d)
    if s.ndim == 3:
      return self.lite_scorer(s, q.mask, d.mask)
    b, k, n, m = s.shape
    q_mask = jnp.broadcast_to(q.mask[:, None, :], (b, k, n)).reshape(b * k, n)
    return self.lite_scorer(s.reshape(b * k, n, m), q_mask, d.mask.reshape(b * k, m)
                            ).reshape(b, k)

  def __call__(self, query_ids: jax.Array, query_mask: jax.Array, doc_ids: jax.Array,
               doc_mask: jax.Array, *, deterministic: bool = True) -> DualEncoderOutput:
    """Encodes both sides and, with a LITE head, scores the pairs; `init` through this
    creates every head's parameters.

    Args:
      query_ids, query_mask: [B, n]. doc_ids, doc_mask: [B * K, m] (K >= 1 per query).
    """
    q = self.encode_queries(query_ids, query_mask, deterministic=deterministic)
    d = self.encode_documents(doc_ids, doc_mask, deterministic=deterministic)
    return self._with_lite(q, d)

  def heads(self, query_hidden: jax.Array, query_mask: jax.Array, doc_hidden: jax.Array,
            doc_mask: jax.Array) -> DualEncoderOutput:
    """`__call__` on precomputed encoder states (a frozen encoder); `init` through this
    creates the head parameters only.

    Args:
      query_hidden: [B, n, H], query_mask: [B, n]; doc_hidden: [B * K, m, H], doc_mask:
        [B * K, m].
    """
    return self._with_lite(self.encode_hidden("query", query_hidden, query_mask),
                           self.encode_hidden("doc", doc_hidden, doc_mask))

  def _with_lite(self, q: Encoded, d: Encoded) -> DualEncoderOutput:
    lite = None
    if self.lite_scorer is not None:
      b, c = q.vectors.shape[0], d.vectors.shape[0]
      if c % b:
        raise ValueError(f"LITE needs K documents per query: {c} documents for {b} queries")
      if c == b:
        lite = self.lite_scores(q, d)
      else:
        grouped = jax.tree_util.tree_map(lambda x: x.reshape((b, c // b) + x.shape[1:]), d)
        lite = self.lite_scores(q, grouped)
    return DualEncoderOutput(query=q, doc=d, lite=lite)


def init_dual_encoder(model: DualEncoder, rng: jax.Array, *, query_length: int,
                      doc_length: int) -> Any:
  """All parameters of `model` (encoder(s) and every head), still boxed with their logical
  axis names (use `nn.meta.unbox` for plain arrays, `nn.get_partition_spec` for specs)."""
  q = jnp.ones((1, query_length), jnp.int32)
  d = jnp.ones((1, doc_length), jnp.int32)
  return model.init(rng, q, q.astype(bool), d, d.astype(bool))["params"]


def insert_encoder_params(params: Any, encoder_params: Any, *,
                          towers: tuple[str, ...] = ("encoder", "query_encoder",
                                                     "doc_encoder")) -> dict[str, Any]:
  """Replaces the encoder subtree(s) of DualEncoder / CrossEncoder params with pretrained ones.

  Shapes must match exactly (a clear error names the first mismatch); head parameters are
  kept. Works on unboxed params; boxed (LogicallyPartitioned) leaves are replaced by the
  pretrained values with their metadata kept. A pretrained BERT `pooler` the model's encoder
  does not have (`add_pooler=False`) is dropped; any other extra or missing name is an error.
  """
  params = flax.core.unfreeze(params)
  present = [t for t in towers if t in params]
  if not present:
    raise ValueError(f"no encoder subtree among {towers} in params (keys: {sorted(params)})")
  for tower in present:
    new = dict(encoder_params)
    if "pooler" in new and "pooler" not in params[tower]:
      del new["pooler"]
    params[tower] = _replace_like(params[tower], new, path=tower)
  return params


def insert_pretrained_params(params: Any, pretrained: dict[str, Any]) -> dict[str, Any]:
  """`insert_encoder_params` with `pretrained["encoder"]`; every other subtree of `pretrained`
  (a ColBERT checkpoint's `token_projection`) replaces the model's own, which must exist with
  the same shapes."""
  params = insert_encoder_params(params, pretrained["encoder"])
  for name, subtree in pretrained.items():
    if name == "encoder":
      continue
    if name not in params:
      raise ValueError(f"the checkpoint has {name!r}, the model does not (configure the "
                       "DualEncoder as the checkpoint, e.g. with pylate_layout.colbert_module)")
    params[name] = _replace_like(params[name], subtree, path=name)
  return params


def _replace_like(old: Any, new: Any, *, path: str) -> Any:
  if isinstance(old, dict):
    if not isinstance(new, dict) or set(old) != set(new):
      missing = sorted(set(old) - set(new or {})) if isinstance(new, dict) else "all"
      extra = sorted(set(new) - set(old)) if isinstance(new, dict) else []
      raise ValueError(f"pretrained params do not match the model at {path!r}: missing "
                       f"{missing}, unexpected {extra}")
    return {k: _replace_like(old[k], new[k], path=f"{path}/{k}") for k in old}
  value = old.unbox() if isinstance(old, nn.meta.AxisMetadata) else old
  if tuple(value.shape) != tuple(jnp.shape(new)):
    raise ValueError(f"pretrained param {path!r} has shape {tuple(jnp.shape(new))}, the model "
                     f"expects {tuple(value.shape)}")
  new = jnp.asarray(new, value.dtype)
  return old.replace_boxed(new) if isinstance(old, nn.meta.AxisMetadata) else new


def pack_pair(q_ids: jax.Array, q_mask: jax.Array, d_ids: jax.Array, d_mask: jax.Array, *,
              max_length: int, skip_doc_prefix: int = 0, sep_id: int | None = None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Concatenates each query with its document for a cross-encoder.

  Real tokens must form a prefix of each row (as the vocabularies produce). The result is
  the query's real tokens, then `sep_id` if given, then the document's real tokens from
  `skip_doc_prefix` on, truncated to `max_length`; when truncation cuts the document, its
  last real token (the closing [SEP] / EOS) is kept in the final position. With the
  project's vocabularies the query already ends in a separator: BERT's [CLS] q [SEP] plus
  [CLS] d [SEP] with `skip_doc_prefix=1` gives [CLS] q [SEP] d [SEP]; T5's q </s> d </s>
  needs nothing extra.

  Args:
    q_ids, q_mask: [B, n]; d_ids, d_mask: [B, m].
  Returns:
    (ids [B, max_length] int32, mask [B, max_length] bool, token_type_ids [B, max_length]
    int32: 0 on the query part (and the separator), 1 on the document part).
  """
  sep = 0 if sep_id is None else 1
  q_len = jnp.sum(q_mask.astype(jnp.int32), axis=-1, keepdims=True)  # [B, 1]
  d_len = jnp.maximum(jnp.sum(d_mask.astype(jnp.int32), axis=-1, keepdims=True)
                      - skip_doc_prefix, 0)
  t = jnp.arange(max_length)[None, :]  # [1, T]
  head = q_len + sep  # tokens before the document
  total = jnp.minimum(head + d_len, max_length)
  in_query = t < q_len
  d_pos = jnp.clip(t - head + skip_doc_prefix, 0, d_ids.shape[1] - 1)
  truncated = (head + d_len > max_length) & (d_len > 0) & (head < max_length)
  last_doc = jnp.clip(skip_doc_prefix + d_len - 1, 0, d_ids.shape[1] - 1)
  d_pos = jnp.where(truncated & (t == max_length - 1), last_doc, d_pos)
  q_pos = jnp.broadcast_to(jnp.clip(t, 0, q_ids.shape[1] - 1), d_pos.shape)
  ids = jnp.where(in_query, jnp.take_along_axis(q_ids, q_pos, axis=1),
                  jnp.take_along_axis(d_ids, d_pos, axis=1))
  if sep_id is not None:
    ids = jnp.where(t == q_len, sep_id, ids)
  mask = t < total
  ids = jnp.where(mask, ids, 0).astype(jnp.int32)
  types = jnp.where(mask & (t >= head), 1, 0).astype(jnp.int32)
  return ids, mask, types


class CrossEncoder(nn.Module):
  """Scores a packed (query, document) sequence: encoder -> pool -> [BERT pooler] -> linear.

  Attributes:
    encoder_config: T5Config or BertConfig (BERT with `add_pooler=True` for `bert_pooler`).
    pooling: "first" (BERT [CLS]) | "mean" | "max".
    bert_pooler: apply BERT's tanh pooler to the first token (as Hugging Face
      BertForSequenceClassification does); needs a BertConfig with add_pooler=True.
    dropout_rate: dropout before the score layer (training only).
  """
  encoder_config: configs.EncoderConfig
  pooling: str = "first"
  bert_pooler: bool = False
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               token_type_ids: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """input_ids, attention_mask, token_type_ids: [B, L] -> scores [B] float32."""
    encoder = configs.build_encoder(self.encoder_config, name="encoder")
    mask = attention_mask.astype(bool)
    if token_type_ids is not None:
      if not isinstance(self.encoder_config, configs.bert_lib.BertConfig):
        raise ValueError("token_type_ids are only used by BERT encoders")
      hidden = encoder(input_ids, mask, token_type_ids, deterministic=deterministic)
    else:
      hidden = encoder(input_ids, mask, deterministic=deterministic)
    if self.bert_pooler:
      pooled = encoder.pool(hidden).astype(jnp.float32)
    else:
      pooled = pool(hidden, mask, self.pooling)
    pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
    score = common.DenseGeneral(features=(1,), kernel_axes=(sharding.EMBED, None),
                                use_bias=True, kernel_init=common.normal_init(0.02),
                                name="score")(pooled)
    return score[:, 0]
