"""A small deterministic AdamW loop for heads over cached vectors (the encoder stays frozen).

Objectives (`TrainConfig.objective`):
  "in_batch"       softmax CE of each query over every document of the batch (its positive,
                   its BM25 negatives and the other queries' documents), ALIGNER/GTR training
  "group"          softmax CE over the query's own candidates only (1 positive + negatives)
  "distill:<loss>" a distillation loss of `aligner_jax.losses` (mse, margin_mse, m3se,
                   softmax_ce_distill, rankdistil_b, one_hot_ce) on fixed candidate lists with
                   teacher scores (batch key "teacher")
The step is one jitted function; batches are NumPy dicts from `repro.frozen.batches`.
Every `eval_every` steps `dev_fn(params)` (a number, higher is better, computed on held-out
*training* queries) is recorded and the best parameters are kept.
Regularisation besides AdamW's weight decay: `doc_token_dropout` hides each real document
token from the head with that probability at every training step (`drop_tokens`; the first
real token is always kept), the same way for every head kind -- for LITE / KNRM it is dropout
on the columns of the similarity matrix, for ColBERT on MaxSim's candidates, for the dual
encoder on its mean pool. Evaluation always sees every token.
"""

import dataclasses
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aligner_jax import losses
from aligner_jax.train import optim
from repro.frozen import heads


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings (AdamW with linear warm-up, then constant).

  Attributes:
    steps: optimisation steps.
    batch_size, num_negatives, negative_depth: queries per batch, BM25 negatives per query,
      drawn from the pool's first `negative_depth` entries (`batches.sample_batches`).
    learning_rate, weight_decay, warmup_steps, clip_norm: AdamW and its schedule.
    objective: see the module docstring.
    temperature: τ of the softmax objectives (cosine scores need a small τ).
    loss_hparams: extra hyper-parameters of a distillation loss (e.g. gamma0).
    eval_every: steps between dev evaluations (0 = only at the end).
    doc_token_dropout: probability of hiding a real document token during training
      (`drop_tokens`; 0 = off).
  """
  steps: int = 300
  batch_size: int = 16
  num_negatives: int = 3
  negative_depth: int = 30
  learning_rate: float = 1e-3
  weight_decay: float = 0.01
  warmup_steps: int = 20
  clip_norm: float | None = 1.0
  objective: str = "in_batch"
  temperature: float = 0.05
  loss_hparams: tuple[tuple[str, float], ...] = ()
  eval_every: int = 100
  doc_token_dropout: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.doc_token_dropout < 1.0:
      raise ValueError(f"doc_token_dropout must be in [0, 1), got {self.doc_token_dropout}")


def drop_tokens(mask: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """Hides each real token of `mask` [..., L] (bool) with probability `rate`.

  Padding stays padding and the first real token of every row is always kept, so no document
  becomes empty. Returns a bool mask of the same shape.
  """
  if rate <= 0.0:
    return mask
  keep = jax.random.uniform(rng, mask.shape) >= rate
  first = mask & (jnp.cumsum(mask, axis=-1) == 1)
  return (mask & keep) | first


def make_loss_fn(module: Any, head: heads.HeadConfig, config: TrainConfig
                 ) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
  """(params, batch) -> scalar loss for `config.objective`."""
  objective = config.objective
  if objective == "in_batch":
    def loss_fn(params, batch):
      b, k, m, h = batch["docs"].shape
      scores = heads.in_batch_scores(module, head, params, batch["query"], batch["query_mask"],
                                     batch["docs"].reshape(b * k, m, h),
                                     batch["doc_mask"].reshape(b * k, m))
      valid = jnp.broadcast_to(batch["cand_mask"].reshape(1, b * k), scores.shape)
      return losses.softmax_ce(scores, batch["in_batch_labels"], temperature=config.temperature,
                               mask=valid)
    return loss_fn
  if objective == "group":
    def loss_fn(params, batch):
      scores = heads.pair_scores(module, head, params, batch["query"], batch["query_mask"],
                                 batch["docs"], batch["doc_mask"])
      return losses.softmax_ce(scores, batch["labels"], temperature=config.temperature,
                               mask=batch["cand_mask"])
    return loss_fn
  if objective.startswith("distill:"):
    distill = losses.get_loss(objective.split(":", 1)[1], **dict(config.loss_hparams))

    def loss_fn(params, batch):
      scores = heads.pair_scores(module, head, params, batch["query"], batch["query_mask"],
                                 batch["docs"], batch["doc_mask"])
      return distill(batch["teacher"], scores, batch["labels"], mask=batch["cand_mask"])
    return loss_fn
  raise ValueError(f"unknown objective {objective!r}: 'in_batch', 'group' or 'distill:<loss>'")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  schedule = optim.warmup_constant(peak_value=config.learning_rate,
                                   warmup_steps=config.warmup_steps)
  return optim.make_optimizer("adamw", learning_rate=schedule,
                              weight_decay=config.weight_decay, clip_norm=config.clip_norm)


def make_step(loss_fn, optimizer, doc_token_dropout: float = 0.0):
  """The jitted train step (params, opt_state, batch, rng) -> (params, opt_state, loss);
  `rng` draws the document tokens `drop_tokens` hides (unused without dropout)."""

  def step(params, opt_state, batch, rng):
    if doc_token_dropout > 0.0:
      batch = {**batch, "doc_mask": drop_tokens(batch["doc_mask"], rng, doc_token_dropout)}
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _device_batch(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v) for k, v in batch.items()}


def train_head(module: Any, head: heads.HeadConfig, params: Any,
               batches: Iterable[dict[str, np.ndarray]], config: TrainConfig, *,
               dev_fn: Callable[[Any], float] | None = None,
               log: Callable[[str], None] = print,
               rng: jax.Array | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains `params` for `config.steps` steps on `batches`.

  `rng` seeds the token dropout (step t uses fold_in(rng, t)); default key 0.

  Returns:
    (the parameters with the best dev value -- the last ones without `dev_fn` --,
     history {"loss": [per step], "dev": [(step, value)], "best_step", "seconds"}).
  """
  if not jax.tree_util.tree_leaves(params):
    raise ValueError(f"the {head.kind} head has no parameters to train")
  loss_fn = make_loss_fn(module, head, config)
  optimizer = make_optimizer(config)
  opt_state = optimizer.init(params)
  step_fn = make_step(loss_fn, optimizer, config.doc_token_dropout)
  rng = jax.random.key(0) if rng is None else rng
  params = jax.tree_util.tree_map(jnp.array, params)  # own copies: the step donates them
  history: dict[str, Any] = {"loss": [], "dev": []}
  best = (-np.inf, None, 0)
  start = time.time()
  it = iter(batches)
  every = config.eval_every or config.steps
  for step in range(1, config.steps + 1):
    params, opt_state, loss = step_fn(params, opt_state, _device_batch(next(it)),
                                      jax.random.fold_in(rng, step))
    history["loss"].append(float(loss))
    if step % every == 0 or step == config.steps:
      msg = f"step {step}/{config.steps}: loss {float(loss):.4f}"
      if dev_fn is not None:
        value = float(dev_fn(params))
        history["dev"].append((step, value))
        msg += f", dev {value:.4f}"
        if value > best[0]:
          best = (value, jax.tree_util.tree_map(np.array, params), step)
      rate = step / max(time.time() - start, 1e-9)
      log(f"{msg} ({rate:.1f} steps/s, ETA {(config.steps - step) / rate:.0f}s)")
  history["seconds"] = time.time() - start
  if dev_fn is None:
    history["best_step"] = config.steps
    return jax.tree_util.tree_map(np.array, params), history
  history["best_step"] = best[2]
  return best[1], history
