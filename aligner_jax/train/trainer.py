"""The trainer: partitions the train state, jits the step functions, and runs the loop.

The model contract is `aligner_jax.train.contracts.TrainableModel`:
  `init_params(rng, batch) -> params` (boxed with logical axis names, `nn.Partitioned`),
  `loss_fn(params, batch, *, rng, train) -> (loss, metrics)`.
The step functions themselves live in `aligner_jax.train.step`; this class only decides
shardings (through a `Partitioner`), compiles, and iterates.
"""

from collections.abc import Callable, Iterator, Mapping
import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from aligner_jax import partitioning
from aligner_jax.train import contracts
from aligner_jax.train import step as step_lib
from aligner_jax.train.state import TrainState

HostBatch = Mapping[str, np.ndarray]


def count_tokens(batch: HostBatch) -> int:
  """Non-padding tokens (id != 0) in every `*_tokens` feature of a host batch."""
  return int(sum(np.count_nonzero(v) for k, v in batch.items() if k.endswith("tokens")))


class Trainer:
  """Owns the sharded train state's layout and the compiled step functions."""

  def __init__(self, model: contracts.TrainableModel, *, partitioner: partitioning.Partitioner,
               optimizer: optax.GradientTransformation,
               learning_rate_fn: Callable[[jax.Array], jax.Array],
               seed: int = 0, num_microbatches: int = 1):
    self.model = model
    self.partitioner = partitioner
    self.optimizer = optimizer
    self.seed = seed
    self.state_shardings = None
    self._train_step = functools.partial(
        step_lib.train_step, model=model, seed=seed, learning_rate_fn=learning_rate_fn,
        num_microbatches=num_microbatches)
    self._eval_step = functools.partial(step_lib.eval_step, model=model)
    self._jitted_train = None
    self._jitted_eval = None

  # -- state -----------------------------------------------------------------------------

  def _init_fn(self, example: HostBatch) -> Callable[[jax.Array], TrainState]:
    def init(rng):
      params = nn.unbox(self.model.init_params(rng, example))
      return TrainState.create(params, self.optimizer)
    return init

  def _logical_specs(self, example: HostBatch, abstract_state: TrainState) -> TrainState:
    boxed = jax.eval_shape(self.model.init_params, jax.random.key(0), example)
    param_specs = nn.get_partition_spec(boxed)
    return TrainState(
        step=jax.sharding.PartitionSpec(),
        params=param_specs,
        opt_state=partitioning.mirror_logical_specs(
            abstract_state.opt_state, abstract_state.params, param_specs),
        tx=self.optimizer)

  def init_state(self, host_batch: HostBatch) -> TrainState:
    """A fresh train state, initialised directly into its shardings.

    Args:
      host_batch: any batch of the training data (only shapes and dtypes matter).
    """
    example = {k: np.zeros((1,) + np.shape(v)[1:], np.asarray(v).dtype)
               for k, v in host_batch.items()}
    init = self._init_fn(example)
    state, self.state_shardings = self.partitioner.init(
        init, jax.random.key(self.seed),
        functools.partial(self._logical_specs, example))
    return state

  def abstract_state(self, host_batch: HostBatch) -> TrainState:
    """`ShapeDtypeStruct`s with shardings for every leaf (the restore target)."""
    example = {k: np.zeros((1,) + np.shape(v)[1:], np.asarray(v).dtype)
               for k, v in host_batch.items()}
    init = self._init_fn(example)
    abstract = jax.eval_shape(init, jax.random.key(self.seed))
    self.state_shardings = self.partitioner.logical_to_sharding(
        self._logical_specs(example, abstract))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_shardings)

  def with_params(self, state: TrainState, params: Any) -> TrainState:
    """`state` with its parameters replaced by `params` (host arrays, the same on every host,
    or arrays already in place), put into the parameter shardings."""
    placed = jax.device_put(params, self.state_shardings.params)
    return state.replace(params=placed)

  # -- steps -----------------------------------------------------------------------------

  def _compile(self, batch: Mapping[str, jax.Array]) -> None:
    batch_shardings = {k: v.sharding for k, v in batch.items()}
    replicated = self.partitioner.replicated()
    self._jitted_train = jax.jit(
        self._train_step,
        in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=(0,))
    self._jitted_eval = jax.jit(
        self._eval_step,
        in_shardings=(self.state_shardings.params, batch_shardings),
        out_shardings=replicated)

  def train_step(self, state: TrainState, host_batch: HostBatch
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update; `state` is donated (do not use it afterwards)."""
    batch = self.partitioner.shard_batch(host_batch)
    if self._jitted_train is None:
      self._compile(batch)
    with self.partitioner.context():
      return self._jitted_train(state, batch)

  def eval_step(self, params: Any, host_batch: HostBatch) -> dict[str, jax.Array]:
    batch = self.partitioner.shard_batch(host_batch)
    if self._jitted_eval is None:
      self._compile(batch)
    with self.partitioner.context():
      return self._jitted_eval(params, batch)

  def evaluate(self, params: Any, batches: Iterator[HostBatch]) -> dict[str, float]:
    """Mean metrics over `batches` (every process must iterate the same number)."""
    sums, count = {}, 0
    for host_batch in batches:
      metrics = jax.device_get(self.eval_step(params, host_batch))
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + float(v)
      count += 1
    if not count:
      raise ValueError("evaluate() got no batches.")
    return {k: v / count for k, v in sums.items()}
