"""Training a cross-encoder re-ranker (a distillation teacher) on each query's own candidates.

Batches are the retrieval batches (model_fns.py): query_tokens [B, n], doc_tokens [B, K, m]
with the positive in column 0 (K = 1 + N hard negatives), optional teacher_scores [B, K]. Each
(query, candidate) pair is packed into one sequence (`models.pack_pair`: BERT's
`[CLS] q [SEP] d [SEP]` with token types, T5's `q </s> d </s>`) and scored by the
`CrossEncoder`; the loss is the softmax cross-entropy of the positive among the K scores
(`one_hot_ce`, the usual cross-encoder fine-tuning on hard negatives), or any distillation loss
of `aligner_jax.losses` against teacher scores.

`candidate_scores` is shared with the teacher-scoring job (teacher_job.py), so a teacher sees
exactly the packing it was trained on.
"""

from typing import Any

import jax
import jax.numpy as jnp

from aligner_jax import losses
from aligner_jax import models
from aligner_jax.train import contracts
from aligner_jax.train import model_fns


def candidate_scores(module: models.CrossEncoder, params: Any, q_ids: jax.Array,
                     d_ids: jax.Array, *, max_length: int, skip_doc_prefix: int,
                     pad_id: int = 0, rng: jax.Array | None = None) -> jax.Array:
  """Cross-encoder scores of each query against its candidates.

  Args:
    module, params: the CrossEncoder and its params.
    q_ids: [B, n] framed query ids (padding = pad_id).
    d_ids: [B, K, m] framed candidate ids.
    max_length: length of a packed pair.
    skip_doc_prefix: framing tokens dropped from the front of each document (BERT's [CLS]: 1).
    rng: dropout key (training); None = deterministic.
  Returns:
    [B, K] float32 scores (padding candidates get a score too: mask them).
  """
  b, k, m = d_ids.shape
  q = jnp.repeat(q_ids, k, axis=0)  # [B * K, n]
  d = d_ids.reshape(b * k, m)
  ids, mask, types = models.pack_pair(q, q != pad_id, d, d != pad_id, max_length=max_length,
                                      skip_doc_prefix=skip_doc_prefix)
  if not isinstance(module.encoder_config, models.BertConfig):
    types = None  # only BERT has token types
  rngs = {} if rng is None else {"dropout": rng}
  scores = module.apply({"params": params}, ids, mask, types, deterministic=rng is None,
                        rngs=rngs)
  return scores.reshape(b, k)


class CrossEncoderModel(contracts.TrainableModel):
  """What the trainer optimises for a cross-encoder (see the module docstring).

  Args:
    module: the CrossEncoder (gin: `CrossEncoder`, its encoder config from the model file).
    max_length: packed pair length (e.g. query length + document length - 1 for BERT).
    skip_doc_prefix: document framing tokens dropped when packing (BERT 1, T5 0).
    loss: "one_hot_ce" (labels only) or a distillation loss name of `aligner_jax.losses`.
    pad_id: the vocabulary's padding id.
    loss_kwargs: hyper-parameters of the loss (e.g. {"temperature": 1.0}).
  """

  def __init__(self, module: models.CrossEncoder, *, max_length: int, skip_doc_prefix: int = 1,
               loss: str = "one_hot_ce", pad_id: int = 0,
               loss_kwargs: dict[str, Any] | None = None):
    self.module = module
    self.max_length = max_length
    self.skip_doc_prefix = skip_doc_prefix
    self.loss = loss
    self.pad_id = pad_id
    self.loss_kwargs = dict(loss_kwargs or {})
    self.loss_function = losses.get_loss(loss, **self.loss_kwargs)

  def init_params(self, rng: jax.Array, batch: dict[str, Any]) -> Any:
    ids = jnp.ones((1, self.max_length), jnp.int32)
    types = None if not isinstance(self.module.encoder_config, models.BertConfig) else ids * 0
    return self.module.init(rng, ids, ids.astype(bool), types)["params"]

  def load_initial_params(self, path: str, params: Any) -> Any:
    """`params` with the encoder replaced by the checkpoint at `path` (HF, T5X or orbax); the
    score layer keeps its initialisation."""
    return models.insert_encoder_params(params, models.load_initial_params(path))

  def loss_fn(self, params, batch, *, rng, train):
    d_ids = batch["doc_tokens"]
    b, k, _ = d_ids.shape
    scores = candidate_scores(self.module, params, batch["query_tokens"], d_ids,
                              max_length=self.max_length, skip_doc_prefix=self.skip_doc_prefix,
                              pad_id=self.pad_id, rng=rng if train else None)
    valid = jnp.any(d_ids != self.pad_id, axis=-1)
    labels = jnp.zeros((b, k), jnp.float32).at[:, 0].set(1.0)
    if self.loss == "one_hot_ce":
      teacher = jnp.zeros_like(scores)
    else:
      teacher = model_fns.teacher_scores(batch, self.loss)
    loss = self.loss_function(teacher, scores, labels, mask=valid)
    return loss, model_fns.rank_metrics(scores, labels, valid)
