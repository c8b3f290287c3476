"""Product quantisation (PQ) of token vectors: M sub-spaces × 8-bit codes.

A vector x ∈ R^h is cut into M consecutive sub-vectors of h / M dimensions; sub-space m has a
codebook of 256 centroids (k-means on a sample of the vectors) and x is stored as the M
one-byte indices of the nearest centroid of each sub-vector, so M bytes per vector. Decoding
concatenates the chosen centroids; an inner product q·x̂ with a decoded vector equals the
sum over sub-spaces of q_m·c_m, the asymmetric distance computation of Jégou et al. (the query
stays exact, only the stored side is quantised).

Shapes: codebook [M, 256, h / M] float32, codes [T, M] uint8. Everything is NumPy and
deterministic for a given seed.
"""

import numpy as np

NUM_CENTROIDS = 256  # one byte per sub-space
_ENCODE_CHUNK = 4096  # [chunk, 256] scores per sub-space stay cache-sized
UNIT_NORM_TOLERANCE = 1e-3


def check_num_subspaces(dim: int, num_subspaces: int) -> int:
  if num_subspaces < 1 or dim % num_subspaces:
    raise ValueError(f"product quantisation needs a number of sub-spaces M that divides the "
                     f"vector dimension {dim}; got M = {num_subspaces}")
  return num_subspaces


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Index of the nearest centroid of each row: x [S, d], centroids [C, d] -> [S] int64."""
  # argmin ‖x - c‖² = argmax x·c - ‖c‖²/2, one GEMM.
  scores = x @ centroids.T - 0.5 * np.sum(centroids * centroids, axis=1)[None, :]
  return np.argmax(scores, axis=1)


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
  """Lloyd's k-means on x [S, d] float32 from k distinct sample points: [k, d] float32."""
  # Only small samples can have at most k distinct points; sorting big ones is wasted time.
  unique = np.unique(x, axis=0) if len(x) <= 4 * k else x
  if len(unique) <= k:
    # Fewer distinct points than centroids: every point is its own centroid (exact codes);
    # the spare centroids repeat the first one and are never the unique nearest.
    out = np.repeat(unique[:1], k, axis=0)
    out[:len(unique)] = unique
    return out.astype(np.float32)
  centroids = unique[rng.choice(len(unique), size=k, replace=False)].astype(np.float32)
  for _ in range(iterations):
    assign = _nearest(x, centroids)
    counts = np.bincount(assign, minlength=k)
    sums = np.stack([np.bincount(assign, weights=x[:, i], minlength=k)
                     for i in range(x.shape[1])], axis=1)
    empty = counts == 0
    centroids[~empty] = sums[~empty] / counts[~empty, None]
    if empty.any():
      # An empty cluster takes over the points worst served by their centroid.
      err = np.sum((x - centroids[assign]) ** 2, axis=1)
      centroids[empty] = x[np.argsort(-err, kind="stable")[:int(empty.sum())]]
  return centroids


def train_codebook(x: np.ndarray, num_subspaces: int, *, sample_size: int = 16_384,
                   iterations: int = 12, seed: int = 0) -> np.ndarray:
  """k-means codebooks of each sub-space on a sample of the rows.

  Args:
    x: [T, h] float vectors (T ≥ 1).
    num_subspaces: M, dividing h.
    sample_size: rows sampled (without replacement) for training; the default, 64 points
      per centroid, keeps training to seconds.
    iterations: Lloyd iterations per sub-space.
    seed: sampling and initialisation seed.

  Returns:
    codebook [M, 256, h / M] float32.
  """
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or len(x) == 0:
    raise ValueError(f"PQ training needs vectors [T, h] with T ≥ 1, got shape {x.shape}")
  m = check_num_subspaces(x.shape[1], num_subspaces)
  rng = np.random.default_rng(seed)
  if len(x) > sample_size:
    x = x[np.sort(rng.choice(len(x), size=sample_size, replace=False))]
  sub = x.reshape(len(x), m, -1)
  return np.stack([_kmeans(np.ascontiguousarray(sub[:, j]), NUM_CENTROIDS, iterations, rng)
                   for j in range(m)])


def encode(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """Nearest-centroid codes of x [T, h] under `codebook` [M, 256, h/M]: [T, M] uint8."""
  x = np.asarray(x, np.float32)
  m, _, ds = codebook.shape
  if x.ndim != 2 or x.shape[1] != m * ds:
    raise ValueError(f"vectors of shape {x.shape} do not match a codebook for "
                     f"{m} × {ds} dimensions")
  codes = np.empty((len(x), m), np.uint8)
  for start in range(0, len(x), _ENCODE_CHUNK):
    sub = x[start:start + _ENCODE_CHUNK].reshape(-1, m, ds)
    for j in range(m):
      codes[start:start + len(sub), j] = _nearest(sub[:, j], codebook[j])
  return codes


def all_unit_norm(x: np.ndarray, tol: float = UNIT_NORM_TOLERANCE) -> bool:
  """Whether every row of x [T, h] has L2 norm 1 ± tol (L2-normalised encoder outputs)."""
  if len(x) == 0:
    return False
  norms = np.sqrt(np.einsum("th,th->t", x, x, dtype=np.float64))
  return bool(np.all(np.abs(norms - 1.0) <= tol))


def to_unit_norm(x: np.ndarray) -> np.ndarray:
  """Rows of decoded vectors x [..., h] rescaled to norm 1 (a zero row stays zero).

  For unit-norm originals the decoded x̂ = x + e is closer to x after rescaling: the part of
  e along x, which changes only the length, is removed, and MaxSim compares a query token's
  inner products across document tokens, where length errors reorder the maxima.
  """
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def decode(codes: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """Vectors [..., h] float32 of `codes` [..., M] uint8."""
  m = codebook.shape[0]
  # codebook[j, codes[..., j]] for every j at once: [..., M, h/M].
  parts = codebook[np.arange(m), codes.astype(np.intp)]
  return parts.reshape(codes.shape[:-1] + (-1,))
