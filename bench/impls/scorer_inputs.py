"""Inputs of the scorer benchmark, built identically in every worker process (NumPy only).

Cell parameters (`params`): variant ("top_k:1", "top_k:4", "top_p:P", "salience", "lite",
"knrm", "gemm"), B queries, n query tokens, K candidates per query, m document tokens, h width,
ragged (document lengths uniform in [m/8, m], query lengths in [n/2, n]), seed; LITE adds
row_width and col_width.

Arrays (`make_inputs`):
  q [B, n, h] float32 and d [B, K, m, h] float32, valid tokens L2-normalised;
  q_mask [B, n] and d_mask [B, K, m] bool. Padded positions hold large random vectors, so an
  implementation that forgets a mask disagrees with the reference instead of passing by luck.
  "salience": q_sal [B, n], d_sal [B, K, m] in [0.05, 1) (0 on padding).
  "lite": the separable LiteScorer parameters as flat arrays (see `lite_param_tree`).
  "knrm": w [11], b [].
  "gemm": a [K·m, h], b [h, B·n] (the flat GEMM inside MaxSim), or a [R, I], b [I, C] when
  params["gemm_shape"] = [R, I, C] (a compute-bound square GEMM for the peak).

Score semantics every implementation reproduces (the project's, `aligner_jax.scoring`):
  score = Σ S⊙A / Σ A, so top_k / top_p give the mean of the selected similarities over valid
  query rows; a PyLate-style sum of maxima is divided by that count to compare.
"""

import fractions
from typing import Any

import numpy as np

GARBAGE_SCALE = 3.0
# KNRM's 11 fixed kernels (LITE App. A.5): μ = 0.9, 0.7, ..., -0.9 with σ = 0.1, exact match
# μ = 1 with σ = 1e-3; soft-TF floored at 1e-10 before the log. Repeated here so that NumPy and
# torch workers never import the JAX library.
KNRM_MUS = (0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9, 1.0)
KNRM_SIGMAS = (0.1,) * 10 + (1e-3,)
KNRM_MIN_SOFT_TF = 1e-10
KNRM_KERNELS = len(KNRM_MUS)
LAYER_NORM_EPS = 1e-6  # LiteScorer's LayerNorm
MAX_RATIO_DENOMINATOR = 10_000  # as aligner_jax.scoring.selection reads ratios


def alignment_k(variant: str) -> int | None:
  """top_k:K → K; top_k:1 for "salience"; None for top_p."""
  if variant.startswith("top_k:"):
    return int(variant.split(":")[1])
  if variant == "salience":
    return 1
  return None


def top_p_fraction(variant: str) -> fractions.Fraction:
  return fractions.Fraction(float(variant.split(":")[1])).limit_denominator(MAX_RATIO_DENOMINATOR)


def counts(variant: str, m_valid: np.ndarray) -> np.ndarray:
  """Selected document tokens per valid query row: [...] int64 from m_valid [...]."""
  m_valid = np.asarray(m_valid, np.int64)
  k = alignment_k(variant)
  if k is not None:
    return np.minimum(k, m_valid)
  frac = top_p_fraction(variant)
  return np.minimum(np.maximum(frac.numerator * m_valid // frac.denominator, 1), m_valid)


def max_count(variant: str, m: int) -> int:
  return int(counts(variant, np.array(m)))


def lengths(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(query lengths [B], document lengths [B, K]) from their own seeded stream."""
  B, n, K, m = params["B"], params["n"], params["K"], params["m"]
  if not params.get("ragged"):
    return np.full(B, n, np.int64), np.full((B, K), m, np.int64)
  rng = np.random.default_rng([params.get("seed", 0), 1])
  return rng.integers(n // 2, n + 1, size=B), rng.integers(max(1, m // 8), m + 1, size=(B, K))


def flops(params: dict[str, Any]) -> float:
  """Useful FLOPs of one call: the similarity GEMM over valid tokens (+ LITE's MLPs)."""
  h, n, m, K, B = params["h"], params["n"], params["m"], params["K"], params["B"]
  if params["variant"] == "gemm":
    rows, inner, cols = params.get("gemm_shape") or (K * m, h, B * n)
    return 2.0 * rows * inner * cols
  q_len, d_len = lengths(params)
  total = 2.0 * h * float(np.sum(q_len[:, None] * d_len))
  if params["variant"] == "lite":
    # LITE Eq. (3)-(4) on the fixed n x m matrix: two layers per row and per column.
    rows = n * 2 * (2 * m * params["row_width"])
    cols = m * 2 * (2 * n * params["col_width"])
    total += float(B * K * (rows + cols + 2 * n * m))
  return total


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def lite_param_tree(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  """The separable LiteScorer's Flax parameter tree from the flat `lite/...` arrays."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    if not key.startswith("lite/"):
      continue
    node = tree
    parts = key.split("/")[1:]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def _lite_params(rng: np.random.Generator, n: int, m: int, row_width: int,
                 col_width: int) -> dict[str, np.ndarray]:
  out = {}
  for block, features, hidden in (("row", m, row_width), ("col", n, col_width)):
    shapes = {"dense_a": (features, hidden), "dense_b": (hidden, features)}
    for dense, (fan_in, fan_out) in shapes.items():
      out[f"lite/{block}/{dense}/kernel"] = (
          rng.standard_normal((fan_in, fan_out), np.float32) / np.sqrt(fan_in)).astype(np.float32)
      out[f"lite/{block}/{dense}/bias"] = (0.1 * rng.standard_normal(fan_out)).astype(np.float32)
    for norm, size in (("norm_a", hidden), ("norm_b", features)):
      out[f"lite/{block}/{norm}/scale"] = (1 + 0.1 * rng.standard_normal(size)).astype(np.float32)
      out[f"lite/{block}/{norm}/bias"] = (0.1 * rng.standard_normal(size)).astype(np.float32)
  out["lite/w"] = (rng.standard_normal(n * m) / np.sqrt(n * m)).astype(np.float32)
  return out


def make_inputs(params: dict[str, Any]) -> dict[str, np.ndarray]:
  B, n, K, m, h = params["B"], params["n"], params["K"], params["m"], params["h"]
  variant = params["variant"]
  rng = np.random.default_rng([params.get("seed", 0), 0])
  if variant == "gemm":
    rows, inner, cols = params.get("gemm_shape") or (K * m, h, B * n)
    return {"a": rng.standard_normal((rows, inner), np.float32),
            "b": rng.standard_normal((inner, cols), np.float32)}
  q_len, d_len = lengths(params)
  q_mask = np.arange(n) < q_len[:, None]
  d_mask = np.arange(m) < d_len[..., None]
  q = _unit(rng.standard_normal((B, n, h), np.float32))
  d = _unit(rng.standard_normal((B, K, m, h), np.float32))
  q[~q_mask] = GARBAGE_SCALE * rng.standard_normal((int((~q_mask).sum()), h), np.float32)
  d[~d_mask] = GARBAGE_SCALE * rng.standard_normal((int((~d_mask).sum()), h), np.float32)
  out = {"q": q, "q_mask": q_mask, "d": d, "d_mask": d_mask}
  if variant == "salience":
    out["q_sal"] = (rng.uniform(0.05, 1.0, (B, n)) * q_mask).astype(np.float32)
    out["d_sal"] = (rng.uniform(0.05, 1.0, (B, K, m)) * d_mask).astype(np.float32)
  elif variant == "lite":
    out.update(_lite_params(rng, n, m, params["row_width"], params["col_width"]))
  elif variant == "knrm":
    out["w"] = rng.standard_normal(KNRM_KERNELS).astype(np.float32)
    out["b"] = np.float32(rng.standard_normal())
  return out
