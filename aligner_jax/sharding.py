"""One vocabulary for sharding: logical axis names and the rules that map them to mesh axes.

Model code names the axes of every parameter and activation with the constants below
(`nn.with_logical_partitioning` for parameters, `constrain` for block boundaries) and never
writes a raw `PartitionSpec`. The trainer builds a mesh with the axes `MESH_AXES` and turns
logical names into mesh axes with `logical_axis_rules()`.

Mesh axes:
  "data"  -- data parallel: the batch is split over it; parameters are replicated over it.
  "model" -- model parallel (`NUM_PARTITIONS` devices): the wide parameter axes are split.
"""

from typing import Sequence

import flax.linen as nn
import jax
from jax.interpreters import pxla

# Logical axis names used by models and the trainer.
BATCH = "batch"
LENGTH = "length"
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
RELPOS_BUCKETS = "relpos_buckets"
PROJ = "proj"  # output projection width of the token vectors (ALIGNER: 128)
CANDIDATES = "candidates"

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)


def logical_axis_rules(extra: Sequence[tuple[str, str | None]] = ()) -> tuple:
  """The one table from logical axis names to mesh axes (T5X's standard rules).

  Projects may prepend `extra` rules; the first rule that names an axis wins.
  """
  standard = (
      (BATCH, DATA_AXIS),
      (VOCAB, MODEL_AXIS),
      (MLP, MODEL_AXIS),
      (HEADS, MODEL_AXIS),
      (KV, None),
      (EMBED, None),
      (LENGTH, None),
      (RELPOS_BUCKETS, None),
      (PROJ, None),
      (CANDIDATES, None),
  )
  return tuple(extra) + standard


def mesh_is_active() -> bool:
  """True inside `with mesh:` (or `jax.sharding.use_mesh`) with a non-empty mesh."""
  return not pxla.thread_resources.env.physical_mesh.empty


def active_mesh_size() -> int:
  """Devices of the active mesh; 0 when none is active."""
  return pxla.thread_resources.env.physical_mesh.size if mesh_is_active() else 0


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint at a block boundary, applied only when a mesh is active.

  Depending on "a mesh is active" rather than on the platform means the CPU fake-device
  tests exercise exactly the constraints a TPU run uses.
  """
  if not mesh_is_active():
    return x
  return nn.with_logical_constraint(x, tuple(axes))
