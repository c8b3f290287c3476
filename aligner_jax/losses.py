"""Training losses: distillation of a teacher's candidate scores and contrastive softmax CE.

Every loss is a pure function averaged over the batch (sum of the per-query losses / B, padded
queries included) and computed in (at least) float32 whatever the input dtype, so bfloat16
scores give a finite, accurate loss.

Distillation losses share one signature, the one `get_loss` hands out:

  loss(teacher [B, K] float, student [B, K] float, labels [B, K] {0,1}, *, mask=None, **hparams)

  teacher[b, k] / student[b, k] = score of query b for its candidate k.
  P = {k : labels == 1 and mask}, N = {k : labels == 0 and mask}; `mask [B, K]` bool (True =
  real candidate) removes padded candidates from every sum and softmax. A term that needs a
  positive or a negative contributes 0 for a query that has none -- never NaN.

The contrastive `softmax_ce(scores [B, C], labels [B, C])` is the in-batch loss of ALIGNER/GTR
training (C = all in-batch documents, hard negatives included). `one_hot_ce` is the same softmax
CE over a query's own candidate list with the observed labels, i.e. the "one-hot" baseline of
Menon et al. Table 1; it ignores the teacher and exists so the baseline is selectable by name
with the distillation signature.
"""

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _as_float(*xs: Array, valid: Array) -> tuple[Array, ...]:
  """Scores in at least float32, with padded entries zeroed.

  Zeroing (rather than only masking the sums) keeps gradients finite when padding holds
  inf/NaN: `where` alone still multiplies a zero cotangent by the NaN local derivative.
  """
  out = []
  for x in xs:
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    out.append(jnp.where(valid, x, 0.0))
  return tuple(out)


def _check_same_shape(**arrays: Array) -> None:
  shapes = {name: jnp.shape(a) for name, a in arrays.items() if a is not None}
  if len(set(shapes.values())) > 1 or any(len(s) != 2 for s in shapes.values()):
    raise ValueError(f"losses expect [B, K] arrays of one shape, got {shapes}")


def _check_temperature(temperature: float) -> None:
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


def _sets(labels: Array, mask: Array | None) -> tuple[Array, Array, Array]:
  """(valid, positive, negative) bool masks [B, K]."""
  valid = jnp.ones(jnp.shape(labels), bool) if mask is None else jnp.asarray(mask, bool)
  is_pos = jnp.asarray(labels) > 0
  return valid, valid & is_pos, valid & ~is_pos


def _masked_log_softmax(x: Array, valid: Array) -> Array:
  """log softmax over the valid entries of each row; 0 at invalid entries and in empty rows.

  Invalid logits become -inf so they get zero probability; a row with no valid entry is set to
  zeros first so its normaliser stays finite (its outputs are then zeroed anyway).
  """
  row_any = jnp.any(valid, axis=-1, keepdims=True)
  x = jnp.where(valid, x, -jnp.inf)
  x = jnp.where(row_any, x, 0.0)
  return jnp.where(valid, jax.nn.log_softmax(x, axis=-1), 0.0)


def mse(teacher: Array, student: Array, labels: Array, *, mask: Array | None = None) -> Array:
  """Logit matching: Σ_k (t_k − s_k)² over valid candidates, batch mean.

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}; unused (every valid candidate is matched), kept for the shared signature.
    mask: [B, K] bool, True = real candidate.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  valid, _, _ = _sets(labels, mask)
  t, s = _as_float(teacher, student, valid=valid)
  # Menon et al. §2: ℓ_mse(t, s) = Σ_k (t_k − s_k)²
  per_query = jnp.sum(jnp.where(valid, (t - s) ** 2, 0.0), axis=-1)
  return jnp.mean(per_query)


def margin_mse(teacher: Array, student: Array, labels: Array, *,
               mask: Array | None = None) -> Array:
  """Margin MSE over all positive/negative pairs: Σ_{i∈P} Σ_{j∈N} ((t_i − t_j) − (s_i − s_j))².

  With one positive this is LITE App. A.2's Σ_{i≥2} ((t_1 − t_i) − (s_1 − s_i))².

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}.
    mask: [B, K] bool, True = real candidate.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  valid, pos, neg = _sets(labels, mask)
  t, s = _as_float(teacher, student, valid=valid)
  # With d = t − s each pair term is (d_i − d_j)², which expands to O(K) sums instead of a
  # [B, K, K] tensor. The sum is invariant to shifting d, so centring d first keeps the
  # expansion free of cancellation when scores are large.
  d = t - s
  n_valid = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
  d = d - jnp.sum(jnp.where(valid, d, 0.0), axis=-1, keepdims=True) / n_valid
  n_pos = jnp.sum(pos, axis=-1)
  n_neg = jnp.sum(neg, axis=-1)
  sum_pos = jnp.sum(jnp.where(pos, d, 0.0), axis=-1)
  sum_neg = jnp.sum(jnp.where(neg, d, 0.0), axis=-1)
  sq_pos = jnp.sum(jnp.where(pos, d * d, 0.0), axis=-1)
  sq_neg = jnp.sum(jnp.where(neg, d * d, 0.0), axis=-1)
  # Menon et al. §4.1: Σ_{i∈P} Σ_{j∈N} ((t_i − t_j) − (s_i − s_j))²
  per_query = n_neg * sq_pos - 2.0 * sum_pos * sum_neg + n_pos * sq_neg
  return jnp.mean(per_query)


def m3se(teacher: Array, student: Array, labels: Array, *, mask: Array | None = None) -> Array:
  """Multi-margin MSE (Menon et al. Eq. 4).

  Σ_{i∈P} ((t_i − t_{j*}) − (s_i − s_{j*}))² + Σ_{j∈N} max(s_j − s_{j*}, 0)², with j* the
  negative with the highest teacher score (the first one on ties). A query without negatives
  contributes 0; one without positives contributes only the second sum.

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}.
    mask: [B, K] bool, True = real candidate.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  valid, pos, neg = _sets(labels, mask)
  t, s = _as_float(teacher, student, valid=valid)
  has_neg = jnp.any(neg, axis=-1)
  j_star = jnp.argmax(jnp.where(neg, t, -jnp.inf), axis=-1)[:, None]  # [B, 1]
  t_star = jnp.take_along_axis(t, j_star, axis=-1)  # [B, 1]
  s_star = jnp.take_along_axis(s, j_star, axis=-1)  # [B, 1]
  # Menon et al. Eq. (4): match the margins to j*, push the other negatives below s_{j*}
  margin_term = jnp.sum(jnp.where(pos, ((t - t_star) - (s - s_star)) ** 2, 0.0), axis=-1)
  hinge_term = jnp.sum(jnp.where(neg, jax.nn.relu(s - s_star) ** 2, 0.0), axis=-1)
  per_query = jnp.where(has_neg, margin_term + hinge_term, 0.0)
  return jnp.mean(per_query)


def _tempered_distributions(teacher, student, labels, mask, temperature):
  """p^(t), log p^(t), log p^(s) = softmax over valid candidates of scores / τ; [B, K] each."""
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  _check_temperature(temperature)
  valid, _, _ = _sets(labels, mask)
  t, s = _as_float(teacher, student, valid=valid)
  log_p_teacher = _masked_log_softmax(t / temperature, valid)
  log_p_student = _masked_log_softmax(s / temperature, valid)
  p_teacher = jnp.where(valid, jnp.exp(log_p_teacher), 0.0)
  return p_teacher, log_p_teacher, log_p_student


def softmax_ce_distill(teacher: Array, student: Array, labels: Array, *,
                       mask: Array | None = None, temperature: float = 1.0) -> Array:
  """Softmax cross-entropy distillation (Menon et al. Eq. 1 with teacher probabilities).

  −Σ_k softmax(t/τ)_k · log softmax(s/τ)_k over valid candidates.

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}; unused, kept for the shared signature.
    mask: [B, K] bool, True = real candidate.
    temperature: τ > 0, applied to both teacher and student.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  p_teacher, log_p_teacher, log_p_student = _tempered_distributions(
      teacher, student, labels, mask, temperature)
  # Menon et al. Eq. (1): ℓ = −Σ_k p^teach_k · log p_k(θ), p = softmax(score / τ)
  per_query = -jnp.sum(p_teacher * log_p_student, axis=-1)
  return jnp.mean(per_query)


def kl_distill(teacher: Array, student: Array, labels: Array, *, mask: Array | None = None,
               temperature: float = 1.0) -> Array:
  """KL(softmax(t/τ) ‖ softmax(s/τ)) over valid candidates (LITE App. A.2 "KL loss").

  Equals `softmax_ce_distill` minus the teacher entropy, so it is 0 when student = teacher.

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}; unused, kept for the shared signature.
    mask: [B, K] bool, True = real candidate.
    temperature: τ > 0, applied to both teacher and student.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  p_teacher, log_p_teacher, log_p_student = _tempered_distributions(
      teacher, student, labels, mask, temperature)
  # LITE App. A.2: KL(p^(t) ‖ p^(s)) = Σ_k p^(t)_k (log p^(t)_k − log p^(s)_k)
  per_query = jnp.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)
  return jnp.mean(per_query)


def rankdistil_b(teacher: Array, student: Array, labels: Array, *, mask: Array | None = None,
                 gamma0: float) -> Array:
  """Binary RankDistil (Menon et al. §4.3): Σ_{i∈P} (t_i − s_i)² + Σ_{j∈N} max(s_j − γ₀, 0)².

  Args:
    teacher: [B, K] teacher scores.
    student: [B, K] student scores.
    labels: [B, K] {0,1}.
    mask: [B, K] bool, True = real candidate.
    gamma0: γ₀, the score every negative should fall below (no default: it depends on the
      student's score range).
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  valid, pos, neg = _sets(labels, mask)
  t, s = _as_float(teacher, student, valid=valid)
  # Menon et al. §4.3: ℓ_rankB = Σ_{i∈P} (t_i − s_i)² + Σ_{j∈N} [s_j − γ₀]₊²
  match_term = jnp.sum(jnp.where(pos, (t - s) ** 2, 0.0), axis=-1)
  hinge_term = jnp.sum(jnp.where(neg, jax.nn.relu(s - gamma0) ** 2, 0.0), axis=-1)
  return jnp.mean(match_term + hinge_term)


def softmax_ce(scores: Array, labels: Array, *, temperature: float = 1.0,
               mask: Array | None = None) -> Array:
  """Contrastive softmax cross-entropy with one-hot labels (in-batch + hard negatives).

  For each query: −(1/|P|) Σ_{i∈P} log softmax(scores/τ)_i over the valid documents, i.e. several
  positives are averaged, each scored against all valid documents. A query without a positive
  contributes 0.

  Args:
    scores: [B, C] student scores of query b against document c (in-batch: all documents of
      the batch, hard negatives included).
    labels: [B, C] {0,1}, 1 where document c is relevant to query b.
    temperature: τ > 0.
    mask: [B, C] bool, True = real document.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(scores=scores, labels=labels, mask=mask)
  _check_temperature(temperature)
  valid, pos, _ = _sets(labels, mask)
  (s,) = _as_float(scores, valid=valid)
  log_p = _masked_log_softmax(s / temperature, valid)
  n_pos = jnp.sum(pos, axis=-1)
  # Menon et al. Eq. (1) with y = normalised one-hot labels
  per_query = -jnp.sum(jnp.where(pos, log_p, 0.0), axis=-1) / jnp.maximum(n_pos, 1)
  return jnp.mean(per_query)


def one_hot_ce(teacher: Array, student: Array, labels: Array, *, mask: Array | None = None,
               temperature: float = 1.0) -> Array:
  """The "one-hot" baseline: `softmax_ce` of the student over its candidates; teacher unused.

  Args:
    teacher: [B, K]; ignored.
    student: [B, K] student scores.
    labels: [B, K] {0,1} observed relevance.
    mask: [B, K] bool, True = real candidate.
    temperature: τ > 0.
  Returns:
    scalar (float32; float64 for float64 scores).
  """
  _check_same_shape(teacher=teacher, student=student, labels=labels, mask=mask)
  return softmax_ce(student, labels, temperature=temperature, mask=mask)


LossFn = Callable[..., Array]

# Name → loss with the distillation signature; the names are what the gin `LOSS` macro holds.
LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "margin_mse": margin_mse,
    "m3se": m3se,
    "softmax_ce_distill": softmax_ce_distill,
    "kl_distill": kl_distill,
    "rankdistil_b": rankdistil_b,
    "one_hot_ce": one_hot_ce,
}


def get_loss(name: str, **hparams) -> LossFn:
  """The loss registered as `name` with its hyper-parameters bound.

  Returns `fn(teacher [B, K], student [B, K], labels [B, K], *, mask=None) -> scalar`.

  Raises:
    ValueError: unknown name (the message lists the known ones), an unknown hyper-parameter,
      or a required one (e.g. `gamma0` of `rankdistil_b`) that is missing.
  """
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
  fn = LOSSES[name]
  params = {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "mask"}
  unknown = sorted(set(hparams) - set(params))
  if unknown:
    raise ValueError(f"loss {name!r} has no hyper-parameter(s) {unknown}; "
                     f"it takes {sorted(params) or 'none'}")
  missing = sorted(n for n, p in params.items()
                   if p.default is inspect.Parameter.empty and n not in hparams)
  if missing:
    raise ValueError(f"loss {name!r} needs hyper-parameter(s) {missing}")
  return functools.partial(fn, **hparams)
