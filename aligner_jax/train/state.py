"""The train state: step, float32 parameters and optimizer state, one pytree.

The optimizer itself is static (not a pytree leaf), so the state can be donated to, and
returned from, a jitted step and saved and restored by orbax as a plain tree of arrays. The
dropout key is not stored: the step derives it from the run's seed and `step`, so a resumed
run draws the same randomness as an uninterrupted one.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """step: [] int32 (updates applied so far); params: float32 tree; opt_state: optax state."""
  step: jax.Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state)
