"""Scorer benchmark: `align_scores_candidates`, LITE and KNRM against NumPy, PyTorch and plain JAX.

`aligner_jax_direct` calls `align_scores_candidates` without a `jax.jit` of its own, as the README
does; `bench_direct_calls.py` puts the two side by side in one process for a tighter ratio.

One query (B = 1) against its K candidates of m tokens, width h = 128, for n ∈ {32, 64},
m ∈ {180, 256}, K ∈ {100, 1000}, plus ragged lengths; the same run times a plain float32 GEMM of
the MaxSim shape (K·m, h) @ (h, n) and a square 1024³ GEMM in NumPy, PyTorch and JAX; the best
GFLOP/s among them is the GEMM peak that every scorer's GFLOP/s is compared with. GFLOP/s
counts the similarity GEMM over valid tokens (plus LITE's MLPs), so the selection work of
top_k / top_p / salience and KNRM's kernels is time without FLOPs.

  python -m bench.bench_scorers [--quick] [--only 'top_k:4']
"""

import itertools
import sys
from typing import Any

from bench import harness
from bench.impls import scorer_inputs

INPUTS = "bench.impls.scorer_inputs:make_inputs"
REFERENCE = harness.Impl("numpy_float64_sort", "bench.impls.numpy_scorers:reference", "numpy")
NUMPY_EINSUM = harness.Impl("numpy_einsum", "bench.impls.numpy_scorers:einsum_naive", "numpy")
NUMPY_BLAS = harness.Impl("numpy_blas_flat", "bench.impls.numpy_scorers:blas_flat", "numpy")
TORCH = harness.Impl("torch_pylate_einsum", "bench.impls.torch_scorers:colbert_einsum", "torch")
JAX_FLAT = harness.Impl("jax_flat_gemm", "bench.impls.jax_scorers:flat_gemm", "jax")
PROJECT = harness.Impl("aligner_jax", "bench.impls.project_scorers:align_candidates", "jax",
                       project=True)
PROJECT_DIRECT = harness.Impl("aligner_jax_direct",
                              "bench.impls.project_scorers:align_candidates_direct", "jax",
                              project=True)
PROJECT_LITE = harness.Impl("aligner_jax", "bench.impls.project_scorers:lite", "jax",
                            project=True)
PROJECT_KNRM = harness.Impl("aligner_jax", "bench.impls.project_scorers:knrm_scores", "jax",
                            project=True)
GEMMS = (harness.Impl("numpy_gemm", "bench.impls.numpy_scorers:gemm", "numpy"),
         harness.Impl("torch_gemm", "bench.impls.torch_scorers:gemm", "torch"),
         harness.Impl("jax_gemm", "bench.impls.jax_scorers:gemm", "jax"))

TOP_P = "top_p:0.02"
VARIANTS = ("top_k:1", "top_k:4", TOP_P, "salience", "lite", "knrm")
GROUPS = {"top_k:1": "top_k:1 (MaxSim)", "top_k:4": "top_k:4", TOP_P: TOP_P,
          "salience": "top_k:1 with saliences", "lite": "LITE separable (m2=2400, m1=360)",
          "knrm": "KNRM (11 kernels)"}
# LITE's widths on MS MARCO (LITE App. A.1): row MLP m₂ = 2400, column MLP m₁ = 360.
LITE_WIDTHS = {"row_width": 2400, "col_width": 360}
# The MaxSim-shaped GEMM writes its whole [K·m, n] output to memory, which a fused scorer never
# does; a square GEMM of about the same FLOPs (2·1024³ ≈ 2.1 GFLOP) is the compute-bound peak.
SQUARE = 1024
TOLERANCE = {"lite": (1e-3, 1e-3), "knrm": (1e-3, 1e-2), "gemm": (1e-4, 1e-3)}
H = 128


def impls_for(variant: str, einsum: bool = True) -> tuple[harness.Impl, ...]:
  if variant == "top_k:1":
    return ((NUMPY_EINSUM,) if einsum else ()) + (NUMPY_BLAS, TORCH, JAX_FLAT, PROJECT,
                                                  PROJECT_DIRECT)
  if variant == "lite":
    return (NUMPY_BLAS, TORCH, PROJECT_LITE)
  if variant == "knrm":
    return (NUMPY_BLAS, TORCH, PROJECT_KNRM)
  return (NUMPY_BLAS, TORCH, JAX_FLAT, PROJECT, PROJECT_DIRECT)


def cell(variant: str, n: int, m: int, K: int, ragged: bool = False,
         square: int | None = None, einsum: bool = True) -> harness.Cell:
  params: dict[str, Any] = {"variant": variant, "B": 1, "n": n, "m": m, "K": K, "h": H,
                            "ragged": ragged, "seed": 0}
  if variant == "lite":
    params.update(LITE_WIDTHS)
  rtol, atol = TOLERANCE.get(variant, (None, None))
  if variant == "gemm":
    label = f"GEMM ({K * m}, {H}) @ ({H}, {n})"
    if square:
      params["gemm_shape"] = [square, square, square]
      label = f"GEMM ({square}, {square}) @ ({square}, {square})"
    return harness.Cell(label, params, GEMMS, REFERENCE, flops=scorer_inputs.flops(params),
                        role="peak", group="GEMM peak", rtol=rtol, atol=atol)
  label = f"{variant} n={n} m={m} K={K}" + (" ragged" if ragged else "")
  return harness.Cell(label, params, impls_for(variant, einsum), REFERENCE,
                      flops=scorer_inputs.flops(params), group=GROUPS[variant], rtol=rtol,
                      atol=atol)


def build(quick: bool) -> harness.Benchmark:
  if quick:
    # The goal cells at their sizes; every implementation still runs (numpy_einsum in the
    # K = 100 cell, where one call takes tens of ms instead of ~1 s), LITE and KNRM on 20
    # candidates (their cost is the MLPs / kernels, linear in K).
    cells = [cell("gemm", 32, 256, 1000, square=SQUARE),
             cell("top_k:1", 32, 256, 1000, einsum=False),
             cell("top_k:1", 32, 180, 100, ragged=True),
             cell("top_k:4", 32, 256, 1000),
             cell(TOP_P, 32, 180, 100),
             cell("salience", 32, 180, 100, ragged=True),
             cell("lite", 32, 180, 20),
             cell("knrm", 32, 180, 20)]
  else:
    cells = [cell("gemm", n, 256, 1000) for n in (32, 64)]
    cells.append(cell("gemm", 32, 256, 1000, square=SQUARE))
    for variant in VARIANTS:
      for n, m, K in itertools.product((32, 64), (180, 256), (100, 1000)):
        cells.append(cell(variant, n, m, K))
      cells += [cell(variant, 32, 256, 1000, ragged=True),
                cell(variant, 64, 180, 100, ragged=True)]
  return harness.Benchmark(
      name="scorers",
      description=("One query against its K candidates (B = 1, h = 128, float32, CPU). "
                   "Ragged: document lengths uniform in [m/8, m], query lengths in [n/2, n]. "
                   "Scores follow the project's Σ S⊙A / Σ A (top-k means); the peers divide "
                   "their sums by the same count. GFLOP/s counts the similarity GEMM over valid "
                   "tokens (+ LITE's MLPs)."),
      inputs=INPUTS, cells=tuple(cells), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
  harness.main(build, sys.argv[1:])
