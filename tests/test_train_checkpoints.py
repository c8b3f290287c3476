"""Orbax checkpoints of (train state, pipeline state): round trip, keep-N, async + donation."""

import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from aligner_jax import partitioning
from aligner_jax.train import checkpoints
from aligner_jax.train import optim
from aligner_jax.train.state import TrainState


def _state(part, seed=0):
  tx = optim.make_optimizer("adamw", learning_rate=optim.constant(value=1e-2))
  rng = np.random.RandomState(seed)
  params = {"w": jnp.asarray(rng.randn(8, 6), jnp.float32),
            "b": jnp.asarray(rng.randn(6), jnp.float32)}
  state = TrainState.create(params, tx)
  shardings = TrainState(
      step=part.replicated(), tx=tx,
      params={"w": NamedSharding(part.mesh, P(None, "model")), "b": part.replicated()},
      opt_state=jax.tree.map(lambda _: part.replicated(), state.opt_state))
  return jax.device_put(state, shardings), shardings


def _abstract(state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      state, shardings)


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_shardings_and_pipeline_position(tmp_path):
  part = partitioning.Partitioner(2)
  state, shardings = _state(part)
  ckpt = checkpoints.Checkpointer(str(tmp_path), period=5)
  assert ckpt.latest_step() is None
  assert not ckpt.save(3, state, {"pos": 3})  # not a multiple of the period
  assert ckpt.save(5, state, {"pos": 5, "epoch": 0, "nested": [1, 2]})
  ckpt.close()

  again = checkpoints.Checkpointer(str(tmp_path), period=5)
  assert again.latest_step() == 5
  restored, data = again.restore(5, _abstract(state, shardings))
  assert data == {"pos": 5, "epoch": 0, "nested": [1, 2]}
  _assert_trees_equal(restored, state)
  assert restored.params["w"].sharding.spec == P(None, "model")
  again.close()


def test_keeps_newest_n_and_force_saves_off_period(tmp_path):
  part = partitioning.Partitioner(1)
  state, _ = _state(part)
  ckpt = checkpoints.Checkpointer(str(tmp_path), period=2, keep=2)
  for step in range(1, 8):
    ckpt.save(step, state, {"pos": step})
  ckpt.save(7, state, {"pos": 7}, force=True)
  ckpt.close()
  assert checkpoints.Checkpointer(str(tmp_path), period=2).all_steps() == [6, 7]


def test_async_save_is_unaffected_by_later_donation(tmp_path):
  """The trainer donates the state right after saving; the checkpoint must hold the old values."""
  part = partitioning.Partitioner(2)
  state, shardings = _state(part)
  want = jax.device_get(state)
  ckpt = checkpoints.Checkpointer(str(tmp_path), period=1, async_save=True)
  ckpt.save(1, state, {"pos": 1})

  @jax.jit
  def bump(s):
    return jax.tree.map(lambda x: x + 1, s)

  bump_donating = jax.jit(bump, donate_argnums=(0,))
  for _ in range(3):
    state = bump_donating(state)
  ckpt.close()
  restored, _ = checkpoints.Checkpointer(str(tmp_path), period=1).restore(
      1, _abstract(want, shardings))
  _assert_trees_equal(restored, want)


def test_unfinished_temporary_checkpoints_are_ignored(tmp_path):
  part = partitioning.Partitioner(1)
  state, _ = _state(part)
  ckpt = checkpoints.Checkpointer(str(tmp_path), period=1)
  ckpt.save(1, state, {"pos": 1})
  ckpt.close()
  # What a kill in the middle of an orbax save leaves behind.
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1234" / "state")
  again = checkpoints.Checkpointer(str(tmp_path), period=1)
  assert again.latest_step() == 1
  again.close()


def test_rejects_non_positive_period(tmp_path):
  with pytest.raises(ValueError, match="CHECKPOINT_PERIOD"):
    checkpoints.Checkpointer(str(tmp_path), period=0)
