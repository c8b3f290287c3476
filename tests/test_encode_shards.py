"""The encode job in resumable corpus shards: the shard plan, the streamed BEIR corpus, resume
after a crash or `kill -9` (byte-identical to an uninterrupted run), and several processes
writing the same shards as one."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
import train_testlib as lib

from aligner_jax import models
from aligner_jax.data.beir import CorpusFile
from aligner_jax.data.beir import read_beir
from aligner_jax.data.beir import read_split_queries
from aligner_jax.data.errors import DataError
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval import retrieval_jobs
from aligner_jax.index import IndexFileError
from aligner_jax.index import concatenate
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.retrieval.corpus_shards import ShardPlan
from aligner_jax.retrieval.corpus_shards import encode_corpus_shards
from aligner_jax.retrieval.corpus_shards import params_fingerprint
from aligner_jax.retrieval.encoding import encode_corpus

_WORDS = [a + b for a in "kalo mine rusa tevo zipa dune fora gila hoku jebe".split()
          for b in "ta ri mo ne su".split()]


def write_beir(root: pathlib.Path, num_docs: int, num_queries: int = 6, seed: int = 0):
  """A BEIR directory of `num_docs` documents of 3 to 60 words, with blank lines between."""
  rng = np.random.default_rng(seed)
  (root / "qrels").mkdir(parents=True)
  with open(root / "corpus.jsonl", "w") as f:
    for i in range(num_docs):
      text = " ".join(rng.choice(_WORDS, rng.integers(3, 60)))
      f.write(json.dumps({"_id": f"d{i}", "title": f"title {i}", "text": text}) + "\n")
      if i % 17 == 5:
        f.write("\n")
  with open(root / "queries.jsonl", "w") as f, open(root / "qrels" / "test.tsv", "w") as g:
    g.write("query-id\tcorpus-id\tscore\n")
    for q in range(num_queries):
      f.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choice(_WORDS, 4))}) + "\n")
      g.write(f"q{q}\td{(q * 7) % num_docs}\t1\n")
    f.write(json.dumps({"_id": "unjudged", "text": "not in the qrels"}) + "\n")
  return root


def tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
  """Every file below `root` (hidden ones too) by relative path."""
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_shard_plan():
  plan = ShardPlan(num_documents=10, shard_documents=4)
  assert plan.num_shards == 3
  assert [list(plan.rows(i)) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert plan.name(2) == "corpus-00002-of-00003"
  assert plan.owned(0, 2) == [0, 2] and plan.owned(1, 2) == [1] and plan.owned(0, 1) == [0, 1, 2]
  assert plan.config(1) == {"shard": 1, "shards": 3, "shard_documents": 4, "first_document": 4}
  with pytest.raises(ValueError, match="shard_documents"):
    ShardPlan(10, 0)


def test_corpus_file_reads_ranges_as_the_full_reader(tmp_path):
  root = write_beir(tmp_path / "c", 50)
  corpus = read_beir(root, splits=["test"]).corpus
  streamed = CorpusFile(root / "corpus.jsonl")
  assert len(streamed) == 50
  for rows in (range(0, 50), range(7, 23), range(49, 50), range(3, 3)):
    assert streamed.read_rows(rows) == corpus.read_rows(rows)
  assert corpus.read_rows(range(2, 4))[1][0] == corpus.text(2)
  with pytest.raises(IndexError):
    streamed.read_rows(range(40, 51))
  queries = read_split_queries(root, "test")
  assert queries.ids == [f"q{q}" for q in range(6)]


def test_corpus_file_reports_problems_with_lines(tmp_path):
  root = write_beir(tmp_path / "c", 5)
  with open(root / "corpus.jsonl", "a") as f:
    f.write('{"_id": "d1", "text": "again"}\n{"_id": "x", "text": ""}\n{broken\n')
  with pytest.raises(DataError) as e:
    CorpusFile(root / "corpus.jsonl")
  text = str(e.value)
  assert "corpus.jsonl:8: broken JSON" in text and "corpus.jsonl:7" not in text
  with pytest.raises(DataError) as e:
    CorpusFile(root / "corpus.jsonl", strict=True)
  text = str(e.value)
  assert "corpus.jsonl:7: empty text" in text and "corpus.jsonl:8: broken JSON" in text


def test_corpus_file_keeps_empty_documents_unless_strict(tmp_path):
  root = write_beir(tmp_path / "c", 3)
  with open(root / "corpus.jsonl", "a") as f:
    f.write('{"_id": "empty", "title": "", "text": " "}\n')
  streamed = CorpusFile(root / "corpus.jsonl")
  assert len(streamed) == 4 and streamed.warnings.total == 1
  assert "corpus.jsonl:4: empty document 'empty'" in str(streamed.warnings)
  ids, texts = streamed.read_rows(range(2, 4))
  assert ids[1] == "empty" and not texts[1].strip()
  with pytest.raises(DataError, match="corpus.jsonl:4: empty text"):
    CorpusFile(root / "corpus.jsonl", strict=True)
  (root / "corpus.jsonl").write_text("\n".join(
      json.dumps({"_id": i, "text": "t"}) for i in ("a", "b", "a")) + "\n")
  with pytest.raises(DataError, match=r"corpus.jsonl:3: duplicate document id 'a' \(first at "
                     r"line 1\)"):
    CorpusFile(root / "corpus.jsonl")


@pytest.fixture(scope="module")
def tiny_encoders():
  module = models.DualEncoder(encoder_config=models.t5_config("tiny"), projection_dim=16,
                              doc_salience_ratio=0.5)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(0), query_length=8,
                                             doc_length=8))
  from conftest import shared_path
  vocab = str(shared_path("tokenizers", "t5_v1_1", "tokenizer.json"))
  enc = retrieval_jobs.model_encoders(module, params, vocab, batch_size=8, local=True)
  return enc, params_fingerprint(params)


class _Crash(RuntimeError):
  pass


class _CrashingSource:
  """A corpus whose reads fail after `reads` of them: a run that dies part way."""

  def __init__(self, source, reads):
    self.source, self.reads = source, reads

  def __len__(self):
    return len(self.source)

  def read_rows(self, rows, **kwargs):
    if self.reads == 0:
      raise _Crash("stopped")
    self.reads -= 1
    return self.source.read_rows(rows, **kwargs)


def test_resume_after_a_crash_is_byte_identical(tmp_path, tiny_encoders):
  enc, fingerprint = tiny_encoders
  source = CorpusFile(write_beir(tmp_path / "c", 45) / "corpus.jsonl")
  plan = ShardPlan(len(source), 10)
  run = lambda out, src, log=print: encode_corpus_shards(  # noqa: E731
      enc.documents, enc.vocabulary, src, out, plan, shards=plan.owned(0, 1),
      config={"dataset": "c", "model": fingerprint}, max_length=32, log=log)
  full = run(tmp_path / "full", source)
  assert full["encoded"] == [0, 1, 2, 3, 4] and full["documents"] == 45
  with pytest.raises(_Crash):
    run(tmp_path / "resumed", _CrashingSource(source, 2))
  assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [
      "corpus-00000-of-00005", "corpus-00001-of-00005"]
  (tmp_path / "resumed" / ".corpus-00002-of-00005.abc.tmp").mkdir()  # a killed writer's
  again = run(tmp_path / "resumed", source)
  assert again["skipped"] == [0, 1] and again["encoded"] == [2, 3, 4]
  assert again["tokens"] == full["tokens"]
  assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "full")
  # The shards together are the corpus, in order, as one unsharded encoding gives it.
  stores = [load_token_store(p) for p in inputs_lib.corpus_shards(tmp_path / "full")]
  whole = encode_corpus(enc.documents, enc.vocabulary, *source.read_rows(range(45)),
                        max_length=32)
  joined = concatenate(stores)
  assert joined.doc_ids == whole.doc_ids
  np.testing.assert_array_equal(joined.offsets, whole.offsets)
  np.testing.assert_allclose(joined.vectors.astype(np.float32),
                             whole.vectors.astype(np.float32), atol=2e-3)
  # A damaged shard is encoded again; a shard made with other settings is refused.
  damaged = tmp_path / "resumed" / "corpus-00003-of-00005" / "vectors.npy"
  damaged.write_bytes(damaged.read_bytes()[:-4] + b"\0\0\0\0")
  logs = []
  assert run(tmp_path / "resumed", source, logs.append)["encoded"] == [3]
  assert any("re-encoding corpus-00003-of-00005" in m for m in logs)
  assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "full")
  with pytest.raises(IndexFileError, match="encoded with model='[0-9a-f]+' but this run asks "
                     "for 'other'; remove it"):
    encode_corpus_shards(enc.documents, enc.vocabulary, source, tmp_path / "full", plan,
                         shards=[0], config={"dataset": "c", "model": "other"}, max_length=32)
  with pytest.raises(IndexFileError, match="holds corpus shards of another layout"):
    encode_corpus_shards(enc.documents, enc.vocabulary, source, tmp_path / "full",
                         ShardPlan(45, 20), shards=[0], config={}, max_length=32)


def test_incomplete_or_mixed_shards_are_refused(tmp_path, tiny_encoders):
  enc, fingerprint = tiny_encoders
  root = write_beir(tmp_path / "c", 12)
  source = CorpusFile(root / "corpus.jsonl")
  plan = ShardPlan(len(source), 5)
  encode_corpus_shards(enc.documents, enc.vocabulary, source, tmp_path / "e", plan,
                       shards=[0, 2], config={"model": fingerprint}, max_length=32)
  with pytest.raises(IndexFileError, match=r"1 of 3 missing, e.g. \['corpus-00001-of-00003'\] "
                     r"\(the encode job has not finished: rerun it"):
    inputs_lib.corpus_shards(tmp_path / "e")
  encode_corpus_shards(enc.documents, enc.vocabulary, source, tmp_path / "e", plan,
                       shards=[1], config={"model": fingerprint}, max_length=32)
  collection = read_beir(root, splits=["test"])
  store = inputs_lib.load_encoded_corpus(tmp_path / "e", collection, doc_length=32,
                                         log=lambda m: None)
  assert store.doc_ids == [f"d{i}" for i in range(12)]
  # Shards of another encoding swapped in are caught by their recorded first document.
  other = tmp_path / "other"
  encode_corpus_shards(enc.documents, enc.vocabulary, source, other, ShardPlan(12, 5),
                       shards=[0], config={"model": fingerprint}, max_length=32)
  first = tmp_path / "e" / "corpus-00000-of-00003"
  manifest = json.loads((first / "manifest.json").read_text())
  manifest["counts"]["documents"] = 4
  (first / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(IndexFileError, match="starts at document 5 but the shards before it hold "
                     "4 documents"):
    inputs_lib.load_encoded_corpus(tmp_path / "e", collection, doc_length=32,
                                   log=lambda m: None)


# ---------------------------------------------------------------------------------------------
# The gin job in fresh processes.


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """(command builder, the BEIR directory): encode.gin over a 300-document corpus in shards of
  20, a tiny random T5 encoder."""
  root = tmp_path_factory.mktemp("encode_job")
  beir = write_beir(root / "beir", 300, seed=3)
  config = models.t5_config("tiny")
  module = models.DualEncoder(encoder_config=config, projection_dim=None)
  params = nn.unbox(models.init_dual_encoder(module, jax.random.key(1), query_length=8,
                                             doc_length=8))
  models.save_params(root / "enc", params["encoder"], config=config)

  def command(out: pathlib.Path):
    bindings = [f"BEIR_DIR = '{beir}'", "SPLIT = 'test'", "MODEL_DIR = None",
                f"CHECKPOINT_PATH = '{root / 'enc'}'", f"ENCODED_DIR = '{out}'",
                "EVAL_DOC_LENGTH = 64", "EVAL_QUERY_LENGTH = 16", "EVAL_BATCH_SIZE = 8",
                "ENCODE_SHARD_DOCUMENTS = 20"]
    return lib.main_command(["gin/models/t5_1_1_tiny.gin", "gin/runs/encode.gin"], bindings)

  return command, beir


@pytest.fixture(scope="module")
def one_process_run(job, tmp_path_factory):
  command, _ = job
  out = tmp_path_factory.mktemp("one") / "encoded"
  result = lib.run_subprocess(command(out), lib.subprocess_env(2))
  assert "encoded shards [0, 1, 2, 3" in result.stdout, result.stdout[-2000:]
  return out


@pytest.mark.slow
def test_kill_9_then_rerun_is_byte_identical(job, one_process_run, tmp_path):
  command, _ = job
  out = tmp_path / "encoded"
  proc = subprocess.Popen(command(out), cwd=lib.REPO_ROOT, env=lib.subprocess_env(2),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 300
  while not list(out.glob("corpus-*/manifest.json")) and proc.poll() is None:
    assert time.time() < deadline, "no shard written in 300 s"
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  written = sorted(p.parent.name for p in out.glob("corpus-*/manifest.json"))
  assert 1 <= len(written) < 15, written
  result = lib.run_subprocess(command(out), lib.subprocess_env(2))
  skipped = re.search(r"skipped finished shards \[([0-9, ]*)\]", result.stdout).group(1)
  assert [int(s) for s in skipped.split(", ")] == [int(n[7:12]) for n in written]
  assert tree_bytes(out) == tree_bytes(one_process_run)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_one_process_shards(job, one_process_run, tmp_path):
  command, beir = job
  out = tmp_path / "encoded"
  port = _free_port()
  procs = [subprocess.Popen(command(out), cwd=lib.REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=lib.subprocess_env(
                                2, ALIGNER_COORDINATOR=f"localhost:{port}",
                                ALIGNER_NUM_PROCESSES="2", ALIGNER_PROCESS_ID=str(i)))
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  encoded = []
  for i, (p, (stdout, stderr)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, stderr[-4000:]
    shards = re.search(rf"process {i}/2: encoded shards \[([0-9, ]*)\]", stdout).group(1)
    encoded.append([int(s) for s in shards.split(", ")])
  assert encoded == [list(range(0, 15, 2)), list(range(1, 15, 2))]  # no shard done twice
  assert tree_bytes(out) == tree_bytes(one_process_run)
  # The evaluation reads the shards as one corpus.
  collection = read_beir(beir, splits=["test"])
  store = inputs_lib.load_encoded_corpus(out, collection, doc_length=64, log=lambda m: None)
  assert store.doc_ids == collection.corpus.ids
