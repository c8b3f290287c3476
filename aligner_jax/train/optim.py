"""Optimizers and learning-rate schedules for training.

Schedules map the (0-based) optimizer step to a learning rate; each is a pure function of the
step so a resumed run sees exactly the rates an uninterrupted run sees. `make_optimizer`
chains global-norm gradient clipping with Adafactor (the T5X default) or AdamW.

Gradient accumulation is not an optimizer wrapper here: the train step averages the gradients
of its micro-batches before one optimizer update (see `aligner_jax.train.step`), so one step is
always one update and the data position stays "steps x global batch".
"""

import jax
import jax.numpy as jnp
import optax


def warmup_linear_decay(*, peak_value: float, warmup_steps: int, total_steps: int,
                        end_value: float = 0.0) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_value` over `warmup_steps`, then linear decay to
  `end_value` at `total_steps` (LITE App. A.1, Menon App. B)."""
  if total_steps <= warmup_steps:
    raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_value * (step + 1.0) / max(warmup_steps, 1)
    # The remaining fraction reaches exactly 0 at total_steps (no float32 cancellation).
    remaining = jnp.clip((total_steps - step) / (total_steps - warmup_steps), 0.0, 1.0)
    decay = end_value + (peak_value - end_value) * remaining
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def warmup_rsqrt_decay(*, peak_value: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up to `peak_value`, then `peak_value * sqrt(warmup_steps / step)`.

  This is T5X's default `rsqrt` decay rescaled so that its maximum is `peak_value`
  (T5X: `1 / sqrt(max(step, warmup_steps))`, i.e. `peak_value = 1 / sqrt(warmup_steps)`).
  """
  warmup_steps = max(int(warmup_steps), 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_value * (step + 1.0) / warmup_steps
    decay = peak_value * jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    return jnp.where(step < warmup_steps, warm, decay)

  return schedule


def warmup_constant(*, peak_value: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up to `peak_value`, then constant (T5X's fine-tuning default is 1e-3)."""
  warmup_steps = max(int(warmup_steps), 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    return peak_value * jnp.minimum((step + 1.0) / warmup_steps, 1.0)

  return schedule


def constant(*, value: float) -> optax.Schedule:
  return lambda step: jnp.full((), value, jnp.float32)


def _decay_mask(params):
  """Weight decay applies to matrices only: biases, norm scales and scalars are exempt."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(name: str = "adafactor", *, learning_rate: optax.Schedule,
                   weight_decay: float = 0.0, clip_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   ) -> optax.GradientTransformation:
  """The optimizer of a run: optional global-norm clipping, then Adafactor or AdamW.

  Args:
    name: "adafactor" (factored second moments, parameter-scaled updates, T5X default) or
      "adamw" (decoupled weight decay; LITE/Menon use 0.01).
    learning_rate: a schedule, step -> rate.
    weight_decay: decoupled weight decay rate (matrices only).
    clip_norm: clip gradients to this global norm; None disables clipping.
    b1, b2, eps: AdamW moments (ignored by Adafactor).
  """
  chain = []
  if clip_norm is not None:
    chain.append(optax.clip_by_global_norm(clip_norm))
  if name == "adafactor":
    chain.append(optax.adafactor(
        learning_rate=learning_rate,
        weight_decay_rate=weight_decay or None,
        weight_decay_mask=_decay_mask if weight_decay else None))
  elif name == "adamw":
    chain.append(optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                             weight_decay=weight_decay, mask=_decay_mask))
  else:
    raise ValueError(f"unknown optimizer {name!r}: expected 'adafactor' or 'adamw'.")
  return optax.chain(*chain)
