"""Peak memory and time of the index job against corpus size, single process and on Beam.

Each cell runs `gin/runs/index.gin` in a fresh process (`/usr/bin/time -v python -m
aligner_jax.main`, ScaNN, β^d = 1, MAX_SHARD_TOKENS index shards) over a synthetic clustered
encoded corpus (`bench/scale_corpus.py`: 128-d float16 unit vectors, 64 per document, encoded
shards of ENCODED_SHARD tokens), once with INDEX_RUNNER='local' ("single_process") and once on
the Beam DirectRunner with 2 worker processes ("beam_direct_2"). Recorded per cell:
  build_peak_rss_bytes   the largest resident set of any one process of the job (GNU time's
                         "Maximum resident set size": the driver or one Beam worker)
  build_tree_rss_bytes   the largest sum of the resident sets of all its processes at once
                         (sampled from /proc every 0.2 s): what the machine had to hold
  build_seconds          wall time, start-up included
  build_cpu_seconds      user + system CPU time of the driver process and what it waited for
                         (GNU time): the work, whatever else the machine was running
Corpora are kept under ALIGNER_BENCH_CACHE (default ~/.cache/aligner_jax/bench) and reused.
Results: bench/results/index_build_memory.json.

  python -m bench.bench_index_build_memory [--tokens 1000000 4000000] [--paths local beam]
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import scale_corpus
from bench.minilm_vectors import cache_root

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "index_build_memory.json"
PATHS = {"local": "single_process", "beam": "beam_direct_2"}
MAX_SHARD_TOKENS = 1_000_000
ENCODED_SHARD = 1_000_000


def _tree_rss(root_pid: int) -> int:
  """Sum of VmRSS (bytes) of `root_pid`'s session: the job and every process it started."""
  total = 0
  for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      if os.getsid(int(entry.name)) != root_pid:
        continue
      status = (entry / "status").read_text()
    except (OSError, ProcessLookupError):
      continue
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    total += int(match.group(1)) * 1024 if match else 0
  return total


def run_cell(encoded: pathlib.Path, runner: str, workdir: pathlib.Path, *,
             index: pathlib.Path | None = None, backend: str = "scann") -> dict[str, Any]:
  """One build in a fresh process; the index goes to `index` and is kept when given (else it
  is built in `workdir` and removed). `load_average`: the 1-minute load average sampled
  during the build (mean and max), the conditions its time was taken under."""
  keep = index is not None
  index = index if keep else workdir / f"index-{runner}"
  flags = {"ENCODED_DIR": f"'{encoded}'", "INDEX_DIR": f"'{index}'",
           "MAX_SHARD_TOKENS": str(MAX_SHARD_TOKENS), "INDEX_RUNNER": f"'{runner}'",
           "RETRIEVER": f"'{backend}'"}
  command = ["/usr/bin/time", "-v", sys.executable, "-m", "aligner_jax.main",
             "--gin_file=gin/runs/index.gin", *[f"--gin.{k}={v}" for k, v in flags.items()]]
  log = workdir / f"{runner}.log"
  start, tree_peak, loads = time.time(), 0, []
  with open(log, "wb") as out:
    process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               start_new_session=True)
    while process.poll() is None:
      tree_peak = max(tree_peak, _tree_rss(process.pid))
      loads.append(os.getloadavg()[0])
      time.sleep(0.2)
  seconds = time.time() - start
  text = log.read_text(errors="replace")
  if process.returncode:
    raise RuntimeError(f"{runner} build failed:\n{text[-3000:]}")
  peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
  cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", text).group(1))
            for kind in ("User", "System"))
  info = json.loads((index / "index.json").read_text())
  if not keep:
    shutil.rmtree(index)
  return {"path": PATHS[runner], "build_peak_rss_bytes": peak_kb * 1024,
          "build_tree_rss_bytes": tree_peak, "build_seconds": round(seconds, 1),
          "build_cpu_seconds": round(cpu, 1),
          "shards": len(info["shards"]), "index_bytes": info["total_bytes"],
          "load_average": {"mean": round(sum(loads) / max(1, len(loads)), 2),
                           "max": max(loads, default=None)}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 4_000_000])
  parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
  args = parser.parse_args()
  from aligner_jax.io import write_json  # pylint: disable=import-outside-toplevel
  rows, load_before = [], os.getloadavg()
  for tokens in args.tokens:
    encoded = cache_root() / f"scale_corpus_{tokens}"
    scale_corpus.write_corpus(encoded, tokens=tokens, shard_tokens=ENCODED_SHARD)
    for runner in args.paths:
      with tempfile.TemporaryDirectory(prefix="index_build_memory_") as workdir:
        row = {"n_tokens": tokens, **run_cell(encoded, runner, pathlib.Path(workdir))}
      print(json.dumps(row), flush=True)
      rows.append(row)
  machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
             "load_average_before": load_before, "load_average_after": os.getloadavg()}
  write_json(RESULTS, {"settings": {"dim": 128, "doc_tokens": 64, "vector_dtype": "float16",
                                    "max_shard_tokens": MAX_SHARD_TOKENS,
                                    "encoded_shard_tokens": ENCODED_SHARD, "backend": "scann"},
                       "machine": machine, "rows": rows})


if __name__ == "__main__":
  main()
