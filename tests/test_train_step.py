"""The train step: one update per call, gradient accumulation, metrics, donation, dropout keys."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aligner_jax import partitioning
from aligner_jax import sharding
from aligner_jax.train import optim
from aligner_jax.train import trainer as trainer_lib


class _Regressor(nn.Module):
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train):
    w = self.param("w", nn.with_logical_partitioning(
        nn.initializers.normal(0.5), (sharding.EMBED, sharding.MLP)), (6, 8))
    h = sharding.constrain(jnp.tanh(x @ w), (sharding.BATCH, sharding.MLP))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h.sum(-1)


class _Model:
  """Row-mean squared error: the loss of a batch is the mean of its rows' losses."""

  def __init__(self, dropout=0.0):
    self.net = _Regressor(dropout)

  def init_params(self, rng, batch):
    return self.net.init(rng, batch["x"], train=False)["params"]

  def loss_fn(self, params, batch, *, rng, train):
    pred = self.net.apply({"params": params}, batch["x"], train=train,
                          rngs={"dropout": rng} if train else {})
    err = pred - batch["y"]
    return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}


def _batches(n, size=16):
  rng = np.random.RandomState(0)
  return [{"x": rng.randn(size, 6).astype(np.float32), "y": rng.randn(size).astype(np.float32)}
          for _ in range(n)]


def _run(model, *, num_partitions=1, num_microbatches=1, steps=3, optimizer="adamw"):
  lr = optim.constant(value=0.05)
  trainer = trainer_lib.Trainer(
      model, partitioner=partitioning.Partitioner(num_partitions),
      optimizer=optim.make_optimizer(optimizer, learning_rate=lr, clip_norm=None),
      learning_rate_fn=lr, num_microbatches=num_microbatches)
  batches = _batches(steps)
  state = trainer.init_state(batches[0])
  history = []
  for batch in batches:
    state, metrics = trainer.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


def test_step_counts_updates_and_reports_metrics():
  state, history = _run(_Model())
  assert int(state.step) == 3
  assert set(history[0]) == {"loss", "mae", "grad_norm", "learning_rate"}
  assert history[0]["learning_rate"] == pytest.approx(0.05)
  assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("num_microbatches", [4])
def test_gradient_accumulation_equals_the_full_batch_update(num_microbatches):
  full, full_hist = _run(_Model())
  accum, accum_hist = _run(_Model(), num_microbatches=num_microbatches)
  np.testing.assert_allclose(np.asarray(accum.params["w"]), np.asarray(full.params["w"]),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([h["loss"] for h in accum_hist], [h["loss"] for h in full_hist],
                             rtol=1e-5)


def test_microbatches_must_divide_the_batch():
  with pytest.raises(ValueError, match="num_microbatches=3"):
    _run(_Model(), num_microbatches=3)


def test_dropout_is_deterministic_per_step_and_independent_of_partitioning():
  _, a = _run(_Model(dropout=0.3), num_partitions=1)
  _, b = _run(_Model(dropout=0.3), num_partitions=2)
  _, c = _run(_Model(dropout=0.0), num_partitions=1)
  np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-5)
  assert not np.allclose([h["loss"] for h in a], [h["loss"] for h in c])


def test_eval_step_has_no_dropout():
  model = _Model(dropout=0.5)
  lr = optim.constant(value=0.0)
  trainer = trainer_lib.Trainer(model, partitioner=partitioning.Partitioner(2),
                                optimizer=optim.make_optimizer("adamw", learning_rate=lr),
                                learning_rate_fn=lr)
  batch = _batches(1)[0]
  state = trainer.init_state(batch)
  got = trainer.evaluate(state.params, iter([batch, batch]))
  params = jax.device_get(state.params)
  pred = np.tanh(batch["x"] @ params["w"]).sum(-1)
  assert got["loss"] == pytest.approx(float(np.mean((pred - batch["y"]) ** 2)), rel=1e-5)
