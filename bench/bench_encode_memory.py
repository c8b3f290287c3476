"""Peak memory of the encode job against corpus size: bounded by the shard, not the corpus.

Each cell runs `gin/runs/encode.gin` in a fresh process (`python -m aligner_jax.main`, one
process, 2 fake CPU devices) over a BEIR corpus of N documents (SciFact's abstracts repeated
under new ids, so texts and lengths are real) with a random tiny T5 v1.1 encoder (64-d token
vectors, float16, EVAL_DOC_LENGTH tokens at most), and records the process's peak resident set
(`ru_maxrss` of that child, from `os.wait4`) and its wall time. Two shard sizes per N: a fixed
one (memory should stay flat as N grows) and one shard holding the whole corpus (what holding
the corpus in memory costs). Results: bench/results/encode_memory.json.

  python -m bench.bench_encode_memory [--quick] [--no-report]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import harness
from bench import report

COLUMNS = ("documents", "shard_documents", "shards", "tokens", "peak_rss_mib", "seconds")
FULL = {"sizes": (5000, 20000), "shard": 1000, "doc_length": 256}
QUICK = {"sizes": (1000, 4000), "shard": 250, "doc_length": 128}


def _scifact() -> pathlib.Path:
  root = pathlib.Path(os.environ.get("ALIGNER_SHARED_DATA",
                                     harness.REPO_ROOT.parent / "shared" / "data"))
  path = root / "beir" / "scifact"
  if not (path / "corpus.jsonl").is_file():
    raise SystemExit(f"{path}: BEIR SciFact not found (set ALIGNER_SHARED_DATA)")
  return path


def write_corpus(source: pathlib.Path, out: pathlib.Path, num_docs: int) -> None:
  """A BEIR directory of `num_docs` documents: SciFact's, repeated under new ids."""
  from aligner_jax.io import atomic_output  # pylint: disable=import-outside-toplevel
  from aligner_jax.io import atomic_write  # pylint: disable=import-outside-toplevel
  docs = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()
          if line.strip()]
  with atomic_output(out / "corpus.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
    for i in range(num_docs):
      doc = docs[i % len(docs)]
      f.write(json.dumps({"_id": f"{doc['_id']}-{i // len(docs)}", "title": doc.get("title", ""),
                          "text": doc["text"]}) + "\n")
  atomic_write(out / "queries.jsonl", json.dumps({"_id": "q0", "text": "a claim"}) + "\n")
  first = f"{docs[0]['_id']}-0"
  atomic_write(out / "qrels" / "test.tsv", f"query-id\tcorpus-id\tscore\nq0\t{first}\t1\n")


def write_tiny_encoder(out: pathlib.Path) -> None:
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  from aligner_jax import models  # pylint: disable=import-outside-toplevel
  config = models.t5_config("tiny")
  module = models.DualEncoder(encoder_config=config, projection_dim=None)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(0), query_length=8,
                                             doc_length=8))
  models.save_params(out, params["encoder"], config=config)


def run_cell(beir: pathlib.Path, encoder: pathlib.Path, out: pathlib.Path, shard: int,
             doc_length: int) -> dict[str, Any]:
  """One encode job in a fresh process: its peak RSS, time and what it wrote."""
  bindings = [f"BEIR_DIR = '{beir}'", "SPLIT = 'test'", "MODEL_DIR = None",
              f"CHECKPOINT_PATH = '{encoder}'", f"ENCODED_DIR = '{out}'",
              f"EVAL_DOC_LENGTH = {doc_length}", "EVAL_BATCH_SIZE = 32",
              f"ENCODE_SHARD_DOCUMENTS = {shard}"]
  cmd = [sys.executable, "-m", "aligner_jax.main", "--gin_file=gin/models/t5_1_1_tiny.gin",
         "--gin_file=gin/runs/encode.gin", *[f"--gin_bindings={b}" for b in bindings]]
  env = {**harness.worker_env(), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  start = time.perf_counter()
  with tempfile.TemporaryFile() as log:
    proc = subprocess.Popen(cmd, cwd=harness.REPO_ROOT, env=env, stdout=log, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
      log.seek(0)
      raise RuntimeError(f"encode job failed ({proc.returncode}):\n"
                         f"{log.read().decode(errors='replace')[-3000:]}")
  seconds = time.perf_counter() - start
  manifests = [json.loads((d / "manifest.json").read_text()) for d in out.glob("corpus-*")]
  return {"shards": len(manifests), "seconds": round(seconds, 1),
          "tokens": sum(m["counts"]["tokens"] for m in manifests),
          "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smaller corpora (about a minute)")
  parser.add_argument("--no-report", action="store_true", help="leave bench/README.md alone")
  args = parser.parse_args(argv)
  spec = QUICK if args.quick else FULL
  table = harness.TableRun(
      "encode_memory", "Peak RSS of the encode job (fresh process, tiny T5, float16) against "
      "corpus size, for a fixed shard size and for one shard holding the corpus", COLUMNS,
      mode="quick" if args.quick else "full",
      plot={"x": "documents", "y": "peak_rss_mib", "series": "shard_documents", "kind": "bar"})
  with tempfile.TemporaryDirectory(prefix="aligner_encode_memory_") as tmp:
    tmp = pathlib.Path(tmp)
    write_tiny_encoder(tmp / "encoder")
    for n in spec["sizes"]:
      write_corpus(_scifact(), tmp / f"beir{n}", n)
      for shard in (spec["shard"], n):
        out = tmp / f"encoded-{n}-{shard}"
        cell = run_cell(tmp / f"beir{n}", tmp / "encoder", out, shard, spec["doc_length"])
        table.add({"documents": n, "shard_documents": shard, **cell})
  results = harness.QUICK_RESULTS_DIR if args.quick else harness.RESULTS_DIR
  record = table.write(results, notes=[
      f"doc_length {spec['doc_length']}, batch 32 on 2 fake CPU devices, one process; "
      "SciFact abstracts repeated under new ids",
      "a fixed shard size keeps the peak flat as the corpus grows; one shard of the whole "
      "corpus grows with it"])
  if not args.no_report:
    report.write_plot(record, results / "encode_memory.png")
    report.update_bench_readme()
  return 0


if __name__ == "__main__":
  sys.exit(main())
