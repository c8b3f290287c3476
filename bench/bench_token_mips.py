"""Token MIPS benchmark (first pass): the project's ScaNN backend against FAISS, on real vectors.

Searches all-MiniLM-L6-v2 token vectors of SciFact documents (384-d, L2-normalised;
bench/minilm_vectors.py) with query token vectors of the SciFact test queries, for the k = K′
best inner products. Reported per operating point: recall of the exact top-K′ (NumPy brute
force, the reference), queries per second (median of the timed calls, all query vectors in
one batched call, all cores), build time and bytes per vector of the serialised index. FAISS
(faiss-cpu, a bench-only dependency) runs IVF-PQ 4-bit fast-scan with an SQ8 refinement copy,
HNSW32 and exact flat search; each operating point runs in its own process, built indexes are
cached (bench/impls/mips.py).

  python -m bench.bench_token_mips [--quick]

Quick: the first 25,000 token vectors (about 100 documents) and 200 query vectors; full: the
whole corpus (about 1.3M vectors; the first run encodes it, which takes long on 2 cores) and
1,000 query vectors.
"""

import subprocess
import sys

from bench import harness

INPUTS = "bench.impls.mips:make_inputs"
K = 1000
REFERENCE = harness.Impl("numpy_exact", "bench.impls.mips:exact", "numpy")


def _impl(name, fn, framework, project=False, **options):
  return harness.Impl(name, f"bench.impls.mips:{fn}", framework, project=project,
                      options=options)


def impls() -> tuple[harness.Impl, ...]:
  return (
      _impl("aligner_jax scann default", "scann", "scann", project=True),
      _impl("aligner_jax scann leaves 10%", "scann", "scann", project=True,
            leaves_fraction=0.1),
      _impl("aligner_jax scann leaves 30%", "scann", "scann", project=True,
            leaves_fraction=0.3),
      _impl("faiss ivfpq4fs+sq8 nprobe 8", "ivfpq", "faiss", nprobe=8),
      _impl("faiss ivfpq4fs+sq8 nprobe 32", "ivfpq", "faiss", nprobe=32),
      _impl(f"faiss hnsw32 ef {K}", "hnsw", "faiss", ef_search=K),
      _impl(f"faiss hnsw32 ef {2 * K}", "hnsw", "faiss", ef_search=2 * K),
      _impl("faiss flat (exact)", "flat", "faiss"),
  )


def dataset(quick: bool) -> dict:
  if quick:
    return {"cache_docs": 400, "base_vectors": 25_000, "queries": 200}
  return {"cache_docs": 0, "base_vectors": 10 ** 9, "queries": 1000}


def build(quick: bool) -> harness.Benchmark:
  data = dataset(quick)
  params = {**data, "k": K, "seed": 0}
  size = "25k" if quick else "all"
  cell = harness.Cell(f"K'={K} base={size} Q={data['queries']}", params, impls(), REFERENCE,
                      group="token MIPS", items=data["queries"])
  return harness.Benchmark(
      name="token_mips",
      description=("Top-K′ inner-product search over MiniLM token vectors of SciFact "
                   "(384-d): recall R of the exact top-K′ and query vectors per second."),
      inputs=INPUTS, cells=(cell,), check="recall", min_recall=0.2)


def main(argv=None):
  quick = "--quick" in (argv or [])
  docs = dataset(quick)["cache_docs"]
  # Encoding (JAX) runs in its own process before any timed worker starts.
  subprocess.run([sys.executable, "-m", "bench.minilm_vectors", "--docs", str(docs)],
                 cwd=harness.REPO_ROOT, env=harness.worker_env(), check=True,
                 stdout=subprocess.DEVNULL)
  return harness.main(build, argv)


if __name__ == "__main__":
  main(sys.argv[1:])
