"""Runs the benchmark suite: `python -m bench.run [--quick]` (what `make bench[-quick]` calls).

Each benchmark is its own process (bench_scorers, bench_storage, bench_token_mips, and
bench_encoder when present); the README tables are regenerated at the end from every file in
bench/results/. A failing benchmark does not stop the others; the exit code says whether all ran.
"""

import importlib.util
import pathlib
import subprocess
import sys
import time

from bench import harness
from bench import report

BENCHMARKS = ("bench.bench_scorers", "bench.bench_storage", "bench.bench_token_mips",
              "bench.bench_encoder")


def main(argv: list[str]) -> int:
  quick = "--quick" in argv
  failed = []
  for module in BENCHMARKS:
    if importlib.util.find_spec(module) is None:
      print(f"[run] {module}: not present, skipped", file=sys.stderr, flush=True)
      continue
    start = time.perf_counter()
    cmd = [sys.executable, "-m", module] + (["--quick"] if quick else [])
    code = subprocess.run(cmd, cwd=harness.REPO_ROOT, env=harness.worker_env()).returncode
    print(f"[run] {module}: exit {code} after {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    if code:
      failed.append(module)
  report.update_readme(harness.BENCH_DIR / "README.md", harness.RESULTS_DIR)
  if failed:
    print(f"[run] failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
