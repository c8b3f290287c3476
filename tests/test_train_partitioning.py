"""Mesh construction, logical-to-mesh shardings, sharded init and global batches (8 devices)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from aligner_jax import partitioning
from aligner_jax import sharding
from aligner_jax.train import optim
from aligner_jax.train.state import TrainState


class _Mlp(nn.Module):
  """Two logically annotated matrices and a bias: enough to see every sharding rule act."""

  @nn.compact
  def __call__(self, x):
    wi = self.param("wi", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (sharding.EMBED, sharding.MLP)), (16, 256))
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, (sharding.MLP,)),
                   (256,))
    wo = self.param("wo", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), (sharding.MLP, sharding.EMBED)), (256, 16))
    return jnp.tanh(x @ wi + b) @ wo


def test_mesh_shape_and_axes():
  mesh = partitioning.make_mesh(2)
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  assert dict(partitioning.make_mesh(1).shape) == {"data": 8, "model": 1}
  assert dict(partitioning.make_mesh(8).shape) == {"data": 1, "model": 8}


@pytest.mark.parametrize("bad", [0, 3, 16])
def test_mesh_rejects_partitions_not_dividing_devices(bad):
  with pytest.raises(ValueError, match=f"NUM_PARTITIONS={bad}"):
    partitioning.make_mesh(bad)


@pytest.mark.parametrize("opt", ["adamw", "adafactor"])
def test_sharded_init_places_params_and_optimizer_state(opt):
  part = partitioning.Partitioner(2)
  tx = optim.make_optimizer(opt, learning_rate=optim.constant(value=1e-3))
  x = jnp.zeros((1, 16))

  def init(rng):
    return TrainState.create(nn.unbox(_Mlp().init(rng, x)["params"]), tx)

  def specs(abstract):
    param_specs = nn.get_partition_spec(
        jax.eval_shape(lambda r: _Mlp().init(r, x)["params"], jax.random.key(0)))
    return TrainState(step=P(), params=param_specs, tx=tx,
                      opt_state=partitioning.mirror_logical_specs(
                          abstract.opt_state, abstract.params, param_specs))

  state, shardings = part.init(init, jax.random.key(0), specs)
  assert state.params["wi"].sharding.spec == P(None, "model")
  assert state.params["wo"].sharding.spec == P("model", None)
  assert state.params["b"].sharding.spec == P("model")
  # Every shard of "wi" holds half of its columns: the full matrix never sits on one device.
  assert state.params["wi"].addressable_shards[0].data.shape == (16, 128)
  # Values equal an unsharded init.
  ref = _Mlp().init(jax.random.key(0), x)["params"]
  np.testing.assert_allclose(np.asarray(state.params["wi"]), np.asarray(nn.unbox(ref)["wi"]))
  leaves = jax.tree.leaves(state.opt_state)
  specs_seen = {leaf.sharding.spec for leaf in leaves}
  assert P(None, "model") in specs_seen or P("model") in specs_seen
  assert jax.tree.structure(shardings) == jax.tree.structure(state)


def test_mirror_specs_follow_factored_and_full_moments():
  params = {"layer": {"kernel": jnp.zeros((16, 256)), "scale": jnp.zeros((16,))}}
  param_specs = {"layer": {"kernel": P("embed", "mlp"), "scale": P("embed")}}
  adam = optax.adam(1e-3).init(params)
  specs = partitioning.mirror_logical_specs(adam, params, param_specs)
  assert specs[0].mu["layer"]["kernel"] == P("embed", "mlp")
  assert specs[0].count == P()
  factored = optax.adafactor(1e-3, min_dim_size_to_factor=8).init(params)
  fspecs = partitioning.mirror_logical_specs(factored, params, param_specs)
  rows_cols = {fspecs[0].v_row["layer"]["kernel"], fspecs[0].v_col["layer"]["kernel"]}
  assert rows_cols == {P("embed"), P("mlp")}


def test_shard_batch_builds_global_data_sharded_arrays():
  part = partitioning.Partitioner(2)
  batch = {"query_tokens": np.arange(8 * 5, dtype=np.int32).reshape(8, 5),
           "doc_tokens": np.arange(8 * 3 * 4, dtype=np.int32).reshape(8, 3, 4)}
  out = part.shard_batch(batch)
  for name, value in batch.items():
    assert out[name].shape == value.shape
    assert out[name].sharding.spec[0] == "data"
    np.testing.assert_array_equal(np.asarray(out[name]), value)
  # Four data shards of two rows each, replicated over the two model devices.
  assert {s.data.shape[0] for s in out["query_tokens"].addressable_shards} == {2}


def test_constraints_apply_inside_context():
  part = partitioning.Partitioner(2)
  fn = jax.jit(lambda x: sharding.constrain(x * 2, (sharding.BATCH, sharding.MLP)))
  with part.context():
    assert sharding.mesh_is_active()
    y = fn(jnp.ones((8, 4)))
  assert y.sharding.spec == P("data", "model")
  assert not sharding.mesh_is_active()
