"""Load time and resident memory of a token index in a fresh process, against its size.

Each cell builds a synthetic index (`index_load_worker.py build`: L2-normalised 128-d float16
tokens around 1,024 centres, 64 a document, shards of 2^20 tokens, no extras) with the
checkout being measured, then loads it in fresh processes (`... load`): first with the index's
files evicted from the page cache (`posix_fadvise(DONTNEED)`: a cold start), then again (warm).
Each load records its seconds and this process's resident memory before the load (after
importing the library, and ScaNN as that checkout's loader imports it), after it, and after
searching 256 query tokens with K′ = 256: VmRSS, its anonymous part (RssAnon: memory the
process owns) and its file-backed part (RssFile: pages of mapped files, which the kernel can
drop and read again), and the peak (VmHWM). Configurations: ScaNN with an int8 reorder copy,
ScaNN reordering with the stored vectors ("stored"), and the exact backend.

`--baseline-repo DIR` measures another checkout the same way (e.g. the revision before
memory-mapped loading, `git worktree add /tmp/old <commit>`), in the same table (column
`revision`). This checkout's rows also time `python -m aligner_jax.index verify`, and for
ScaNN, rewrite the index with the AH codes packed two per byte as earlier versions stored them
and time this checkout loading that (`packed_*`: the disk saved against unpacking into a
temporary file at every load).
Results: bench/results/index_load.json (quick: results/quick/).

  python -m bench.bench_index_load [--quick] [--baseline-repo DIR] [--no-report]
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import harness
from bench import report

COLUMNS = ("revision", "n_tokens", "config", "setup", "shards", "build_s", "build_peak_rss_mib",
           "disk_bytes_per_token", "scann_bytes_per_token", "load_s_cold", "load_s_warm",
           "rss_before_mib", "rss_total_mib", "rss_load_mib", "anon_load_mib", "file_load_mib",
           "peak_load_mib",
           "anon_bytes_per_token", "rss_queries_mib", "anon_queries_mib",
           "ms_per_query_token", "verify_s", "packed_scann_bytes_per_token",
           "packed_load_s_cold", "packed_load_s_warm")
CONFIGS = ("scann-int8", "scann-stored", "exact")
FULL = (1 << 20, 1 << 22)
QUICK = (1 << 18,)
WORKER = pathlib.Path(__file__).resolve().parent / "index_load_worker.py"
MIB = 1 << 20


def run_worker(repo: pathlib.Path, args: list[str], timeout: float = 3600,
         worker: pathlib.Path = WORKER) -> dict[str, Any]:
  """Runs the worker script with `repo`'s aligner_jax; its JSON result (last stdout line)."""
  env = {**harness.worker_env(), "PYTHONPATH": str(repo)}
  proc = subprocess.run([sys.executable, str(worker), *args], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  if proc.returncode:
    raise RuntimeError(f"worker {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def evict(directory: pathlib.Path) -> None:
  """Drops the clean pages of every file below `directory` from the page cache."""
  for path in directory.rglob("*"):
    if path.is_file():
      fd = os.open(path, os.O_RDONLY)
      try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


def _verify_seconds(repo: pathlib.Path, index: pathlib.Path) -> float:
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "aligner_jax.index", "verify", str(index)],
                        cwd=repo, env={**harness.worker_env(), "PYTHONPATH": str(repo)},
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"verify failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
  return time.perf_counter() - start


def _packed_loads(repo: pathlib.Path, index: pathlib.Path, n: int) -> dict[str, Any]:
  """The same index with its AH codes packed two per byte (the earlier layout), loaded by the
  same code: what unpacking into a temporary file at every load costs."""
  packed = run_worker(repo, ["pack", "--index", str(index)])
  evict(index)
  cold = run_worker(repo, ["load", "--index", str(index), "--config", "scann"])
  warm = run_worker(repo, ["load", "--index", str(index), "--config", "scann"])
  return {"packed_scann_bytes_per_token": round(packed["scann_bytes"] / n, 1),
          "packed_load_s_cold": round(cold["load_seconds"], 3),
          "packed_load_s_warm": round(warm["load_seconds"], 3)}


def memory_columns(warm: dict[str, Any], n: int) -> dict[str, Any]:
  before, loaded, searched = warm["before"], warm["loaded"], warm["searched"]
  delta = lambda after, key: (after[key] - before[key]) / MIB  # noqa: E731
  return {"rss_before_mib": round(before["VmRSS"] / MIB, 1),
          "rss_total_mib": round(loaded["VmRSS"] / MIB, 1),
          "rss_load_mib": round(delta(loaded, "VmRSS"), 1),
          "anon_load_mib": round(delta(loaded, "RssAnon"), 1),
          "file_load_mib": round(delta(loaded, "RssFile"), 1),
          "peak_load_mib": round((loaded["VmHWM"] - before["VmRSS"]) / MIB, 1),
          "anon_bytes_per_token": round((loaded["RssAnon"] - before["RssAnon"]) / n, 1),
          "rss_queries_mib": round(delta(searched, "VmRSS"), 1),
          "anon_queries_mib": round(delta(searched, "RssAnon"), 1),
          "ms_per_query_token": round(warm["search_ms_per_query_token"], 3)}


def run_cell(repo: pathlib.Path, revision: str, n: int, config: str,
             workdir: pathlib.Path) -> dict[str, Any]:
  index = workdir / f"{revision}-{n}-{config}"
  built = run_worker(repo, ["build", "--index", str(index), "--tokens", str(n), "--config", config])
  try:
    evict(index)
    cold = run_worker(repo, ["load", "--index", str(index), "--config", config])
    warm = run_worker(repo, ["load", "--index", str(index), "--config", config])
    verify = _verify_seconds(repo, index) if revision == "current" else None
    packed = (_packed_loads(repo, index, n) if revision == "current" and "scann" in config
              else dict.fromkeys(COLUMNS[-3:]))
  finally:
    shutil.rmtree(index, ignore_errors=True)
  return {"revision": revision, "n_tokens": n, "config": config,
          "setup": f"{config} ({revision})", "shards": built["shards"],
          "build_s": round(built["build_seconds"], 1),
          "build_peak_rss_mib": round(built["build_peak_rss_bytes"] / MIB, 1),
          "disk_bytes_per_token": round(built["total_bytes"] / n, 1),
          "scann_bytes_per_token": round(built["scann_bytes"] / n, 1),
          "load_s_cold": round(cold["load_seconds"], 3),
          "load_s_warm": round(warm["load_seconds"], 3), **memory_columns(warm, n),
          "verify_s": None if verify is None else round(verify, 2), **packed}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="one small index (minutes)")
  parser.add_argument("--baseline-repo", default=None,
                      help="another checkout to measure the same way (revision 'baseline')")
  parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
  parser.add_argument("--no-report", action="store_true", help="leave bench/README.md alone")
  args = parser.parse_args(argv)
  sizes = QUICK if args.quick else FULL
  repos = [("current", harness.REPO_ROOT)]
  if args.baseline_repo:
    repos.append(("baseline", pathlib.Path(args.baseline_repo).resolve()))
  table = harness.TableRun(
      "index_load", "Token index load time and resident memory in a fresh process (synthetic "
      "128-d float16 tokens; memory above the process before the load)", COLUMNS,
      mode="quick" if args.quick else "full",
      plot={"x": "n_tokens", "y": "rss_total_mib", "series": "setup", "kind": "bar"})
  with tempfile.TemporaryDirectory(prefix="aligner_index_load_",
                                   dir=os.environ.get("ALIGNER_BENCH_TMP")) as tmp:
    for n in sizes:
      for config in args.configs.split(","):
        for revision, repo in repos:
          table.add(run_cell(repo, revision, n, config, pathlib.Path(tmp)))
  results = harness.QUICK_RESULTS_DIR if args.quick else harness.RESULTS_DIR
  record = table.write(results, notes=[
      "rss_before_mib: the process before the load, after importing the library (and ScaNN, "
      "as the revision's loader imports it); rss_total_mib: after the load; other rss_*: VmRSS "
      "above rss_before; anon_*: the anonymous part (RssAnon); file_load_mib: pages of mapped "
      "files",
      "load_s_cold: index files evicted from the page cache first; load_s_warm: right after",
      "ms_per_query_token: 256 query tokens, K' = 256, warm; verify_s: python -m "
      "aligner_jax.index verify (SHA-256 of every file)",
      f"shards of {1 << 20} tokens; 64 tokens a document; revision 'baseline' is "
      f"{args.baseline_repo or '-'}"])
  if not args.no_report:
    report.write_plot(record, results / "index_load.png")
    report.update_bench_readme()
  return 0


if __name__ == "__main__":
  sys.exit(main())
