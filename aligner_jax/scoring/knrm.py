"""KNRM kernel pooling over the token similarity matrix, as LITE App. A.5 uses it.

Conventions:
  * Input is `S [..., L1, L2]`, `S[..., i, j] = q_i · d_j`, with optional masks `q_mask [..., L1]`,
    `d_mask [..., L2]` (bool, False = padding); leading axes are free (`[B]` or `[B, K]`).
    The kernels are placed for cosine similarities in [−1, 1], so the encoder's token vectors
    should be L2-normalised.
  * 11 fixed RBF kernels (LITE App. A.5, following Xiong et al. 2017): μ = 0.9, 0.7, …, −0.9
    with σ = 0.1, and the exact-match kernel μ = 1.0 with σ = 10⁻³. Only the linear layer
    on the 11 features is trained.
  * Kernels are evaluated in float32 whatever the input dtype: bfloat16 cannot resolve the
    σ = 10⁻³ exact-match kernel (its spacing near 1.0 is 2⁻⁷).
  * The soft-TF of a query token is floored at `min_soft_tf` (10⁻¹⁰) before the log, so a
    kernel that no document token reaches gives log(10⁻¹⁰) instead of −inf. Padded query
    tokens contribute 0; padded document tokens are in no soft-TF.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

KNRM_MUS = (0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9, 1.0)
KNRM_SIGMAS = (0.1,) * 10 + (1e-3,)
MIN_SOFT_TF = 1e-10


def _feature_kwargs(mus, sigmas, min_soft_tf) -> dict:
  """The kernel settings as hashable static arguments of the compiled functions."""
  mus, sigmas = tuple(float(x) for x in mus), tuple(float(x) for x in sigmas)
  if len(mus) != len(sigmas):
    raise ValueError(f"knrm needs one sigma per mu, got {len(mus)} mus and {len(sigmas)} sigmas")
  return dict(mus=mus, sigmas=sigmas, min_soft_tf=float(min_soft_tf))


@functools.partial(jax.jit, static_argnames=("mus", "sigmas", "min_soft_tf"))
def _knrm_features(S, q_mask, d_mask, *, mus, sigmas, min_soft_tf):
  S = jnp.asarray(S)
  S = S.astype(jnp.promote_types(S.dtype, jnp.float32))
  mu = jnp.asarray(mus, S.dtype)
  sigma = jnp.asarray(sigmas, S.dtype)
  q_valid = (jnp.ones(S.shape[:-1], bool) if q_mask is None
             else jnp.broadcast_to(jnp.asarray(q_mask, bool), S.shape[:-1]))
  d_valid = (jnp.ones(S.shape[:-2] + S.shape[-1:], bool) if d_mask is None
             else jnp.asarray(d_mask, bool))
  # Padded entries are zeroed first so inf/NaN padding cannot leak into values or gradients.
  S = jnp.where(q_valid[..., :, None] & d_valid[..., None, :], S, 0.0)
  # KNRM (LITE App. A.5): K_k(S_i) = Σ_j exp(−(S_ij − μ_k)² / (2σ_k²)), the soft-TF of q_i
  rbf = jnp.exp(-((S[..., None] - mu) ** 2) / (2.0 * sigma ** 2))  # [..., L1, L2, K]
  soft_tf = jnp.sum(jnp.where(d_valid[..., None, :, None], rbf, 0.0), axis=-2)  # [..., L1, K]
  # KNRM (LITE App. A.5): φ_k = Σ_i log K_k(S_i), over valid query tokens
  log_tf = jnp.log(jnp.maximum(soft_tf, min_soft_tf))
  return jnp.sum(jnp.where(q_valid[..., None], log_tf, 0.0), axis=-2)


def knrm_features(S: jax.Array, q_mask: jax.Array | None = None,
                  d_mask: jax.Array | None = None, *,
                  mus: tuple[float, ...] = KNRM_MUS, sigmas: tuple[float, ...] = KNRM_SIGMAS,
                  min_soft_tf: float = MIN_SOFT_TF) -> jax.Array:
  """Kernel-pooling features φ(S), compiled once per shape and kernel set.

  Args:
    S: [..., L1, L2] similarities.
    q_mask: [..., L1] bool or None (all valid).
    d_mask: [..., L2] bool or None (all valid).
    mus: kernel centres μ_k.
    sigmas: kernel widths σ_k, one per centre.
    min_soft_tf: floor of the soft-TF before the log.
  Returns:
    [..., len(mus)] float32.
  """
  return _knrm_features(S, q_mask, d_mask, **_feature_kwargs(mus, sigmas, min_soft_tf))


@functools.partial(jax.jit, static_argnames=("mus", "sigmas", "min_soft_tf"))
def _knrm(S, q_mask, d_mask, w, b, **feature_kwargs):
  phi = _knrm_features(S, q_mask, d_mask, **feature_kwargs)
  return phi @ jnp.asarray(w, phi.dtype) + b


def knrm(S: jax.Array, q_mask: jax.Array | None, d_mask: jax.Array | None, w: jax.Array,
         b: jax.Array | float = 0.0, *, mus: tuple[float, ...] = KNRM_MUS,
         sigmas: tuple[float, ...] = KNRM_SIGMAS, min_soft_tf: float = MIN_SOFT_TF) -> jax.Array:
  """KNRM score wᵀφ(S) + b, compiled once per shape and kernel set.

  Args:
    S: [..., L1, L2] similarities.
    q_mask: [..., L1] bool or None.
    d_mask: [..., L2] bool or None.
    w: [K] weights of the kernel features.
    b: scalar bias.
    mus, sigmas, min_soft_tf: as in `knrm_features`.
  Returns:
    [...] float32.
  """
  kwargs = _feature_kwargs(mus, sigmas, min_soft_tf)
  if jnp.shape(w) != (len(kwargs["mus"]),):
    raise ValueError(f"knrm weights have shape {jnp.shape(w)}, expected ({len(kwargs['mus'])},)")
  return _knrm(S, q_mask, d_mask, w, b, **kwargs)


class KnrmScorer(nn.Module):
  """KNRM with the fixed kernels and a trainable linear layer (the only parameters).

  `w` starts at zero: the model is linear in it, so gradients are informative from the start
  and no random projection of the (large, negative) log features is needed.
  """
  mus: tuple[float, ...] = KNRM_MUS
  sigmas: tuple[float, ...] = KNRM_SIGMAS
  min_soft_tf: float = MIN_SOFT_TF
  use_bias: bool = True

  @nn.compact
  def __call__(self, S: jax.Array, q_mask: jax.Array | None = None,
               d_mask: jax.Array | None = None) -> jax.Array:
    """S: [..., L1, L2], masks [..., L1] / [..., L2] → scores [...] float32."""
    w = self.param("w", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                   (len(self.mus),), jnp.float32)
    b = (self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()),
                    (), jnp.float32) if self.use_bias else 0.0)
    return knrm(S, q_mask, d_mask, w, b, mus=self.mus, sigmas=self.sigmas,
                min_soft_tf=self.min_soft_tf)
