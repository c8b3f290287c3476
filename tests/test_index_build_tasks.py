"""The index built as per-shard tasks (index/shard_tasks.py, index/index_staging.py,
eval/index_build.py): same bytes as the in-memory build, resumable, refuses what it must not
replace, keeps the published index loadable until the new one is complete."""

import json

from index_build_testlib import make_store
from index_build_testlib import tree
from index_build_testlib import write_encoded
import numpy as np
import pytest

from aligner_jax.eval.index_build import build_index_from_shards
from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import build_token_index
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index import shard_tasks
from aligner_jax.index import token_index
from aligner_jax.index.index_staging import staging_dir
from aligner_jax.index.token_store import content_sha256
from aligner_jax.index.token_store_io import load_token_store

EXACT = IndexConfig(backend="exact", prune_doc_ratio=0.5, max_shard_tokens=700)


def in_memory(sources, config, target):
  save_index(build_token_index([load_token_store(p) for p in sources], config), target)
  return tree(target)


def test_plan_splits_as_split_documents(tmp_path):
  sources = write_encoded(tmp_path / "enc")
  tasks = shard_tasks.plan_tasks(sources, EXACT)
  parts = [p for s in sources for p in token_index.split_documents(
      load_token_store(s), EXACT.max_shard_tokens, EXACT.prune_doc_ratio)]
  assert len(tasks) == len(parts) > len(sources)
  first = 0
  for task, part in zip(tasks, parts):
    store = token_index.slice_documents(shard_tasks.open_store(task.source), task.start,
                                        task.stop)
    assert store.doc_ids == part.doc_ids and task.first_document == first
    assert content_sha256(store) == content_sha256(part)
    assert isinstance(store.vectors, np.memmap)  # mapped, not read
    first += task.num_documents
  assert [t.name for t in tasks] == [f"shard-{i:05d}" for i in range(len(tasks))]


@pytest.mark.parametrize("config", [EXACT, IndexConfig(backend="exact", vector_dtype="pq:4"),
                                    IndexConfig(backend="exact", refine_tokens="all",
                                                prune_doc_ratio=0.5, fields=("salience",))])
def test_tasks_write_the_in_memory_bytes(tmp_path, config):
  sources = write_encoded(tmp_path / "enc")
  info = build_index_from_shards(tmp_path / "enc", tmp_path / "job", config, log=lambda m: None)
  assert tree(tmp_path / "job") == in_memory(sources, config, tmp_path / "mem")
  assert info["counts"]["documents"] == 270
  assert not staging_dir(tmp_path / "job").exists()
  loaded = load_index(tmp_path / "job")
  assert loaded.doc_ids == [f"doc-{i}" for i in range(270)]


def test_rerun_keeps_finished_shards_and_continues(tmp_path, monkeypatch):
  sources = write_encoded(tmp_path / "enc")
  target = tmp_path / "index"
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  published = tree(target)
  other = IndexConfig(backend="exact", prune_doc_ratio=0.25, max_shard_tokens=700)
  calls = []
  real_build = shard_tasks.build_shard

  def dying_build(store, config, **kwargs):
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    calls.append(store.doc_ids[0])
    return real_build(store, config, **kwargs)

  monkeypatch.setattr(shard_tasks, "build_shard", dying_build)
  with pytest.raises(KeyboardInterrupt):
    build_index_from_shards(tmp_path / "enc", target, other, log=lambda m: None)
  # The published index is untouched and loadable; two new shards wait in the staging area.
  assert tree(target) == published
  assert load_index(target).config == EXACT
  staged = sorted(p.name for p in staging_dir(target).iterdir())
  assert staged[:2] == ["shard-00000", "shard-00001"]
  calls.clear()
  monkeypatch.setattr(shard_tasks, "build_shard", lambda s, c, **k: (calls.append(1),
                                                                      real_build(s, c, **k))[1])
  logs = []
  build_index_from_shards(tmp_path / "enc", target, other, log=logs.append)
  plan = shard_tasks.plan_tasks(sources, other)
  assert len(calls) == len(plan) - 2  # the two finished shards were kept
  assert any("rebuilding" in m and "other index settings" in m for m in logs)  # linked, stale
  assert tree(target) == in_memory(sources, other, tmp_path / "mem")


def test_unchanged_rebuild_only_verifies(tmp_path, monkeypatch):
  write_encoded(tmp_path / "enc")
  target = tmp_path / "index"
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  before = tree(target)
  monkeypatch.setattr(shard_tasks, "build_shard", None)  # calling it would fail
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  assert tree(target) == before


def test_changed_documents_are_rebuilt(tmp_path):
  write_encoded(tmp_path / "enc")
  target = tmp_path / "index"
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  sources = write_encoded(tmp_path / "enc", seed=7)  # re-encoded: same ids, other vectors
  logs = []
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=logs.append)
  assert any("built from other documents" in m for m in logs)
  assert tree(target) == in_memory(sources, EXACT, tmp_path / "mem")


def test_corrupted_staged_shard_is_rebuilt_and_named(tmp_path, monkeypatch):
  sources = write_encoded(tmp_path / "enc")
  target = tmp_path / "index"
  tasks = shard_tasks.plan_tasks(sources, EXACT)
  staging = staging_dir(target)
  for task in tasks[:2]:
    shard_tasks.build_task(task, EXACT, staging, log=lambda m: None)
  vectors = staging / "shard-00001" / "vectors.npy"
  data = bytearray(vectors.read_bytes())
  data[-1] ^= 0xFF
  vectors.write_bytes(bytes(data))
  (staging / "shard-00000" / "stray.txt").write_text("mixed in")
  logs = []
  build_index_from_shards(tmp_path / "enc", target, EXACT, log=logs.append)
  assert any(f"rebuilding {staging / 'shard-00001'}" in m and "SHA-256" in m for m in logs)
  assert any(f"rebuilding {staging / 'shard-00000'}" in m and "stray.txt" in m for m in logs)
  assert tree(target) == in_memory(sources, EXACT, tmp_path / "mem")


def test_staged_directory_of_another_index_is_removed(tmp_path):
  sources = write_encoded(tmp_path / "enc")
  staging = staging_dir(tmp_path / "index")
  (staging / "shard-00099").mkdir(parents=True)
  (staging / "shard-00099" / "x.npy").write_bytes(b"old")
  logs = []
  build_index_from_shards(tmp_path / "enc", tmp_path / "index", EXACT, log=logs.append)
  assert any("shard-00099" in m and "not a shard of this index" in m for m in logs)
  assert tree(tmp_path / "index") == in_memory(sources, EXACT, tmp_path / "mem")


def test_refuses_to_replace_what_is_not_an_index(tmp_path):
  write_encoded(tmp_path / "enc")
  target = tmp_path / "results"
  target.mkdir()
  (target / "notes.txt").write_text("keep me")
  with pytest.raises(IndexFileError, match="results: holds files but no index.json"):
    build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  (target / "index.json").write_text(json.dumps({"kind": "something else"}))
  with pytest.raises(IndexFileError, match="index.json: not a token index listing"):
    build_index_from_shards(tmp_path / "enc", target, EXACT, log=lambda m: None)
  assert (target / "notes.txt").read_text() == "keep me"


def test_corrupted_encoded_shard_is_refused_with_its_name(tmp_path):
  sources = write_encoded(tmp_path / "enc")
  salience = sources[1] / "salience.npy"
  data = bytearray(salience.read_bytes())
  data[-3] ^= 0x10
  salience.write_bytes(bytes(data))
  with pytest.raises(IndexFileError, match=r"corpus-00001-of-00003/salience.npy: SHA-256"):
    build_index_from_shards(tmp_path / "enc", tmp_path / "index", EXACT, log=lambda m: None)
  assert not (tmp_path / "index").exists()


def test_tiny_scann_shard_is_scanned_exactly(tmp_path):
  """The tail of a split can hold fewer tokens than AH training needs (16 centres a block)."""
  store = make_store(0, 6, seed=3, max_len=4)
  assert store.num_tokens < 16
  save_index(build_token_index(store, IndexConfig(backend="scann")), tmp_path / "scann")
  scann = load_index(tmp_path / "scann")
  exact = build_token_index(store, IndexConfig(backend="exact"))
  assert scann.shards[0].searcher.settings_.hash_type == "brute_force"
  queries = np.random.default_rng(1).normal(size=(5, store.dim)).astype(np.float32)
  d1, s1 = scann.search_tokens(queries, 4)
  d2, s2 = exact.search_tokens(queries, 4)
  np.testing.assert_array_equal(d1, d2)
  np.testing.assert_allclose(s1, s2, rtol=1e-5)


def test_beam_flags_default_to_two_local_worker_processes():
  from aligner_jax.eval.beam_index import pipeline_flags  # no Beam import at module level
  local = pipeline_flags([])
  assert {"--runner=DirectRunner", "--direct_running_mode=multi_processing",
          "--direct_num_workers=2"} <= set(local)
  assert "--direct_num_workers=4" in pipeline_flags(["--direct_num_workers=4"])
  assert "--direct_num_workers=2" not in pipeline_flags(["--direct_num_workers=4"])
  cluster = ["--runner=DataflowRunner", "--project=p", "--region=r",
             "--temp_location=gs://b/tmp", "--setup_file=./setup.py"]
  flags = pipeline_flags(cluster)
  assert flags[:len(cluster)] == cluster
  assert not any(f.startswith("--direct_") for f in flags)
