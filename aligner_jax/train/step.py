"""Train and eval step functions (module level; the trainer jits them with shardings).

A model here is any object with
  `loss_fn(params, batch, *, rng, train) -> (loss [] float32, metrics {name: [] float32})`
(see `aligner_jax.train.model_fns`). Metrics are per-step means over the global batch.

Gradient accumulation: with `num_microbatches = A` the global batch `[B, ...]` is split into
A micro-batches of B/A rows, taking every A-th row so that each micro-batch stays spread
over all data-parallel devices; gradients and metrics are averaged over micro-batches and
one optimizer update is applied. In-batch negatives are then those of the micro-batch.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from aligner_jax import sharding
from aligner_jax.train.contracts import TrainableModel
from aligner_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def _microbatches(batch: Batch, num_microbatches: int) -> dict[str, jax.Array]:
  """[B, ...] -> [A, B/A, ...], micro-batch a = rows a, a + A, a + 2A, ..."""
  out = {}
  for name, x in batch.items():
    b = x.shape[0]
    if b % num_microbatches:
      raise ValueError(f"batch size {b} is not divisible by num_microbatches={num_microbatches}.")
    x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    out[name] = sharding.constrain(x, (None, sharding.BATCH) + (None,) * (x.ndim - 2))
  return out


def train_step(state: TrainState, batch: Batch, *, model: TrainableModel, seed: int,
               learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on one global batch.

  Args:
    state: the train state (donated by the trainer).
    batch: global batch arrays, leading axis B sharded over "data".
    model: provides `loss_fn` (see module docstring).
    seed: the run's seed; the dropout key is fold_in(key(seed), step).
    learning_rate_fn: the schedule, logged as `learning_rate`.
    num_microbatches: gradient accumulation factor A (B % A == 0).

  Returns:
    (new state, metrics including loss, grad_norm and learning_rate).
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)

  if num_microbatches == 1:
    (loss, metrics), grads = grad_fn(state.params, batch, rng=rng, train=True)
    metrics = dict(metrics, loss=loss)
  else:
    def accumulate(carry, xs):
      index, micro = xs
      grad_sum, metric_sum = carry
      (loss, metrics), grads = grad_fn(
          state.params, micro, rng=jax.random.fold_in(rng, index), train=True)
      metrics = dict(metrics, loss=loss)
      return (jax.tree.map(jnp.add, grad_sum, grads),
              jax.tree.map(jnp.add, metric_sum, metrics)), None

    micro = _microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(
        lambda: grad_fn(state.params, first, rng=rng, train=True)[0][1])
    zeros_metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in metric_shapes.items()}
    zeros_metrics["loss"] = jnp.zeros((), jnp.float32)
    zeros_grads = jax.tree.map(jnp.zeros_like, state.params)
    (grads, metrics), _ = jax.lax.scan(
        accumulate, (zeros_grads, zeros_metrics),
        (jnp.arange(num_microbatches), micro))
    grads = jax.tree.map(lambda g: g / num_microbatches, grads)
    metrics = jax.tree.map(lambda m: m / num_microbatches, metrics)

  new_state = state.apply_gradients(grads)
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
  return new_state, metrics


def eval_step(params: Any, batch: Batch, *, model: TrainableModel) -> dict[str, jax.Array]:
  """Loss and metrics of `params` on one global batch, without dropout."""
  loss, metrics = model.loss_fn(params, batch, rng=None, train=False)
  return dict(metrics, loss=loss)
