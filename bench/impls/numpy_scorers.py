"""NumPy scorers: the float64 reference (check-only) and the NumPy peers that are timed.

Every set-up function takes (params, inputs) from `scorer_inputs` and returns a callable giving
`[B, K]` scores (`[K·m, B·n]` for "gemm"); semantics in the `scorer_inputs` docstring.

  reference     float64, candidates in chunks, selection by a full sort: slow and plainly right.
  einsum_naive  `np.einsum('nh,kmh->knm')` as written (no `optimize`), masked max, sum.
  blas_flat     one GEMM (K·m, h) @ (h, n), masking in place, max / partition / argmax over m.
  gemm          a @ b in float32 (the GEMM peak cell).
"""

from typing import Any, Callable

import numpy as np

from bench.impls import scorer_inputs as si

REF_CHUNK = 128  # candidates per float64 block of the reference


# ------------------------------------------------------------------------------------------
# Shared pieces (dtype-generic, used by the reference in float64 and the peers in float32).


def _layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = np.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + si.LAYER_NORM_EPS) * scale + bias


def _lite_block(x, p):
  """LITE Eq. (3)/(4) on the last axis: LN(σ(W_b LN(σ(W_a x + b_a)) + b_b))."""
  # Flattened to 2-D: a stacked 3-D matmul is many small GEMMs, measured ~8x slower here.
  flat = x.reshape(-1, x.shape[-1])
  hid = np.maximum(flat @ p["dense_a"]["kernel"] + p["dense_a"]["bias"], 0)
  hid = _layer_norm(hid, p["norm_a"]["scale"], p["norm_a"]["bias"])
  out = np.maximum(hid @ p["dense_b"]["kernel"] + p["dense_b"]["bias"], 0)
  return _layer_norm(out, p["norm_b"]["scale"], p["norm_b"]["bias"]).reshape(x.shape)


def lite_scores(s, tree):
  """Separable LITE of zero-padded similarity matrices s [c, n, m] -> [c]."""
  rows = _lite_block(s, tree["row"])
  cols = np.swapaxes(_lite_block(np.swapaxes(rows, -1, -2), tree["col"]), -1, -2)
  return cols.reshape(len(s), -1) @ tree["w"]


def knrm_scores(s, q_mask, d_mask, w, b):
  """KNRM of zero-padded s [c, n, m] with q_mask [n], d_mask [c, m] -> [c]."""
  phi = np.zeros((len(s), si.KNRM_KERNELS), s.dtype)
  qf = q_mask.astype(s.dtype)
  df = d_mask.astype(s.dtype)[:, None, :]
  for i, (mu, sigma) in enumerate(zip(si.KNRM_MUS, si.KNRM_SIGMAS)):
    tf = np.sum(np.exp(-np.square(s - mu) / (2.0 * sigma ** 2)) * df, axis=-1)  # [c, n]
    phi[:, i] = np.log(np.maximum(tf, si.KNRM_MIN_SOFT_TF)) @ qf
  return phi @ w.astype(s.dtype) + b


def _cast_tree(tree, dtype):
  if isinstance(tree, dict):
    return {k: _cast_tree(v, dtype) for k, v in tree.items()}
  return np.asarray(tree, dtype)


def _safe_ratio(num, den):
  return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


# ------------------------------------------------------------------------------------------
# The reference.


def _reference_block(variant, s, q_mask, d_mask, extra):
  """Scores of one query against a block of candidates; s [c, n, m] float64."""
  if variant == "lite":
    return lite_scores(np.where(q_mask[None, :, None] & d_mask[:, None, :], s, 0.0),
                       extra["tree"])
  if variant == "knrm":
    s = np.where(q_mask[None, :, None] & d_mask[:, None, :], s, 0.0)
    return knrm_scores(s, q_mask, d_mask, extra["w"], float(extra["b"]))
  x = np.where(d_mask[:, None, :], s, -np.inf)
  if variant == "salience":
    j = np.argmax(x, axis=-1)  # first maximum: ties to the lower index
    top = np.take_along_axis(s, j[..., None], -1)[..., 0]
    u_d = np.take_along_axis(extra["d_sal"], j, axis=-1)  # [c, n]
    w = u_d * extra["q_sal"][None, :] * q_mask[None, :] * d_mask.any(-1)[:, None]
    return _safe_ratio(np.sum(w * top, -1), np.sum(w, -1))
  desc = -np.sort(-x, axis=-1)
  count = si.counts(variant, d_mask.sum(-1))  # [c]
  chosen = (np.arange(s.shape[-1])[None, None, :] < count[:, None, None]) & q_mask[None, :, None]
  num = np.sum(np.where(chosen, desc, 0.0), axis=(1, 2))
  return _safe_ratio(num, count * q_mask.sum())


def reference(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  variant = params["variant"]
  if variant == "gemm":
    return lambda: inputs["a"].astype(np.float64) @ inputs["b"].astype(np.float64)
  q, d = inputs["q"].astype(np.float64), inputs["d"]
  B, K, m, h = d.shape

  def run():
    out = np.zeros((B, K))
    for b in range(B):
      for k0 in range(0, K, REF_CHUNK):
        dd = d[b, k0:k0 + REF_CHUNK].astype(np.float64)
        c = len(dd)
        s = np.swapaxes((dd.reshape(c * m, h) @ q[b].T).reshape(c, m, -1), 1, 2)
        extra = {}
        if variant == "salience":
          extra = {"q_sal": inputs["q_sal"][b].astype(np.float64),
                   "d_sal": inputs["d_sal"][b, k0:k0 + c].astype(np.float64)}
        elif variant == "lite":
          extra = {"tree": _cast_tree(si.lite_param_tree(inputs), np.float64)}
        elif variant == "knrm":
          extra = {"w": inputs["w"].astype(np.float64), "b": inputs["b"]}
        out[b, k0:k0 + c] = _reference_block(variant, s, inputs["q_mask"][b],
                                             inputs["d_mask"][b, k0:k0 + c], extra)
    return out

  return run


# ------------------------------------------------------------------------------------------
# Timed NumPy peers (float32).


def einsum_naive(params, inputs):
  """MaxSim with `np.einsum` as a user writes it: S [K, n, m], masked max over m, mean."""
  if params["variant"] != "top_k:1":
    raise ValueError("einsum_naive implements top_k:1 (MaxSim) only")
  q, q_mask, d, d_mask = (inputs[k] for k in ("q", "q_mask", "d", "d_mask"))

  def run():
    out = np.empty(d.shape[:2], np.float32)
    for b in range(len(q)):
      s = np.einsum("nh,kmh->knm", q[b], d[b])
      s = np.where(d_mask[b][:, None, :], s, -np.inf)
      out[b] = s.max(-1) @ q_mask[b].astype(np.float32) / q_mask[b].sum()
    return out

  return run


def blas_flat(params, inputs):
  """One flat GEMM per query, masking in place, then the variant's reduction over m."""
  variant = params["variant"]
  q, q_mask, d, d_mask = (inputs[k] for k in ("q", "q_mask", "d", "d_mask"))
  B, K, m, h = d.shape
  qf = q_mask.astype(np.float32)
  tree = _cast_tree(si.lite_param_tree(inputs), np.float32) if variant == "lite" else None
  k = si.alignment_k(variant) if variant not in ("lite", "knrm") else None

  def one(b):
    s = d[b].reshape(K * m, h) @ q[b].T  # [K·m, n]
    if variant in ("lite", "knrm"):
      s[~d_mask[b].ravel()] = 0.0
      s = np.swapaxes(s.reshape(K, m, -1), 1, 2) * qf[b][None, :, None]  # [K, n, m]
      if variant == "lite":
        return np.concatenate([lite_scores(s[i:i + REF_CHUNK], tree)
                               for i in range(0, K, REF_CHUNK)])
      return knrm_scores(s, q_mask[b], d_mask[b], inputs["w"], inputs["b"])
    s[~d_mask[b].ravel()] = -np.inf
    s = s.reshape(K, m, -1)
    n_valid = q_mask[b].sum()
    if variant == "top_k:1":
      return s.max(1) @ qf[b] / n_valid
    if variant == "salience":
      j = s.argmax(1)  # [K, n]
      top = np.take_along_axis(s, j[:, None, :], 1)[:, 0]
      w = np.take_along_axis(inputs["d_sal"][b], j, 1) * inputs["q_sal"][b][None, :]
      return _safe_ratio((w * top).sum(1), w.sum(1)).astype(np.float32)
    count = si.counts(variant, d_mask[b].sum(-1))  # [K]
    top_c = k if k is not None else si.max_count(variant, m)
    vals = np.partition(s, m - top_c, axis=1)[:, m - top_c:, :]  # [K, top_c, n]
    if k is None:  # top_p: keep the `count` largest of the top_c
      vals = -np.sort(-vals, axis=1)
      vals = np.where(np.arange(top_c)[None, :, None] < count[:, None, None], vals, 0.0)
    vals = np.where(np.isfinite(vals), vals, 0.0)
    return (vals.sum(1) @ qf[b] / (n_valid * count)).astype(np.float32)

  return lambda: np.stack([one(b) for b in range(B)])


def gemm(params, inputs):
  a, b = inputs["a"], inputs["b"]
  return lambda: a @ b
