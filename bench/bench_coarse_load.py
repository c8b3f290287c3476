"""What the stored IVF coarse level saves at load: grouping C cells against reading the grouping.

An IVF index of more than `ivf.COARSE_MIN` cells chooses cells through the k-means grouping of
all its cells' centroids (`ivf.coarse_groups`, O(C^1.5 · h)). Saved indexes store it
(`index/coarse_level.py`); this measures, for C cells of h = 128 (synthetic unit centroids
around 1,024 centres; one token per cell, since the lists play no part), in a fresh process
per C:
  group_s        `ivf.coarse_groups` alone (what every load paid before the level was stored)
  write_s        `coarse_level.write` (grouping, then the files, at publish)
  index_built_s  `IvfIndex` over the lists, grouping the cells itself
  index_loaded_s `coarse_level.load` from the saved files + `IvfIndex` with that grouping
and checks that both indexes choose the same cells. Results: bench/results/coarse_load.json.

  python -m bench.bench_coarse_load [--cells 32768 131072 524288] [--out FILE]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from aligner_jax.index import coarse_level
from aligner_jax.index import ivf
from aligner_jax.io import write_json
from bench import harness

DIM = 128
CELLS = (32_768, 131_072, 524_288)
OUT = harness.RESULTS_DIR / "coarse_load.json"


def _lists(cells: int) -> ivf.IvfLists:
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(1024, DIM)).astype(np.float32)
  x = centres[rng.integers(0, 1024, cells)] + 0.5 * rng.normal(size=(cells, DIM))
  centroids = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  return ivf.IvfLists(centroids, np.arange(cells + 1, dtype=np.int64),
                      np.zeros((cells, DIM), np.int8), np.arange(cells, dtype=np.int32),
                      np.arange(cells, dtype=np.int32), 1.0)


def measure(cells: int) -> dict[str, float]:
  """One row (run in its own process by `main`)."""
  lists = _lists(cells)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    (root / "shard").mkdir()
    ivf.save_lists(lists, root / "shard")
    entries = [{"name": "shard", "manifest_sha256": "0" * 64}]
    start = time.perf_counter()
    ivf.coarse_groups(lists.centroids)
    group_s = time.perf_counter() - start
    start = time.perf_counter()
    entry = coarse_level.write(root, entries, "ivf")
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    built = ivf.IvfIndex([lists])
    index_built_s = time.perf_counter() - start
    start = time.perf_counter()
    grouping = coarse_level.load(root, entry, entries, cells, DIM)
    loaded = ivf.IvfIndex([lists], coarse_grouping=grouping)
    index_loaded_s = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in (root / entry["name"]).iterdir())
  q = lists.centroids[np.random.default_rng(1).integers(0, cells, 256)]
  a = built._choose_cells(q, 20)[0]
  b = loaded._choose_cells(q, 20)[0]
  if not np.array_equal(a, b):
    raise AssertionError("the loaded coarse level chooses other cells than the built one")
  return {"cells": cells, "groups": len(grouping[0]), "group_s": group_s, "write_s": write_s,
          "index_built_s": index_built_s, "index_loaded_s": index_loaded_s,
          "coarse_bytes": disk, "same_cells": True}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cells", type=int, nargs="+", default=list(CELLS))
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a worker's single row
  args = parser.parse_args(argv)
  if args.one:
    print(json.dumps(measure(args.one)))
    return
  rows = []
  for cells in args.cells:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_coarse_load", "--one",
                           str(cells)], capture_output=True, text=True, check=True,
                          env=harness.worker_env(), cwd=harness.REPO_ROOT)
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(rows[-1], flush=True)
  write_json(args.out, {"rows": rows, "machine": harness.machine_info()})


if __name__ == "__main__":
  main()
