"""One step of `bench_index_load`, in its own process: build a synthetic token index, load one
and report time and memory, or rewrite a ScaNN index with its AH codes packed as earlier
versions stored them.

Run as a script (`python bench/index_load_worker.py build|load ...`) with the checkout to
measure first on PYTHONPATH: it imports only NumPy, ScaNN and that checkout's `aligner_jax`
public API (`build_token_index`, `save_index`, `load_index`, `TokenIndex.search_tokens`),
which every revision compared has, so the same worker measures each of them. The result is
one JSON object on the last line of stdout; files are written by the checkout's own
`save_index` (through `aligner_jax.io`).
"""

import argparse
import json
import os
import pathlib
import resource
import sys
import time

import numpy as np

DIM = 128
DOC_TOKENS = 64
SHARD_TOKENS = 1 << 20
_BLOCK = 1 << 18


def synthetic_store(n_tokens: int, seed: int = 0):
  """n_tokens L2-normalised 128-d float16 vectors around 1,024 random centres, 64 tokens a
  document, built block by block (no float32 copy of the whole set)."""
  from aligner_jax.index import TokenStore  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(1024, DIM)).astype(np.float32)
  vectors = np.empty((n_tokens, DIM), np.float16)
  for start in range(0, n_tokens, _BLOCK):
    n = min(_BLOCK, n_tokens - start)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, DIM)).astype(
        np.float32)
    vectors[start:start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
  docs = -(-n_tokens // DOC_TOKENS)
  offsets = np.minimum(np.arange(docs + 1, dtype=np.int64) * DOC_TOKENS, n_tokens)
  return TokenStore([f"d{i}" for i in range(docs)], offsets, vectors)


def queries(n: int, seed: int = 1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n, DIM)).astype(np.float32)
  return q / np.linalg.norm(q, axis=1, keepdims=True)


def memory() -> dict[str, int]:
  """This process's VmRSS, RssAnon, RssFile and VmHWM (peak) in bytes."""
  out = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        out[key] = int(value.split()[0]) * 1024
  return out


def build(args: argparse.Namespace) -> dict:
  from aligner_jax.index import IndexConfig  # pylint: disable=import-outside-toplevel
  from aligner_jax.index import build_token_index  # pylint: disable=import-outside-toplevel
  from aligner_jax.index import save_index  # pylint: disable=import-outside-toplevel
  store = synthetic_store(args.tokens)
  backend, _, reorder = args.config.partition("-")
  config = IndexConfig(backend=backend, reorder=reorder or "int8", vector_dtype="float16",
                       fields=(), max_shard_tokens=SHARD_TOKENS)
  start = time.perf_counter()
  info = save_index(build_token_index(store, config), args.index)
  seconds = time.perf_counter() - start
  scann = sum(p.stat().st_size for p in pathlib.Path(args.index).glob("shard-*/scann/*"))
  return {"build_seconds": seconds, "total_bytes": info["total_bytes"], "scann_bytes": scann,
          "shards": len(info["shards"]),
          "build_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def pack(args: argparse.Namespace) -> dict:
  """Rewrites a ScaNN index built by this checkout in the layout of earlier versions (AH codes
  two per byte in hashed_dataset.4bit.npz, manifests listing it), to time loading that layout
  with the same code; this checkout's own API only."""
  from aligner_jax.index import files  # pylint: disable=import-outside-toplevel
  from aligner_jax.index.backends import pack_nibbles  # pylint: disable=import-outside-toplevel
  from aligner_jax.io import write_json  # pylint: disable=import-outside-toplevel
  root = pathlib.Path(args.index)
  listing = json.loads((root / "index.json").read_text())
  for entry in listing["shards"]:
    shard = root / entry["name"]
    codes_path = shard / "scann" / "hashed_dataset.npy"
    packed_path = shard / "scann" / "hashed_dataset.4bit.npz"
    codes = np.load(codes_path)
    np.savez(packed_path, packed=pack_nibbles(codes), blocks=np.int64(codes.shape[1]))
    codes_path.unlink()
    manifest = json.loads((shard / "manifest.json").read_text())
    del manifest["files"]["scann/hashed_dataset.npy"]
    manifest["files"]["scann/hashed_dataset.4bit.npz"] = {
        "bytes": packed_path.stat().st_size, "sha256": files.sha256_file(packed_path)}
    write_json(shard / "manifest.json", manifest)
    entry["manifest_sha256"] = files.sha256_file(shard / "manifest.json")
  write_json(root / "index.json", listing)
  scann = sum(p.stat().st_size for p in root.glob("shard-*/scann/*"))
  return {"scann_bytes": scann}


def import_scann() -> None:
  """Imports ScaNN the way the checkout's loader does (TensorFlow and all with `import scann`
  in earlier revisions; its NumPy API alone since `backends._scann_numpy`), so that "before"
  already holds what any load of a ScaNN index brings in."""
  from aligner_jax.index import backends  # pylint: disable=import-outside-toplevel
  (getattr(backends, "_scann_numpy", None) or backends._scann)()  # noqa: SLF001


def load(args: argparse.Namespace) -> dict:
  from aligner_jax.index import load_index  # pylint: disable=import-outside-toplevel
  if args.config.startswith("scann"):
    import_scann()
  q = queries(args.queries)
  before = memory()
  start = time.perf_counter()
  index = load_index(args.index)
  seconds = time.perf_counter() - start
  loaded = memory()
  index.search_tokens(q[:8], args.k)  # first call: thread pools, lazy set-up
  start = time.perf_counter()
  docs, _ = index.search_tokens(q, args.k)
  search = time.perf_counter() - start
  searched = memory()
  return {"load_seconds": seconds, "before": before, "loaded": loaded, "searched": searched,
          "search_ms_per_query_token": 1000 * search / len(q),
          "found_per_query_token": float((docs >= 0).sum(1).mean())}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("step", choices=("build", "pack", "load"))
  parser.add_argument("--index", required=True)
  parser.add_argument("--tokens", type=int, default=0)
  parser.add_argument("--config", default="exact")
  parser.add_argument("--queries", type=int, default=256)
  parser.add_argument("--k", type=int, default=256)
  args = parser.parse_args()
  result = {"build": build, "pack": pack, "load": load}[args.step](args)
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
