"""What the trainer optimises: a `DualEncoder` plus a scoring rule plus a loss.

Batches (from `aligner_jax.data.input_pipeline`, global batch B, N negatives per query):
  query_tokens   [B, n] int32
  doc_tokens     [B, 1 + N, m] int32   row 0 the positive, rows 1.. hard negatives
  teacher_scores [B, 1 + N] float32    only for distillation
Masks are `tokens != pad_id`; a candidate with no real token is padding and is masked out.

Two models, each a `contracts.TrainableModel`: `init_params(rng, batch)` (boxed params),
`loss_fn(params, batch, *, rng, train) -> (loss, metrics)` and
`load_initial_params(path, params)` (INITIAL_CHECKPOINT_PATH -> the encoder subtree):

  `RetrievalModel` -- the student is the dual encoder itself, scored with an ALIGNER alignment
    spec (`top_k:1`, `top_p:0.5`, ...; the token saliences of the encoder's SalienceHeads
    enter as u^q, u^d) or, with `alignment=None`, by the pooled single vectors' dot product.
    `loss="softmax_ce"`: ALIGNER §4.1 / GTR training -- every query against every document of
    the *global* batch (all positives and hard negatives, gathered across the data axis),
    one-hot on its own positive. Any other name is a loss of `aligner_jax.losses.get_loss`
    (distillation: `m3se`, `margin_mse`, `kl_distill`, ...; Menon et al.) applied to each
    query's own 1 + N candidates against `teacher_scores`.
  `LiteModel` -- LITE re-ranking: the encoder's `lite_scorer` scores each query's own
    candidates from their similarity matrices; the loss is any `get_loss` name (LITE App. A.2:
    `kl_distill`, `margin_mse`; `one_hot_ce` for training from labels only).

Metrics (means over the batch): `accuracy` (the positive ranks first among the scored
documents) and `mrr` (reciprocal rank of the positive).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from aligner_jax import losses
from aligner_jax import models
from aligner_jax import sharding
from aligner_jax.scoring import align_scores
from aligner_jax.scoring import align_scores_candidates
from aligner_jax.train import contracts

SOFTMAX_CE = "softmax_ce"


def rank_metrics(scores: jax.Array, labels: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """In-batch accuracy and MRR of the (first) positive.

  Args:
    scores: [B, C] float; labels: [B, C] {0,1} with one positive per row; valid: [B, C] bool.
  Returns:
    {"accuracy": [], "mrr": []} float32 means over the rows.
  """
  scores = jnp.where(valid, scores.astype(jnp.float32), -jnp.inf)
  positive = jnp.sum(jnp.where(labels > 0, scores, 0.0), axis=-1, keepdims=True)
  # Ties count against the positive, so a constant scorer does not look perfect.
  rank = 1 + jnp.sum((scores >= positive) & valid & (labels == 0), axis=-1)
  return {"accuracy": jnp.mean((rank == 1).astype(jnp.float32)),
          "mrr": jnp.mean(1.0 / rank.astype(jnp.float32))}


def token_hash(ids: jax.Array) -> jax.Array:
  """A 32-bit polynomial hash of each token sequence: ids [..., m] int -> [...] uint32.

  Equal sequences hash equal; distinct ones collide with probability ~2^-32 per pair.
  """
  ids = ids.astype(jnp.uint32)
  powers = jnp.cumprod(jnp.full(ids.shape[-1:], 1000003, jnp.uint32))  # wraps mod 2^32
  return jnp.sum(ids * powers, axis=-1, dtype=jnp.uint32)


def _candidate_labels(b: int, k: int) -> jax.Array:
  """[B, K] one-hot on candidate 0 (the positive)."""
  return jnp.zeros((b, k), jnp.float32).at[:, 0].set(1.0)


def teacher_scores(batch: dict[str, jax.Array], loss: str) -> jax.Array:
  """The batch's teacher_scores [B, K] float32; a clear error naming `loss` when absent."""
  if "teacher_scores" not in batch:
    raise ValueError(f"LOSS={loss!r} distils from teacher scores, but the batches have no "
                     "'teacher_scores' feature (choose a task with teacher scores, or "
                     f"LOSS='{SOFTMAX_CE}' / 'one_hot_ce').")
  return batch["teacher_scores"].astype(jnp.float32)


class _DualEncoderModelBase(contracts.TrainableModel):
  """Shared plumbing: init, masks, encoding, initial checkpoints."""

  def __init__(self, module: models.DualEncoder, *, loss: str, pad_id: int = 0,
               loss_kwargs: dict[str, Any] | None = None):
    self.module = module
    self.loss = loss
    self.pad_id = pad_id
    self.loss_kwargs = dict(loss_kwargs or {})
    if loss != SOFTMAX_CE:
      losses.get_loss(loss, **self.loss_kwargs)  # fail at construction on a bad name

  def init_params(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
    return models.init_dual_encoder(self.module, rng,
                                    query_length=batch["query_tokens"].shape[-1],
                                    doc_length=batch["doc_tokens"].shape[-1])

  def load_initial_params(self, path: str, params: Any) -> Any:
    """`params` with the encoder subtree(s) replaced by the checkpoint at `path` (HF, T5X or
    orbax; a ColBERT directory's token projection too); the other leaves are returned as they
    are."""
    return models.insert_pretrained_params(params, models.load_pretrained_params(path))

  def _encode(self, params, batch, *, rng, train):
    """-> (queries Encoded [B, n, h], documents Encoded [B, K, m, h], candidate valid [B, K])."""
    q_ids = batch["query_tokens"]
    d_ids = batch["doc_tokens"]
    b, k, m = d_ids.shape
    q_rngs, d_rngs = ({"dropout": r} for r in jax.random.split(rng)) if train else ({}, {})
    variables = {"params": params}
    q = self.module.apply(variables, q_ids, q_ids != self.pad_id, deterministic=not train,
                          rngs=q_rngs, method=models.DualEncoder.encode_queries)
    flat = d_ids.reshape(b * k, m)
    d = self.module.apply(variables, flat, flat != self.pad_id, deterministic=not train,
                          rngs=d_rngs, method=models.DualEncoder.encode_documents)
    d = jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), d)
    valid = jnp.any(d_ids != self.pad_id, axis=-1)
    return q, d, valid

  def _check_batch(self, batch) -> None:
    """Fails before any encoding when a distillation loss has no teacher scores."""
    if self.loss not in (SOFTMAX_CE, "one_hot_ce"):
      teacher_scores(batch, self.loss)

  def _distill(self, student, batch, valid):
    """A `get_loss` loss of student scores [B, K] against the teacher on own candidates."""
    b, k = student.shape
    labels = _candidate_labels(b, k)
    fn = losses.get_loss(self.loss, **self.loss_kwargs)
    teacher = (jnp.zeros_like(student) if self.loss == "one_hot_ce"
               else teacher_scores(batch, self.loss))
    loss = fn(teacher, student, labels, mask=valid)
    return loss, rank_metrics(student, labels, valid)


class RetrievalModel(_DualEncoderModelBase):
  """ALIGNER (alignment spec) or single-vector dual encoder (`alignment=None`); see module doc.

  Args:
    module: the DualEncoder (token projection / saliences / pooling configured on it).
    alignment: an `Alignment` spec string, or None for the pooled dot product; a sequence of
      specs trains every one of them on the same encodings (the in-batch loss is their mean,
      the metrics are the first one's), so that each alignment a task may adapt to at test
      time has been trained.
    loss: "softmax_ce" (in-batch contrastive) or a `losses.get_loss` name (distillation).
    temperature: τ of the in-batch softmax (scores of normalised vectors lie in [-1, 1]).
    score_scale: student scores are multiplied by this before a distillation loss, to meet
      the teacher's scale.
    loss_kwargs: hyper-parameters of a distillation loss (e.g. {"gamma0": 0.0}).
  """

  def __init__(self, module: models.DualEncoder, *,
               alignment: str | Sequence[str] | None, loss: str, temperature: float = 0.05,
               score_scale: float = 1.0, pad_id: int = 0,
               loss_kwargs: dict[str, Any] | None = None):
    super().__init__(module, loss=loss, pad_id=pad_id, loss_kwargs=loss_kwargs)
    specs = [alignment] if alignment is None or isinstance(alignment, str) else list(alignment)
    if not specs or (len(specs) > 1 and None in specs):
      raise ValueError(f"RetrievalModel: alignment must be a spec, None or a non-empty list "
                       f"of specs, got {alignment!r}")
    self.alignments = specs
    self.alignment = specs[0]
    self.temperature = temperature
    self.score_scale = score_scale

  def _in_batch_scores(self, q, d, valid, alignment):
    """Every query against every document of the global batch: [B, B * K]."""
    b, k = valid.shape
    flat = jax.tree.map(lambda x: x.reshape((b * k,) + x.shape[2:]), d)
    # Gather the documents across the data axis: each query sees the whole global batch.
    gathered = jax.tree.map(
        lambda x: sharding.constrain(x, (sharding.CANDIDATES,) + (None,) * (x.ndim - 1)), flat)
    if alignment is None:
      scores = jnp.einsum("bh,ch->bc", q.pooled, gathered.pooled)
    else:
      scores = align_scores(q.vectors, q.mask, gathered.vectors, gathered.mask, alignment,
                            q_salience=q.salience, d_salience=gathered.salience)
    return sharding.constrain(scores, (sharding.BATCH, sharding.CANDIDATES))

  def _candidate_scores(self, q, d):
    """Each query against its own candidates: [B, K]."""
    if self.alignment is None:
      return jnp.einsum("bh,bkh->bk", q.pooled, d.pooled)
    return align_scores_candidates(q.vectors, q.mask, d.vectors, d.mask, self.alignment,
                                   q_salience=q.salience, d_salience=d.salience)

  def loss_fn(self, params, batch, *, rng, train):
    self._check_batch(batch)
    q, d, valid = self._encode(params, batch, rng=rng, train=train)
    if self.loss != SOFTMAX_CE:
      return self._distill(self.score_scale * self._candidate_scores(q, d), batch, valid)
    b, k = valid.shape
    # Query i's positive is document i * K of the flattened global batch.
    labels = jax.nn.one_hot(jnp.arange(b) * k, b * k, dtype=jnp.float32)
    # Another copy of a query's positive elsewhere in the batch (e.g. someone's hard negative)
    # is not a negative for that query: it is masked out like padding.
    doc_hash = token_hash(batch["doc_tokens"]).reshape(b * k)
    copy_of_positive = (doc_hash[None, :] == doc_hash[::k][:, None]) & (labels == 0)
    mask = valid.reshape(1, b * k) & ~copy_of_positive
    all_scores = [self._in_batch_scores(q, d, valid, a) for a in self.alignments]
    loss = sum(losses.softmax_ce(s, labels, temperature=self.temperature, mask=mask)
               for s in all_scores) / len(all_scores)
    return loss, rank_metrics(all_scores[0], labels, mask)


class LiteModel(_DualEncoderModelBase):
  """LITE re-ranker: the DualEncoder's `lite_scorer` on each query's own candidates.

  Args:
    module: a DualEncoder with `lite_scorer` set.
    loss: a `losses.get_loss` name (`kl_distill`, `margin_mse`, `one_hot_ce`, ...).
  """

  def __init__(self, module: models.DualEncoder, *, loss: str, pad_id: int = 0,
               loss_kwargs: dict[str, Any] | None = None):
    if module.lite_scorer is None:
      raise ValueError("LiteModel needs a DualEncoder with a lite_scorer")
    if loss == SOFTMAX_CE:
      raise ValueError("LITE re-ranks each query's own candidates; use LOSS='one_hot_ce' for "
                       "training from labels, or a distillation loss")
    super().__init__(module, loss=loss, pad_id=pad_id, loss_kwargs=loss_kwargs)

  def loss_fn(self, params, batch, *, rng, train):
    self._check_batch(batch)
    q, d, valid = self._encode(params, batch, rng=rng, train=train)
    student = self.module.apply({"params": params}, q, d,
                                method=models.DualEncoder.lite_scores)
    return self._distill(student.astype(jnp.float32), batch, valid)
