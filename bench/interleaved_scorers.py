"""MaxSim and top_k:4 scorer cells timed in ONE process, the implementations interleaved.

`bench_scorers.py` times every implementation in a fresh process, one after the other, so on a
shared machine the load can change between two implementations of one cell. Here the fastest
peers of those cells (NumPy's flat BLAS GEMM, the plain-JAX flat GEMM), the project's scorer
(`align_scores_candidates`, method "auto": the compiled CPU kernel when it is built) and its
chunked XLA path (method "fast") run in one process on the same inputs, round by round in a
rotating order, so the machine's drift hits them alike; the GEMM peak (a square 1024³ GEMM in
NumPy and JAX) is timed the same way. PyTorch is left out (it may not share a process with JAX,
and it was never the fastest peer of these cells). Every output is checked against NumPy's
before timing. OpenBLAS's threads sleep as soon as a call is done (`BLAS_ENV`),
so that none spins on a core the next implementation needs.

Reported per cell: median and minimum ms of each implementation, the project's speed-up over the
fastest peer, top_k:4 / top_k:1 of the project (its MaxSim timed in the same rounds of the
top_k:4 cell), and the project's GFLOP/s (valid-token FLOPs) as a fraction of the peak, each
from the medians and from the minima (on a loaded machine the minimum is the call that ran
least disturbed, and the steadier statistic); written to
`results/interleaved_scorers.json`.

  python -m bench.interleaved_scorers [--rounds 15] [--only 'K=100']
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import numpy as np

from aligner_jax import io
from bench import bench_scorers
from bench import harness
from bench.impls import jax_scorers
from bench.impls import numpy_scorers
from bench.impls import project_scorers
from bench.impls import scorer_inputs

OUT = harness.RESULTS_DIR / "interleaved_scorers.json"
# OpenBLAS's worker threads busy-wait for 2^28 cycles (about 0.1 s) after each call by default;
# in one process with the other implementations that spinning thread takes a core from whichever
# call runs next: half a core under normal scheduling, all of it under real-time scheduling
# (`chrt`), where a thread of equal priority that never blocks is not preempted. The project's
# kernel timed right after NumPy's GEMM took 3.0 ms instead of 1.75 (n=32 m=180 K=100, chrt -r
# 1). 2^4 cycles: the threads sleep as soon as their work is done; NumPy's own calls were as
# fast (3.09 vs 3.12 ms). Read when OpenBLAS loads, so `main` restarts the process to set it.
BLAS_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}
PEERS = {"numpy_blas_flat": numpy_scorers.blas_flat, "jax_flat_gemm": jax_scorers.flat_gemm}
PROJECT = {"aligner_jax": project_scorers.align_candidates,
           "aligner_jax_xla": project_scorers.align_candidates_xla}


def _cells(only: str) -> list[bench_scorers.harness.Cell]:
  cells = [c for c in bench_scorers.build(quick=False).cells
           if c.params["variant"] in ("top_k:1", "top_k:4")]
  return [c for c in cells if only in c.label]


def _interleave(calls: dict, rounds: int) -> dict[str, dict[str, float]]:
  """{"median": {name: s}, "min": {name: s}} of every call, timed round by round in a rotating
  order."""
  for call in calls.values():  # compile and warm up
    call()
    call()
  times = {name: [] for name in calls}
  names = list(calls)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      calls[name]()
      times[name].append(time.perf_counter() - start)
  return {"median": {name: statistics.median(t) for name, t in times.items()},
          "min": {name: min(t) for name, t in times.items()}}


def _peak(rounds: int) -> dict:
  params = {"variant": "gemm", "B": 1, "n": 32, "m": 256, "K": 1000, "h": bench_scorers.H,
            "gemm_shape": [bench_scorers.SQUARE] * 3, "seed": 0}
  inputs = scorer_inputs.make_inputs(params)
  calls = {"numpy_gemm": numpy_scorers.gemm(params, inputs),
           "jax_gemm": jax_scorers.gemm(params, inputs)}
  stats = _interleave(calls, rounds)
  flops = scorer_inputs.flops(params)
  out = {}
  for stat, secs in stats.items():
    best = min(secs, key=secs.get)
    out[stat] = {"impl": best, "gflops": flops / secs[best] / 1e9,
                 "ms": {k: 1e3 * v for k, v in secs.items()}}
  return out


def _scheduling() -> str:
  """This process's scheduling policy: "SCHED_RR priority 1" under `chrt -r 1`."""
  policy = os.sched_getscheduler(0)
  names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
  return f"{names.get(policy, policy)} priority {os.sched_getparam(0).sched_priority}"


def main(argv=None) -> int:
  if any(os.environ.get(key) != value for key, value in BLAS_ENV.items()):
    args = sys.argv[1:] if argv is None else list(argv)
    os.execve(sys.executable, [sys.executable, "-m", "bench.interleaved_scorers", *args],
              {**os.environ, **BLAS_ENV})
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--only", default="", help="substring of the cell labels to run")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  record = {"rounds": args.rounds, "machine": harness.machine_info(), "env": BLAS_ENV,
            "scheduling": _scheduling(), "loadavg_before": list(os.getloadavg()), "cells": {}}
  record["gemm_peak"] = _peak(args.rounds)
  peak = {stat: row["gflops"] for stat, row in record["gemm_peak"].items()}
  print(f"GEMM peak {peak['median']:.0f} GFLOP/s (median), {peak['min']:.0f} (min)", flush=True)
  for cell in _cells(args.only):
    inputs = scorer_inputs.make_inputs(cell.params)
    calls = {name: fn(cell.params, inputs) for name, fn in {**PEERS, **PROJECT}.items()}
    if cell.params["variant"] == "top_k:4":  # MaxSim on the same inputs, in the same rounds
      calls["aligner_jax_top1"] = project_scorers.align_candidates(
          dict(cell.params, variant="top_k:1"), inputs)
    want = np.asarray(calls["numpy_blas_flat"](), np.float64)
    for name, call in calls.items():
      if name == "aligner_jax_top1":
        continue
      got = np.asarray(call(), np.float64)
      if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise SystemExit(f"{cell.label}: {name} disagrees with numpy_blas_flat "
                         f"(max |diff| {np.max(np.abs(got - want)):.2e})")
    stats = _interleave(calls, args.rounds)
    row = {"loadavg": list(os.getloadavg())}
    text = []
    for stat, secs in stats.items():
      fastest = min(PEERS, key=secs.get)
      part = {"ms": {k: 1e3 * v for k, v in secs.items()}, "fastest_peer": fastest,
              "speedup": secs[fastest] / secs["aligner_jax"],
              "speedup_xla": secs[fastest] / secs["aligner_jax_xla"],
              "peak_fraction": cell.flops / secs["aligner_jax"] / 1e9 / peak[stat]}
      if "aligner_jax_top1" in secs:
        part["top4_over_top1"] = secs["aligner_jax"] / secs["aligner_jax_top1"]
      row[stat] = part
      text.append(f"{stat}: " + " ".join(f"{k} {v:.2f}" for k, v in part["ms"].items())
                  + f" | x{part['speedup']:.2f} (xla x{part['speedup_xla']:.2f}) "
                  f"{100 * part['peak_fraction']:.0f}% peak"
                  + (f" top4/top1 {part['top4_over_top1']:.2f}" if "top4_over_top1" in part
                     else ""))
    record["cells"][cell.label] = row
    print(f"{cell.label} (load {row['loadavg'][0]:.1f})\n  " + "\n  ".join(text), flush=True)
  record["loadavg_after"] = list(os.getloadavg())
  io.write_json(args.out, record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
