"""PyTorch peers (CPU, float32), written from PyLate's `colbert_scores` formulation.

PyLate scores with one einsum over query and document tokens, `einsum('ash,bth->abst')`, then a
max over document tokens and a sum over query tokens. Here each query meets its own candidates
(`'bnh,bkmh->bknm'`), padded document tokens are filled with -inf before the max, and the sum is
divided by the number of valid query rows (the project's Σ S⊙A / Σ A). The other variants keep
the same layout and use `topk` / `argmax` over the last axis; LITE and KNRM use
`torch.nn.functional`.
Set-up converts the inputs to tensors outside timing; every call runs under `inference_mode`.
"""

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.impls import scorer_inputs as si


def _tensors(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()
          if isinstance(v, np.ndarray) and v.ndim > 0}


def _block(x, p):
  """LITE Eq. (3)/(4) on the last axis."""
  hid = F.relu(F.linear(x, p["dense_a"]["kernel"].T, p["dense_a"]["bias"]))
  hid = F.layer_norm(hid, hid.shape[-1:], p["norm_a"]["scale"], p["norm_a"]["bias"],
                     eps=si.LAYER_NORM_EPS)
  out = F.relu(F.linear(hid, p["dense_b"]["kernel"].T, p["dense_b"]["bias"]))
  return F.layer_norm(out, out.shape[-1:], p["norm_b"]["scale"], p["norm_b"]["bias"],
                      eps=si.LAYER_NORM_EPS)


def _tree(tree):
  if isinstance(tree, dict):
    return {k: _tree(v) for k, v in tree.items()}
  return torch.from_numpy(np.ascontiguousarray(tree))


def colbert_einsum(params: dict[str, Any], inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
  variant = params["variant"]
  t = _tensors(inputs)
  q, q_mask, d, d_mask = t["q"], t["q_mask"], t["d"], t["d_mask"]
  qf = q_mask.float()
  n_valid = qf.sum(-1, keepdim=True)  # [B, 1]
  m = d.shape[2]
  k = si.alignment_k(variant) if variant not in ("lite", "knrm") else None
  tree = _tree(si.lite_param_tree(inputs)) if variant == "lite" else None
  count = None
  if variant not in ("lite", "knrm"):
    count = torch.from_numpy(si.counts(variant, inputs["d_mask"].sum(-1))).float()  # [B, K]
  top_c = (k if k is not None else si.max_count(variant, m)) if count is not None else None

  @torch.inference_mode()
  def run():
    s = torch.einsum("bnh,bkmh->bknm", q, d)  # [B, K, n, m]
    if variant in ("lite", "knrm"):
      s = s * (q_mask[:, None, :, None] & d_mask[:, :, None, :])
      if variant == "lite":
        rows = _block(s, tree["row"])
        cols = _block(rows.transpose(-1, -2), tree["col"]).transpose(-1, -2)
        return cols.flatten(-2) @ tree["w"]
      phi = []
      df = d_mask[:, :, None, :].float()
      for mu, sigma in zip(si.KNRM_MUS, si.KNRM_SIGMAS):
        tf = (torch.exp(-(s - mu) ** 2 / (2.0 * sigma ** 2)) * df).sum(-1)  # [B, K, n]
        phi.append((torch.log(tf.clamp_min(si.KNRM_MIN_SOFT_TF)) * qf[:, None, :]).sum(-1))
      return torch.stack(phi, -1) @ t["w"] + float(inputs["b"])
    s = s.masked_fill(~d_mask[:, :, None, :], float("-inf"))
    if variant == "top_k:1":
      return (s.max(-1).values * qf[:, None, :]).sum(-1) / n_valid
    if variant == "salience":
      top, j = s.max(-1)  # [B, K, n]
      w = torch.gather(t["d_sal"], 2, j) * t["q_sal"][:, None, :]
      num, den = (w * top).sum(-1), w.sum(-1)
      return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    vals = s.topk(top_c, dim=-1).values  # [B, K, n, top_c], descending
    keep = torch.arange(top_c)[None, None, None, :] < count[:, :, None, None]
    vals = torch.where(keep & torch.isfinite(vals), vals, torch.zeros_like(vals))
    return (vals.sum(-1) * qf[:, None, :]).sum(-1) / (n_valid * count)

  return run


def gemm(params, inputs):
  a, b = torch.from_numpy(inputs["a"]), torch.from_numpy(inputs["b"])

  @torch.inference_mode()
  def run():
    return a @ b

  return run
