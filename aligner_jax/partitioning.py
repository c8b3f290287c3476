"""Partitioning: the device mesh, logical-to-mesh shardings, sharded init and global batches.

The mesh has the two axes of `aligner_jax.sharding.MESH_AXES`: "data" (the rest of the
devices) and "model" (`num_partitions` devices, the T5X `NUM_PARTITIONS`). Every sharding
comes from logical axis names through the one rules table `sharding.logical_axis_rules()`;
nothing here writes a raw `PartitionSpec` of mesh axes by hand.

Parameters are initialised directly into their shardings: `jax.eval_shape` gives the boxed
(logically annotated) parameter shapes, these become `NamedSharding`s, and the real
initialisation runs under `jax.jit(..., out_shardings=...)`, so full parameters never exist on
one host. Optimizer-state leaves inherit the sharding of the parameter they mirror.

Batches: every host holds the rows of the global batch that belong to its own devices (a
contiguous block, because the mesh lists devices process by process), and
`Partitioner.shard_batch` assembles the global `jax.Array`s from those host-local rows.
"""

from collections.abc import Callable, Mapping, Sequence
import contextlib
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from aligner_jax import sharding

Rules = Sequence[tuple[str, str | None]]


def make_mesh(num_partitions: int = 1, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "model") mesh: `num_partitions` devices model-parallel, the rest data-parallel.

  Devices are ordered so that the devices of one process are contiguous along "data": each
  host then feeds a contiguous block of the global batch.
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(
        f"NUM_PARTITIONS={num_partitions} must be >= 1 and divide the number of devices "
        f"({len(devices)}).")
  shape = (len(devices) // num_partitions, num_partitions)
  if devices[0].platform == "tpu":
    # Respect the physical torus so "model" neighbours are physical neighbours.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  else:
    grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(shape)
  return Mesh(grid, sharding.MESH_AXES)


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path(path: Sequence[Any]) -> tuple[str, ...]:
  return tuple(_key_str(k) for k in path)


def _spec_for_mirror(shape: tuple[int, ...], param_shape: tuple[int, ...],
                     param_spec: PartitionSpec) -> PartitionSpec:
  """Logical spec of an optimizer-state leaf that mirrors a parameter of `param_shape`."""
  names = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  if shape == param_shape:
    return PartitionSpec(*names)
  if len(shape) == len(param_shape) - 1:
    # A factored second moment (Adafactor v_row / v_col) drops one axis of the parameter.
    candidates = {
        names[:i] + names[i + 1:] for i in range(len(param_shape))
        if param_shape[:i] + param_shape[i + 1:] == shape
    }
    if len(candidates) == 1:
      return PartitionSpec(*candidates.pop())
  # Scalars, step counts and (1,)-placeholders are tiny: replicate them.
  return PartitionSpec()


def mirror_logical_specs(tree: Any, params: Any, param_specs: Any) -> Any:
  """Logical specs for `tree` (e.g. optimizer state) from the parameters its leaves mirror.

  A leaf mirrors the parameter whose path is the longest suffix of the leaf's path (optax
  states hold copies of the parameter tree under fields such as `mu`, `nu`, `v_row`).

  Args:
    tree: pytree of arrays or `ShapeDtypeStruct`s.
    params: the (unboxed) parameter tree, arrays or `ShapeDtypeStruct`s.
    param_specs: logical `PartitionSpec` per parameter (same structure as `params`).
  """
  by_path = {}
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_specs = jax.tree_util.tree_leaves(param_specs, is_leaf=lambda x: isinstance(
      x, PartitionSpec))
  for (path, leaf), spec in zip(flat_params, flat_specs, strict=True):
    by_path[_path(path)] = (tuple(leaf.shape), spec)

  def spec_for(path, leaf):
    key = _path(path)
    for start in range(len(key)):
      if key[start:] in by_path:
        param_shape, param_spec = by_path[key[start:]]
        return _spec_for_mirror(tuple(np.shape(leaf)), param_shape, param_spec)
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(spec_for, tree)


class Partitioner:
  """Owns the mesh and the logical rules; turns logical specs into shardings.

  Attributes:
    mesh: the ("data", "model") device mesh.
    rules: the logical axis rules (`sharding.logical_axis_rules()` plus any extra rules).
  """

  def __init__(self, num_partitions: int = 1, *, extra_rules: Rules = (),
               devices: Sequence[jax.Device] | None = None):
    self.mesh = make_mesh(num_partitions, devices=devices)
    self.rules = sharding.logical_axis_rules(extra_rules)

  @property
  def data_size(self) -> int:
    return self.mesh.shape[sharding.DATA_AXIS]

  def logical_to_sharding(self, logical_specs: Any) -> Any:
    """A tree of logical `PartitionSpec`s -> the tree of mesh `NamedSharding`s."""
    return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Sharding of a batch array: leading axis over "data", the rest replicated."""
    logical = PartitionSpec(sharding.BATCH, *([None] * (ndim - 1)))
    return self.logical_to_sharding(logical)

  def init(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array,
           logical_specs_fn: Callable[[Any], Any]) -> tuple[Any, Any]:
    """Runs `init_fn(rng)` directly into its shardings.

    Args:
      init_fn: rng -> a pytree (e.g. the train state) of arrays.
      rng: the PRNG key.
      logical_specs_fn: the abstract output of `init_fn` (`ShapeDtypeStruct`s) -> its
        logical `PartitionSpec`s.

    Returns:
      (the initialised pytree, its tree of `NamedSharding`s).
    """
    abstract = jax.eval_shape(init_fn, rng)
    shardings = self.logical_to_sharding(logical_specs_fn(abstract))
    with self.context():
      value = jax.jit(init_fn, out_shardings=shardings)(rng)
    return value, shardings

  def shard_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows of the global batch -> global arrays sharded over "data".

    With one process the host batch is the global batch; with P processes each holds
    `global_batch / P` rows (its own shard of the data).
    """
    out = {}
    for name, local in host_batch.items():
      local = np.asarray(local)
      shard = self.batch_sharding(local.ndim)
      global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
      out[name] = jax.make_array_from_process_local_data(shard, local, global_shape)
    return out

  def context(self) -> contextlib.AbstractContextManager:
    """Activates the mesh and the rules, so `sharding.constrain` applies inside jit.

    Both the concrete mesh context (`with mesh:`, what `sharding.mesh_is_active` checks) and
    the abstract mesh (`jax.set_mesh`, what flax's logical constraints check) are entered.
    """
    stack = contextlib.ExitStack()
    stack.enter_context(self.mesh)
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack
