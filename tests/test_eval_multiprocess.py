"""Evaluation over two processes (jax.distributed on localhost): each retrieves half of the
judged queries, process 0 gathers and writes, and the files equal a one-process run's."""

import json
import pathlib
import re
import socket
import subprocess

import flax.linen as nn
import jax
import numpy as np
import pytest
import train_testlib as lib

from aligner_jax import models

_WORDS = [a + b for a in "sola mira tuku vena rado kesi lumo pava nori zeta".split()
          for b in "ka lo mi ne".split()]


def write_beir(root: pathlib.Path, num_docs: int = 120, num_queries: int = 17, seed: int = 0):
  """A BEIR directory whose queries are words of their relevant document."""
  rng = np.random.default_rng(seed)
  (root / "qrels").mkdir(parents=True)
  texts = [" ".join(rng.choice(_WORDS, rng.integers(4, 40))) for _ in range(num_docs)]
  with open(root / "corpus.jsonl", "w") as f:
    for i, text in enumerate(texts):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
  with open(root / "queries.jsonl", "w") as f, open(root / "qrels" / "test.tsv", "w") as g:
    g.write("query-id\tcorpus-id\tscore\n")
    for q in range(num_queries):
      target = int(rng.integers(num_docs))
      f.write(json.dumps({"_id": f"q{q}", "text": " ".join(texts[target].split()[:3])}) + "\n")
      g.write(f"q{q}\td{target}\t1\n")
  return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
  """(BEIR directory, encoder checkpoint, the encode job's output), one process."""
  root = tmp_path_factory.mktemp("multiprocess")
  beir = write_beir(root / "beir")
  config = models.t5_config("tiny")
  module = models.DualEncoder(encoder_config=config, projection_dim=None)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(2), query_length=8,
                                             doc_length=8))
  models.save_params(root / "enc", params["encoder"], config=config)
  bindings = [f"BEIR_DIR = '{beir}'", "SPLIT = 'test'", "MODEL_DIR = None",
              f"CHECKPOINT_PATH = '{root / 'enc'}'", f"ENCODED_DIR = '{root / 'encoded'}'",
              "EVAL_DOC_LENGTH = 48", "EVAL_QUERY_LENGTH = 12", "EVAL_BATCH_SIZE = 8",
              "ENCODE_SHARD_DOCUMENTS = 50"]
  lib.run_subprocess(lib.main_command(["gin/models/t5_1_1_tiny.gin", "gin/runs/encode.gin"],
                                      bindings), lib.subprocess_env(2))
  return beir, root / "enc", root / "encoded"


def eval_command(encoded, out: pathlib.Path, index: pathlib.Path, *extra: str):
  beir, enc, enc_out = encoded
  bindings = [f"BEIR_DIR = '{beir}'", "SPLIT = 'test'", "MODEL_DIR = None",
              f"CHECKPOINT_PATH = '{enc}'", f"ENCODED_DIR = '{enc_out}'",
              f"OUTPUT_DIR = '{out}'", f"INDEX_DIR = '{index}'", "ALIGNMENT = 'top_k:1'",
              "EXTRA_ALIGNMENTS = ['top_p:0.25']", "RETRIEVER = 'exact'", "NUM_NEIGHBORS = 64",
              "ADAPTATION = True", "EVAL_DOC_LENGTH = 48", "EVAL_QUERY_LENGTH = 12",
              "eval/IndexConfig.max_shard_tokens = 1500", *extra]
  return lib.main_command(["gin/models/t5_1_1_tiny.gin", "gin/runs/eval_beir.gin"], bindings)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_two(command) -> list[str]:
  """`command` as processes 0 and 1 of a 2-process run; their stdout."""
  port = _free_port()
  procs = [subprocess.Popen(command, cwd=lib.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=lib.subprocess_env(
                                2, ALIGNER_COORDINATOR=f"localhost:{port}",
                                ALIGNER_NUM_PROCESSES="2", ALIGNER_PROCESS_ID=str(i)))
           for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in procs]
  for p, (_, stderr) in zip(procs, outputs):
    assert p.returncode == 0, stderr[-4000:]
  return [stdout for stdout, _ in outputs]


def tree(root: pathlib.Path) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_processes_split_the_queries_and_write_the_one_process_files(encoded, tmp_path):
  one = lib.run_subprocess(eval_command(encoded, tmp_path / "one", tmp_path / "index-one"),
                           lib.subprocess_env(2))
  assert "process 0/1: retrieved 17 of 17 judged queries" in one.stdout
  # Two processes, no index yet: process 0 builds it, process 1 loads it from INDEX_DIR.
  first, second = run_two(eval_command(encoded, tmp_path / "two", tmp_path / "index-two"))
  assert "built " in first and "loaded index" not in first
  assert "loaded index" in second and "built " not in second
  assert "process 0/2: retrieved 8 of 17 judged queries" in first
  assert "process 1/2: retrieved 9 of 17 judged queries" in second
  assert "gathered the runs of 17 queries from 2 processes: [8, 9]" in first
  assert "gathered" not in second and "ndcg@10" not in second
  # The same files, timings and the record of the processes aside.
  files_one, files_two = tree(tmp_path / "one"), tree(tmp_path / "two")
  assert sorted(files_one) == sorted(files_two) == [
      "adaptation.json", "adaptation.md", "metrics.json", "run.top_p-0.25.trec", "run.trec"]
  for name in ("run.trec", "run.top_p-0.25.trec", "adaptation.json", "adaptation.md"):
    assert files_one[name] == files_two[name], name
  m1, m2 = (json.loads(files[n]) for files, n in ((files_one, "metrics.json"),
                                                 (files_two, "metrics.json")))
  assert m2.pop("processes") == 2 and m2.pop("queries_by_process") == [8, 9]
  assert len(m2.pop("timings_by_process")) == 2
  m1.pop("timings"), m2.pop("timings")
  assert m1 == m2
  # Process 0 built what one process builds (the exact backend's build is deterministic).
  assert tree(tmp_path / "index-one") == tree(tmp_path / "index-two")

  # Again with the index in place and VERIFY_INDEX: both load it, process 0 alone verifies.
  first, second = run_two(eval_command(encoded, tmp_path / "three", tmp_path / "index-two",
                                       "VERIFY_INDEX = True"))
  assert re.search(r"loaded index .*SHA-256 of every file verified", first)
  assert re.search(r"loaded index .*files checked against manifests", second)
  assert tree(tmp_path / "three")["run.trec"] == files_one["run.trec"]
