"""Runs the benchmark suite: `python -m bench.run [--quick] [--only NAME ...]` (what
`make bench[-quick]` calls).

Each benchmark is its own process (bench_scorers, bench_storage, bench_token_mips,
bench_encoder, bench_encode_memory, bench_index_load); the README tables are regenerated at
the end from every file in bench/results/. A failing benchmark does not stop the others; the
exit code says whether all ran. The end-to-end benchmark (bench_end_to_end, tens of minutes:
it builds token indexes over all of SciFact) runs with the full suite only.

Compiled XLA programs are kept in JAX's persistent compilation cache
(`JAX_COMPILATION_CACHE_DIR`, default `ALIGNER_BENCH_CACHE`/jax, outside the repository), so a
second run skips most compilation; compilation is never inside a timed call either way.
"""

import argparse
import importlib.util
import pathlib
import subprocess
import sys
import time

from bench import harness
from bench import report

BENCHMARKS = ("bench.bench_scorers", "bench.bench_storage", "bench.bench_token_mips",
              "bench.bench_encoder", "bench.bench_encode_memory", "bench.bench_index_load")
FULL_ONLY = ("bench.bench_end_to_end",)


def compilation_cache_env() -> dict[str, str]:
  """The workers' environment with JAX's persistent compilation cache switched on."""
  env = harness.worker_env()
  root = pathlib.Path(env.get("ALIGNER_BENCH_CACHE",
                              pathlib.Path.home() / ".cache" / "aligner_jax" / "bench"))
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m bench.run",
      description="Runs the benchmark suite and regenerates bench/README.md.")
  parser.add_argument("--quick", action="store_true",
                      help="small cells of every benchmark (minutes); the end-to-end one is "
                      "left out")
  names = [m.removeprefix("bench.") for m in BENCHMARKS + FULL_ONLY]
  parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                      help=f"run only this benchmark (repeatable): one of {', '.join(names)}")
  return parser.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  quick = args.quick
  failed = []
  env = compilation_cache_env()
  suite_start = time.perf_counter()
  modules = BENCHMARKS + (() if quick else FULL_ONLY)
  if args.only:
    modules = tuple(f"bench.{name}" for name in args.only)
  for module in modules:
    if importlib.util.find_spec(module) is None:
      print(f"[run] {module}: not present, skipped", file=sys.stderr, flush=True)
      continue
    start = time.perf_counter()
    cmd = [sys.executable, "-m", module] + (["--quick"] if quick else [])
    code = subprocess.run(cmd, cwd=harness.REPO_ROOT, env=env).returncode
    print(f"[run] {module}: exit {code} after {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    if code:
      failed.append(module)
  report.update_readme(harness.BENCH_DIR / "README.md", harness.RESULTS_DIR)
  print(f"[run] suite took {time.perf_counter() - suite_start:.0f} s", file=sys.stderr,
        flush=True)
  if failed:
    print(f"[run] failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
