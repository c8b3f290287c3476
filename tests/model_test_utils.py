"""Helpers shared by the model tests (test_t5, test_bert, test_dual_encoder)."""

import flax.linen as nn
import jax
import numpy as np


def random_params(model: nn.Module, *init_args, seed: int = 0, boxed: bool = False,
                  method=None, **init_kwargs):
  """Parameters with exactly the shapes (and logical axes) `model.init` makes, filled from a
  NumPy RNG instead of the model's initialisers.

  Tests of model behaviour need some parameters, not the initialisers' numbers; compiling a
  jitted threefry `init` costs ~8 s of CPU per model here, `eval_shape` almost nothing.
  Norm scales are 1 +- 0.1, biases +- 0.02, everything else N(0, 0.1^2) (rel. position
  tables N(0, 0.5^2) so the position bias matters).
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *init_args, method=method, **init_kwargs)
  )["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    value = leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf
    name = str(getattr(path[-1], "key", path[-1]))
    noise = rng.standard_normal(value.shape).astype(np.float32)
    if name == "scale":
      array = 1.0 + 0.1 * noise
    elif name == "bias":
      array = 0.02 * noise
    elif name == "rel_embedding":
      array = 0.5 * noise
    else:
      array = 0.1 * noise
    array = array.astype(value.dtype)
    if isinstance(leaf, nn.meta.AxisMetadata):
      return leaf.replace_boxed(array) if boxed else array
    return array

  return jax.tree_util.tree_map_with_path(
      fill, shapes, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
