"""Quick timing of the alignment scorers' layout choices (not the project benchmark).

Times, on one query against K candidates (n = 32, m = 256, h = 128, 80 % valid tokens):
  * `align_scores_candidates` fast path per alignment spec, with and without saliences, next to
    a plain flat-GEMM MaxSim (the lower bound for top_k:1) and the naive `kqm` einsum layout;
  * the fast path's chunk size;
  * the dense reference path (explicit S, Ã, A) for comparison;
  * `salience_lp` exact vs Eq. (5) iterations on [256, 256] rows;
  * forward + backward of the in-batch training shape.
Every timed function is checked against the dense path first. Median of `--runs` calls after one
compile call and one warm-up call.

  python -m bench.bench_scorers_quick [--candidates 1000] [--runs 5]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax import scoring


def timed(fn, *args, runs: int) -> float:
  """Median wall time in ms of `fn(*args)` (blocking), after a compile and a warm-up call."""
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def make_inputs(num_candidates: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  n, m, h = 32, 256, 128
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  q = unit(rng.standard_normal((1, n, h))).astype(np.float32)
  d = unit(rng.standard_normal((1, num_candidates, m, h))).astype(np.float32)
  q_mask = rng.random((1, n)) < 0.8
  d_mask = rng.random((1, num_candidates, m)) < 0.8
  q_sal = rng.random((1, n)).astype(np.float32)
  d_sal = rng.random((1, num_candidates, m)).astype(np.float32)
  return [jnp.asarray(x) for x in (q, q_mask, d, d_mask, q_sal, d_sal)]


def flat_maxsim(q, q_mask, d, d_mask):
  """Unchunked MaxSim as one (K·m, h) @ (h, n) GEMM with a masked max: the top_k:1 floor."""
  _, k, m, h = d.shape
  s = (d.reshape(k * m, h) @ q[0].T).reshape(k, m, -1)
  best = jnp.max(jnp.where(d_mask[0][:, :, None], s, -jnp.inf), axis=1)
  return (jnp.sum(jnp.where(q_mask[0], best, 0.0), -1) / jnp.sum(q_mask[0]))[None]


def naive_maxsim(q, q_mask, d, d_mask):
  """The `einsum('kmh,nh->knm')` layout with a last-axis max."""
  s = jnp.einsum("kmh,nh->knm", d[0], q[0])
  best = jnp.max(jnp.where(d_mask[0][:, None, :], s, -jnp.inf), axis=-1)
  return (jnp.sum(jnp.where(q_mask[0], best, 0.0), -1) / jnp.sum(q_mask[0]))[None]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--candidates", type=int, default=1000)
  parser.add_argument("--runs", type=int, default=5)
  args = parser.parse_args(argv)
  q, q_mask, d, d_mask, q_sal, d_sal = make_inputs(args.candidates)
  rows = []

  def record(name, fn, *inputs, check=None):
    if check is not None:
      np.testing.assert_allclose(np.asarray(fn(*inputs)), np.asarray(check), rtol=2e-4,
                                 atol=2e-4, err_msg=name)
    rows.append((name, timed(fn, *inputs, runs=args.runs)))
    print(f"{name:<44s} {rows[-1][1]:9.1f} ms", flush=True)

  def candidates(spec, *, method="fast", chunk_size=None, saliences=False):
    def fn(q, qm, d, dm, qs, ds):
      kw = dict(q_salience=qs, d_salience=ds) if saliences else {}
      return scoring.align_scores_candidates(q, qm, d, dm, spec, method=method,
                                             chunk_size=chunk_size, **kw)
    return jax.jit(fn)

  inputs = (q, q_mask, d, d_mask, q_sal, d_sal)
  print(f"one query, K={args.candidates} candidates, n=32, m=256, h=128; median of {args.runs}")
  reference = np.asarray(candidates("top_k:1", method="dense")(*inputs))
  record("flat GEMM MaxSim (unchunked floor)", jax.jit(flat_maxsim), *inputs[:4], check=reference)
  record("naive einsum('kmh,nh->knm') MaxSim", jax.jit(naive_maxsim), *inputs[:4],
         check=reference)
  for spec in ("top_k:1", "top_k:4", "top_p:0.02", "top_p:0.1", "da:k=4,eps=0.002"):
    for saliences in (False, True):
      want = candidates(spec, method="dense", saliences=saliences)(*inputs)
      label = f"fast {spec}" + (" + saliences" if saliences else "")
      record(label, candidates(spec, saliences=saliences), *inputs, check=want)
  for chunk in (1, 8, 32, 128, args.candidates):
    record(f"fast top_k:1 chunk_size={chunk}", candidates("top_k:1", chunk_size=chunk), *inputs,
           check=reference)
  record("dense top_k:1 (explicit S, Ã, A)", candidates("top_k:1", method="dense"), *inputs)

  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.standard_normal((256, 256)), jnp.float32)
  mask = jnp.asarray(rng.random((256, 256)) < 0.8)
  for iters in (None, 10, 100):
    fn = jax.jit(lambda s, m, it=iters: scoring.salience_lp(s, m, 50, eps=0.002, num_iters=it))
    record(f"salience_lp [256, 256] k=50 num_iters={iters}", fn, s, mask)

  # In-batch training shape: 32 queries x 64 documents, forward + backward.
  rng = np.random.default_rng(2)
  tq = jnp.asarray(rng.standard_normal((32, 32, 128)), jnp.float32)
  td = jnp.asarray(rng.standard_normal((64, 128, 128)), jnp.float32)
  tqm, tdm = jnp.ones((32, 32), bool), jnp.asarray(rng.random((64, 128)) < 0.8)
  for spec in ("top_k:1", "top_k:4"):
    loss = lambda q, d, spec=spec: jnp.sum(scoring.align_scores(q, tqm, d, tdm, spec))  # noqa
    record(f"train fwd+bwd {spec} [32x32] vs [64x128]", jax.jit(jax.grad(loss, (0, 1))), tq, td)
  return rows


if __name__ == "__main__":
  main()
