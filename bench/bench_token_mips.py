"""Token MIPS benchmark: the project's ScaNN backend against FAISS IVF-PQ at matched recall.

Searches all-MiniLM-L6-v2 token vectors of SciFact documents (384-d, L2-normalised) with
query token vectors of the SciFact test queries for the k = K′ best inner products. Each
operating point (a method and its search parameters) runs in its own process; built indexes
are cached (bench/impls/mips.py). Reported per point: recall of the exact top-K′ (NumPy brute
force, the reference), query vectors per second (median of the timed calls, all query vectors
in one batched call, all cores), build time and bytes per vector of the serialised index.
Then, per method, the best queries/s among its points that reach recall 0.90 and 0.95 (no
interpolation), and the project's ratio over FAISS IVF-PQ at each recall.

Full mode: all ≈1.24M token vectors of the shared encode-job cache (`--encoded-dir`, default
/work/cache/minilm/scifact, 256 tokens per document; regenerate it with the encode job, see
bench/README.md), K′ = 1,000 (K′ = 4,000 over the whole
sweep did not fit the time on this 2-core machine); 300 query token vectors per call.
Operating points:
  ScaNN   the project's defaults: √n leaves, 2 dimensions per 4-bit AH code, leaves searched
          and reorder pool swept. ScaNN holds the codes two per byte in memory, as FAISS's
          4-bit PQ codes + SQ8 refinement copy are held; on disk they are one per byte, the
          layout ScaNN loads (h / 4 bytes per vector more than packed; see
          aligner_jax/index/backends.py);
  FAISS   "IVF{√n},PQ192x4fs,Refine(SQ8)", nprobe and k_factor (refinement pool) swept.
  HNSW    "HNSW32" over the float32 vectors (no compression, ≈ 1.8 kB per vector; built in
          about 3 minutes), ef_search swept: the graph-search reference point.
Quick mode: the first 25,000 vectors of the bench's 400-document cache, 200 query vectors.

  python -m bench.bench_token_mips [--quick] [--encoded-dir DIR] [--runs 5] [--warmup 1]
"""

import math
import pathlib
import subprocess
import sys
from typing import Any

from aligner_jax.io import atomic_output
from bench import harness

INPUTS = "bench.impls.mips:make_inputs"
K = 1000
QUICK_K = 1000
DEFAULT_ENCODED_DIR = "/work/cache/minilm/scifact"
RECALL_TARGETS = (0.90, 0.95)
FULL_BASE = 1_300_000  # above the corpus size: every vector
FULL_QUERIES = 300
# (leaves searched of √n ≈ 1,115, reorder pool factor) and (nprobe of √n lists, k_factor).
FULL_SCANN = ((20, 1.5), (30, 1.5), (40, 2.0), (60, 2.0), (80, 2.0), (120, 2.0), (160, 2.0),
              (60, 4.0))
FULL_FAISS = ((16, 1.5), (24, 1.5), (16, 2.0), (24, 2.0), (32, 2.0), (48, 2.0), (64, 2.0),
              (128, 2.0), (256, 2.0), (64, 4.0))
FULL_HNSW_EF = (1000, 1500, 2500)  # ef_search ≥ K′
REFERENCE = harness.Impl("numpy_exact", "bench.impls.mips:exact", "numpy")


def _impl(name, fn, framework, project=False, **options):
  return harness.Impl(name, f"bench.impls.mips:{fn}", framework, project=project,
                      options=options)


def quick_impls() -> tuple[harness.Impl, ...]:
  return (
      _impl("aligner_jax scann default", "scann", "scann", project=True),
      _impl("aligner_jax scann leaves 10%", "scann", "scann", project=True,
            leaves_fraction=0.1),
      _impl("aligner_jax scann leaves 30%", "scann", "scann", project=True,
            leaves_fraction=0.3),
      _impl("faiss ivfpq4fs+sq8 nprobe 8", "ivfpq", "faiss", nprobe=8),
      _impl("faiss ivfpq4fs+sq8 nprobe 32", "ivfpq", "faiss", nprobe=32),
      _impl(f"faiss hnsw32 ef {QUICK_K}", "hnsw", "faiss", ef_search=QUICK_K),
      _impl("faiss flat (exact)", "flat", "faiss"),
  )


def full_impls(n: int) -> tuple[harness.Impl, ...]:
  nlist = int(round(math.sqrt(n)))
  out = [_impl("aligner_jax scann default", "scann", "scann", project=True)]
  out += [_impl(f"aligner_jax scann leaves {leaves} reorder {factor:g}", "scann", "scann",
                project=True, leaves_to_search=leaves, reorder_factor=factor)
          for leaves, factor in FULL_SCANN]
  out += [_impl(f"faiss ivfpq4fs+sq8 nprobe {nprobe} kf {kf:g}", "ivfpq", "faiss",
                nlist=nlist, nprobe=nprobe, k_factor=kf)
          for nprobe, kf in FULL_FAISS]
  out += [_impl(f"faiss hnsw32 ef {ef}", "hnsw", "faiss", ef_search=ef) for ef in FULL_HNSW_EF]
  return tuple(out)


def corpus_tokens(encoded_dir: str) -> int:
  import json
  total = 0
  for d in sorted(pathlib.Path(encoded_dir).glob("corpus-*-of-*")):
    total += json.loads((d / "manifest.json").read_text())["counts"]["tokens"]
  if not total:
    raise SystemExit(f"{encoded_dir}: no encoded corpus (corpus-*-of-*/manifest.json); run the "
                     "encode job first (bench/README.md)")
  return total


def build(quick: bool, encoded_dir: str = DEFAULT_ENCODED_DIR) -> harness.Benchmark:
  if quick:
    params = {"cache_docs": 400, "base_vectors": 25_000, "queries": 200, "k": QUICK_K,
              "seed": 0}
    cell = harness.Cell(f"K'={QUICK_K} base=25k Q=200", params, quick_impls(), REFERENCE,
                        group="token MIPS", items=200)
  else:
    n = corpus_tokens(encoded_dir)
    params = {"encoded_dir": encoded_dir, "base_vectors": FULL_BASE, "queries": FULL_QUERIES,
              "k": K, "seed": 0}
    cell = harness.Cell(f"K'={K} base={n} Q={FULL_QUERIES}", params, full_impls(n), REFERENCE,
                        group="token MIPS", items=FULL_QUERIES)
  return harness.Benchmark(
      name="token_mips",
      description=("Top-K′ inner-product search over MiniLM token vectors of SciFact "
                   "(384-d): recall R of the exact top-K′ and query vectors per second."),
      inputs=INPUTS, cells=(cell,), check="recall", min_recall=0.2)


def method(res: dict[str, Any]) -> str:
  """The method an operating point belongs to (its name up to the swept parameters)."""
  name = res["impl"]
  for marker in (" default", " leaves", " nprobe", " ef", " (exact)"):
    name = name.split(marker)[0]
  return name


def matched_recall(result: dict[str, Any]) -> dict[str, str]:
  """Per recall target: each method's best queries/s among points reaching it, and the
  project's ratio over FAISS IVF-PQ."""
  out = {}
  for cell in result["cells"]:
    points = [r for r in cell["results"] if r["status"] == "ok"]
    for target in RECALL_TARGETS:
      best = {}
      for r in points:
        if r["agreement"]["recall"] >= target and (
            method(r) not in best or r["per_second"] > best[method(r)]["per_second"]):
          best[method(r)] = r
      parts = [f"{m}: {r['per_second']:.0f}/s (R {r['agreement']['recall']:.3f}, "
               f"{r['info']['bytes_per_vector']:.0f} B/vec; {r['impl']})"
               for m, r in sorted(best.items())]
      project = [r for r in best.values() if r["project"]]
      faiss = [r for m, r in best.items() if "ivfpq" in m]
      if project and faiss:
        p = max(project, key=lambda r: r["per_second"])
        parts.append(f"project / FAISS IVF-PQ = {p['per_second'] / faiss[0]['per_second']:.2f}×")
      out[f"{cell['label']} at recall ≥ {target:.2f}"] = "; ".join(parts) or "no point reaches it"
  return out


def write_recall_plot(result: dict[str, Any], path: pathlib.Path) -> None:
  """Queries/s against recall of the exact top-K′, one line per method (written atomically)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for cell in result["cells"]:
    by_method: dict[str, list[tuple[float, float]]] = {}
    for r in cell["results"]:
      if r["status"] == "ok":
        by_method.setdefault(method(r), []).append((r["agreement"]["recall"], r["per_second"]))
    for name, pts in sorted(by_method.items()):
      pts.sort()
      bytes_ = next(r["info"]["bytes_per_vector"] for r in cell["results"]
                    if r["status"] == "ok" and method(r) == name)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
              label=f"{name} ({bytes_:.0f} B/vec)")
  for target in RECALL_TARGETS:
    ax.axvline(target, color="gray", linestyle="--", linewidth=1)
  ax.set_xlabel("recall of the exact top-K′")
  ax.set_ylabel("query vectors per second")
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  load = result["loadavg_before"][0]
  ax.set_title(f"token MIPS ({result['mode']}), {result['cells'][0]['label']}, load {load:.0f} "
               "on 2 cores", fontsize=8)
  fig.tight_layout()
  try:
    with atomic_output(path) as tmp:
      fig.savefig(tmp, dpi=110)
  finally:
    plt.close(fig)


def main(argv=None):
  argv = list(argv or [])
  quick = "--quick" in argv
  encoded_dir = DEFAULT_ENCODED_DIR
  if "--encoded-dir" in argv:
    i = argv.index("--encoded-dir")
    encoded_dir = argv[i + 1]
    del argv[i:i + 2]
  if quick:
    # Encoding (JAX) runs in its own process before any timed worker starts.
    subprocess.run([sys.executable, "-m", "bench.minilm_vectors", "--docs", "400"],
                   cwd=harness.REPO_ROOT, env=harness.worker_env(), check=True,
                   stdout=subprocess.DEVNULL)
  report_after = "--no-report" not in argv
  args = harness.parse_args(argv + ["--no-report"], "token MIPS")
  result = harness.main(lambda q: build(q, encoded_dir), argv + ["--no-report"])
  result["extra"].update(matched_recall(result))
  results_dir = pathlib.Path(args.results_dir)
  harness.write_result(results_dir / "token_mips.json", result)
  if report_after:
    from bench import report
    write_recall_plot(result, results_dir / "token_mips.png")
    report.update_readme(harness.BENCH_DIR / "README.md", results_dir)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
