"""Direct calls of the public scorers against the same calls inside the caller's own `jax.jit`.

The library compiles its scorers where they are defined, so calling
`aligner_jax.scoring.align_scores(q, q_mask, d, d_mask, "top_k:1")` as the README shows should
cost what `jax.jit(lambda ...: align_scores(...))` costs; the goal is a ratio ≤ 1.1 for every
alignment, LITE, KNRM and the salience LP. Both calls run in one process on the same device
arrays, interleaved (direct, jitted, jitted, direct, ...) after a compile and a warm-up call
each, so the machine's drift hits both alike. Reported: median ms of each and their ratio.

Shapes: one query (n = 32, h = 128) against K = 1000 candidates of m = 256 tokens for the
alignments (K = 100 for da, whose LP is ~10x the work); all-pairs `align_scores` with 8 queries
against 256 documents; LITE (m₂ = 2400, m₁ = 360) and KNRM on 100 matrices of 32 × 180;
`salience_lp`, `lp_gate` and `prune_tokens` on [256, 256] rows.

  python -m bench.bench_direct_calls [--runs 9] [--only top_k] [--out DIR]
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import numpy as np

from aligner_jax import io
from aligner_jax import scoring
from aligner_jax.scoring.knrm import knrm
from bench import harness

OUT_DIR = harness.RESULTS_DIR / "direct_calls"
GOAL = 1.1
ALIGNMENTS = ("top_k:1", "top_k:4", "top_p:0.02", "da:k=4,eps=0.002", "cls", "me_bert:4",
              "coil")


def _unit(rng, shape):
  x = rng.standard_normal(shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _candidates(rng, spec, saliences=False):
  """(callable taking the arrays, arrays) for align_scores_candidates."""
  k = 100 if spec.startswith("da") else 1000
  arrays = dict(q=_unit(rng, (1, 32, 128)), q_mask=rng.random((1, 32)) < 0.8,
                d=_unit(rng, (1, k, 256, 128)), d_mask=rng.random((1, k, 256)) < 0.8)
  if spec == "coil":
    arrays.update(q_ids=rng.integers(0, 50, (1, 32)), d_ids=rng.integers(0, 50, (1, k, 256)))
  if saliences:
    arrays.update(q_salience=rng.random((1, 32)).astype(np.float32),
                  d_salience=rng.random((1, k, 256)).astype(np.float32))
  return lambda **a: scoring.align_scores_candidates(alignment=spec, **a), arrays


def _all_pairs(rng):
  arrays = dict(q=_unit(rng, (8, 32, 128)), q_mask=rng.random((8, 32)) < 0.8,
                d=_unit(rng, (256, 256, 128)), d_mask=rng.random((256, 256)) < 0.8)
  return lambda **a: scoring.align_scores(alignment="top_k:1", **a), arrays


def _lite(rng):
  model = scoring.LiteScorer(32, 180, row_width=2400, col_width=360)
  s = rng.standard_normal((100, 32, 180)).astype(np.float32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), s[:1]))
  arrays = dict(params=params, s=s, q_mask=rng.random((100, 32)) < 0.8,
                d_mask=rng.random((100, 180)) < 0.8)
  return lambda params, s, q_mask, d_mask: model.apply(params, s, q_mask, d_mask), arrays


def _knrm(rng):
  arrays = dict(s=np.tanh(rng.standard_normal((100, 32, 180))).astype(np.float32),
                q_mask=rng.random((100, 32)) < 0.8, d_mask=rng.random((100, 180)) < 0.8,
                w=rng.standard_normal(11).astype(np.float32))
  return lambda s, q_mask, d_mask, w: knrm(s, q_mask, d_mask, w, 0.5), arrays


def _rows(rng):
  return dict(x=rng.standard_normal((256, 256)).astype(np.float32),
              mask=rng.random((256, 256)) < 0.8)


def cases(rng):
  """name -> (function of keyword arrays, arrays)."""
  out = {f"align_scores_candidates {spec}": _candidates(rng, spec) for spec in ALIGNMENTS}
  out["align_scores_candidates top_k:1 + saliences"] = _candidates(rng, "top_k:1", True)
  out["align_scores top_k:1 (8 x 256 documents)"] = _all_pairs(rng)
  out["LiteScorer separable (100 matrices)"] = _lite(rng)
  out["knrm (100 matrices)"] = _knrm(rng)
  out["salience_lp k=50"] = (lambda x, mask: scoring.salience_lp(x, mask, 50), _rows(rng))
  out["lp_gate k=50"] = (lambda x, mask: scoring.lp_gate(x, mask, 50), _rows(rng))
  out["prune_tokens 0.5"] = (lambda x, mask: scoring.prune_tokens(mask, x, 0.5), _rows(rng))
  return out


def _time(fn, arrays) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(**arrays))
  return time.perf_counter() - start


def measure(fn, arrays, runs: int) -> dict:
  """Median seconds of the direct and the jitted call, interleaved."""
  arrays = jax.device_put(arrays)
  jitted = jax.jit(fn)
  for call in (fn, jitted, fn, jitted):  # compile, then warm up
    _time(call, arrays)
  direct, wrapped = [], []
  for i in range(runs):
    order = ((fn, direct), (jitted, wrapped)) if i % 2 == 0 else ((jitted, wrapped), (fn, direct))
    for call, times in order:
      times.append(_time(call, arrays))
  return {"direct_ms": 1e3 * statistics.median(direct),
          "jitted_ms": 1e3 * statistics.median(wrapped),
          "ratio": statistics.median(direct) / statistics.median(wrapped)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=9)
  parser.add_argument("--only", default="", help="substring of the case names to run")
  parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
  args = parser.parse_args(argv)
  record = {"goal_ratio": GOAL, "runs": args.runs, "machine": harness.machine_info(),
            "loadavg_before": list(os.getloadavg()), "cases": {}}
  print(f"{'case':<48s} {'direct ms':>10s} {'jitted ms':>10s} {'ratio':>6s}")
  for name, (fn, arrays) in cases(np.random.default_rng(0)).items():
    if args.only not in name:
      continue
    row = measure(fn, arrays, args.runs)
    record["cases"][name] = row
    print(f"{name:<48s} {row['direct_ms']:10.2f} {row['jitted_ms']:10.2f} {row['ratio']:6.2f}",
          flush=True)
  record["loadavg_after"] = list(os.getloadavg())
  args.out.mkdir(parents=True, exist_ok=True)
  io.write_json(args.out / "direct_calls.json", record)
  worst = max((row["ratio"] for row in record["cases"].values()), default=1.0)
  print(f"worst ratio {worst:.2f} (goal <= {GOAL})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
