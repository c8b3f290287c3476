"""A published index changed in generations: add, delete, compact, metadata, filtered search,
crashes (kill -9) and readers during changes."""

import os
import pathlib
import random
import subprocess
import sys
import threading
import time

from generations_testlib import CONFIGS
from generations_testlib import corpus
from generations_testlib import expected_live
from generations_testlib import queries
from generations_testlib import run_script
from index_build_testlib import tree
import numpy as np
import pytest

from aligner_jax.index import IndexBusyError
from aligner_jax.index import IndexConfig
from aligner_jax.index import IndexFileError
from aligner_jax.index import UnknownDocumentsError
from aligner_jax.index import add_documents
from aligner_jax.index import build_token_index
from aligner_jax.index import compact
from aligner_jax.index import concatenate
from aligner_jax.index import current_generation
from aligner_jax.index import delete_documents
from aligner_jax.index import ivf
from aligner_jax.index import load_index
from aligner_jax.index import save_index
from aligner_jax.index import verify_index
from aligner_jax.index.__main__ import main as index_main
from aligner_jax.index.generations import lock_path
from aligner_jax.index.token_index import read_listing
from aligner_jax.index.token_store_io import load_token_store
from aligner_jax.index.token_store_io import save_token_store
from aligner_jax.retrieval import retrieve

REPO = pathlib.Path(__file__).resolve().parents[1]
K = 10
NEIGHBORS = 40
quiet = lambda message: None  # noqa: E731


def _run(index, batch=None, **kwargs):
  run, _ = retrieve(index, batch or queries(), "top_k:1", top_n=K, num_neighbors=NEIGHBORS,
                    **kwargs)
  return run


def _overlap(run_a, run_b) -> float:
  return float(np.mean([len(set(run_a[q]) & set(run_b[q])) / max(len(run_b[q]), 1)
                        for q in run_b]))


def _built(tmp_path, store, backend="exact", name="index"):
  directory = tmp_path / name
  save_index(build_token_index(store, CONFIGS[backend]), directory)
  return directory


def _assert_sound(directory):
  assert all(problem is None for problem in verify_index(directory).values()), \
      verify_index(directory)


@pytest.mark.parametrize("backend", ["exact", "scann", "ivf"])
def test_build_then_add_equals_a_build_of_the_union(tmp_path, backend):
  a, b = corpus(150, seed=1), corpus(150, seed=2, first=150)
  directory = _built(tmp_path, a, backend)
  assert add_documents(directory, b, log=quiet) == 1
  index = load_index(directory)
  assert index.generation == 1 and index.num_live_docs == 300 and len(index.shards) == 2
  fresh = build_token_index(concatenate([a, b]), CONFIGS[backend])
  added, expected = _run(index), _run(fresh)
  if backend == "exact":
    assert added == expected
  else:
    assert _overlap(added, expected) >= 0.95, _overlap(added, expected)
  # A new document is found by its own tokens.
  own = queries(1)
  own.vectors[0, :3] = np.asarray(b.dequantize(b.doc_tokens(7)))[:3]
  own.mask[0] = np.arange(own.mask.shape[1]) < min(3, b.lengths[7])
  assert next(iter(_run(index, own)["q0"])) == "doc-157"
  _assert_sound(directory)


@pytest.mark.parametrize("backend", ["exact", "scann", "ivf"])
def test_deleted_documents_never_come_back_and_k_results_remain(tmp_path, backend):
  store = corpus(300, seed=3)
  directory = _built(tmp_path, store, backend)
  doomed = [f"doc-{i}" for i in range(300) if i % 10]  # 90 % of the documents
  assert delete_documents(directory, doomed, log=quiet) == 1
  index = load_index(directory)
  assert index.num_live_docs == 30 and index.deleted.sum() == 270
  run = _run(index)
  assert all(len(docs) == K for docs in run.values())
  assert not set().union(*run.values()) & set(doomed)
  survivors = store.select_documents(np.arange(0, 300, 10))
  fresh = _run(build_token_index(survivors, CONFIGS["exact"]))
  if backend == "exact":
    assert run == fresh
  else:
    assert _overlap(run, fresh) >= 0.9, _overlap(run, fresh)
  _assert_sound(directory)


@pytest.mark.parametrize("backend", ["exact", "scann", "ivf"])
def test_filters_return_only_matching_documents_and_k_of_them(tmp_path, backend):
  store = corpus(300, seed=4)
  directory = _built(tmp_path, store, backend)
  delete_documents(directory, ["doc-2", "doc-7"], log=quiet)
  index = load_index(directory)
  group = index.metadata_mask(lambda m: m["group"] == 2)  # 58 live documents, 20 % of tokens
  assert group.sum() == 58
  run = _run(index, allowed=group, min_candidates=K)
  assert all(len(docs) == K for docs in run.values())
  assert all(int(d.split("-")[1]) % 5 == 2 for docs in run.values() for d in docs)
  # Very selective: 12 documents (a direct scan on ScaNN); then fewer than k.
  few = index.document_mask([f"doc-{i}" for i in range(100, 112)] + ["doc-2", "unknown"])
  assert few.sum() == 12
  run = _run(index, allowed=few, min_candidates=K)
  assert all(len(docs) == K and set(docs) <= {f"doc-{i}" for i in range(100, 112)}
             for docs in run.values())
  three = index.document_mask(["doc-5", "doc-6", "doc-8"])
  run = _run(index, allowed=three, min_candidates=K)
  assert all(set(docs) == {"doc-5", "doc-6", "doc-8"} for docs in run.values())
  if backend == "exact":  # the filter equals an index of the matching documents alone
    matching = store.select_documents(np.flatnonzero(group))
    assert _run(index, allowed=group) == _run(build_token_index(matching, CONFIGS["exact"]))
  with pytest.raises(ValueError, match="bool mask"):
    _run(index, allowed=np.ones(5, bool))


def test_updates_replace_the_old_version(tmp_path):
  directory = _built(tmp_path, corpus(60, seed=5))
  new = corpus(2, seed=9, first=1000)
  new.doc_ids = ["doc-3", "doc-1000"]
  new.metadata = [{"group": "updated"}, {"group": "new"}]
  add_documents(directory, new, log=quiet)
  index = load_index(directory)
  assert index.num_docs == 62 and index.num_live_docs == 61
  live_ids = [d for d, alive in zip(index.doc_ids, index.live) if alive]
  assert sorted(live_ids) == sorted(set(live_ids)) and "doc-3" in live_ids
  number = int(np.flatnonzero(index.document_mask(["doc-3"]))[0])
  assert number == 60 and index.metadata(number) == {"group": "updated"}
  own = queries(1)
  own.vectors[0, :2] = new.dequantize(new.doc_tokens(0))[:2]
  own.mask[0] = np.arange(own.mask.shape[1]) < min(2, new.lengths[0])
  run = _run(load_index(directory), own)
  assert next(iter(run["q0"])) == "doc-3"


@pytest.mark.parametrize("layout", ["plain", "pruned_all_tokens", "pq"])
def test_compaction_keeps_results_of_every_shard_layout(tmp_path, layout):
  """Shards whose searched rows are a subset of the stored ones (β^d < 1, every token
  stored) and product-quantised shards (a codebook each) compact to the same results."""
  config = {"plain": CONFIGS["exact"],
            "pruned_all_tokens": IndexConfig(backend="exact", prune_doc_ratio=0.5,
                                             refine_tokens="all"),
            "pq": IndexConfig(backend="exact", vector_dtype="pq:4")}[layout]
  directory = tmp_path / "index"
  base, extra = corpus(100, seed=30), corpus(30, seed=31, first=100)
  save_index(build_token_index(base, config), directory)
  add_documents(directory, extra, log=quiet)
  delete_documents(directory, [f"doc-{i}" for i in range(0, 130, 3)], log=quiet)
  run = _run(load_index(directory))
  if layout != "pq":  # (a fresh build trains other PQ codebooks)
    survivors = concatenate([base, extra]).select_documents(
        np.array([i for i in range(130) if i % 3]))
    assert run == _run(build_token_index(survivors, config))
  compact(directory, log=quiet)
  index = load_index(directory)
  assert not index.deleted.any() and index.num_docs == 86
  assert _run(index) == run
  _assert_sound(directory)


def test_compaction_drops_deleted_rows_and_merges_small_shards(tmp_path):
  directory = _built(tmp_path, corpus(120, seed=6))
  add_documents(directory, corpus(40, seed=7, first=120), log=quiet)
  add_documents(directory, corpus(40, seed=8, first=160), log=quiet)
  delete_documents(directory, [f"doc-{i}" for i in range(0, 200, 4)], log=quiet)
  before = load_index(directory)
  run = _run(before)
  assert compact(directory, log=quiet) == 4
  after = load_index(directory)
  # The rewritten first shard would overflow the largest shard's size with the two added ones
  # (its default limit), which are merged with each other.
  assert [s.store.num_docs for s in after.shards] == [90, 60]
  assert after.num_docs == 150 == after.num_live_docs
  assert _run(after) == run  # exact backend: same tokens, same order, same results
  assert [m for m in (after.metadata(i) for i in range(3))] == [
      {"group": g, "first": True} for g in (1, 2, 3)]
  _assert_sound(directory)
  # Readers of generation 3 keep their files; the next change removes what only 3 listed.
  assert (directory / "shard-00000").is_dir()
  assert _run(before) == run
  delete_documents(directory, ["doc-1"], log=quiet)
  assert not (directory / "shard-00000").exists()
  assert _run(before) == run  # memory-mapped files outlive their names
  assert compact(directory, log=quiet) == 6 and compact(directory, log=quiet) == 6
  _assert_sound(directory)


def test_bad_changes_are_refused_and_leave_the_index_as_it_was(tmp_path):
  directory = _built(tmp_path, corpus(50, seed=10))
  delete_documents(directory, ["doc-1"], log=quiet)
  picture = tree(directory)
  with pytest.raises(UnknownDocumentsError, match="2 id.*'doc-1', 'nope'"):
    delete_documents(directory, ["doc-2", "doc-1", "nope"], log=quiet)
  with pytest.raises(ValueError, match="no document ids"):
    delete_documents(directory, [], log=quiet)
  twice = corpus(2, seed=11, first=100)
  twice.doc_ids = ["x", "x"]
  with pytest.raises(ValueError, match="repeat ids"):
    add_documents(directory, twice, log=quiet)
  other = corpus(3, seed=12, first=100)
  other.salience = None
  with pytest.raises(ValueError, match="saliences: False"):
    add_documents(directory, other, log=quiet)
  with pytest.raises(ValueError, match="metadata has 1 entries"):
    add_documents(directory, corpus(3, seed=12, first=100), [{}], log=quiet)
  assert tree(directory) == picture
  with lock_path(directory).open("a") as lock:
    import fcntl  # pylint: disable=g-import-not-at-top
    fcntl.flock(lock, fcntl.LOCK_EX)
    with pytest.raises(IndexBusyError, match="another process"):
      compact(directory, log=quiet)
  assert tree(directory) == picture
  assert delete_documents(directory, ["doc-2", "nope"], missing="ignore", log=quiet) == 2
  with pytest.raises(IndexFileError, match="index.json: file not found"):
    add_documents(tmp_path / "missing", corpus(2, seed=1), log=quiet)


def test_verify_checks_tombstones_and_metadata(tmp_path):
  directory = _built(tmp_path, corpus(40, seed=13))
  delete_documents(directory, ["doc-4"], log=quiet)
  _assert_sound(directory)
  tombstone = next((directory / "tombstones").iterdir())
  data = bytearray(tombstone.read_bytes())
  data[-1] ^= 0x01  # same size, another document deleted
  tombstone.write_bytes(bytes(data))
  assert "SHA-256 differs" in verify_index(directory)["shard-00000"]
  with pytest.raises(IndexFileError, match="marks 2 deleted documents but index.json says 1"):
    load_index(directory)
  data[-1] ^= 0x01
  tombstone.write_bytes(bytes(data))
  metadata = directory / "shard-00000" / "metadata.jsonl"
  text = metadata.read_text()
  metadata.write_text(text.replace('"group": 1', '"group": 7', 1))
  assert "metadata.jsonl: SHA-256" in verify_index(directory)["shard-00000"]


def test_metadata_flows_through_encoded_shards_and_the_index_job(tmp_path):
  from aligner_jax.eval.index_build import build_index_from_shards  # pylint: disable=g-import-not-at-top
  from aligner_jax.index.token_store_io import shard_name  # pylint: disable=g-import-not-at-top
  stores = [corpus(30, seed=14), corpus(20, seed=15, first=30)]
  for i, store in enumerate(stores):
    save_token_store(store, tmp_path / "enc" / shard_name("corpus", i, 2))
  assert load_token_store(tmp_path / "enc" / shard_name("corpus", 1, 2)).metadata == \
      stores[1].metadata
  build_index_from_shards(tmp_path / "enc", tmp_path / "index", CONFIGS["exact"], log=quiet)
  index = load_index(tmp_path / "index")
  assert [index.metadata(i) for i in range(50)] == stores[0].metadata + stores[1].metadata
  assert index.metadata_mask(lambda m: m["first"]).sum() == 50


def test_command_line_add_delete_compact(tmp_path, capsys):
  directory = _built(tmp_path, corpus(60, seed=16))
  save_token_store(corpus(20, seed=17, first=60), tmp_path / "new")
  assert index_main(["add", str(directory), "--store", str(tmp_path / "new")]) == 0
  (tmp_path / "ids.txt").write_text("doc-1\n\n  doc-61 \n")
  assert index_main(["delete", str(directory), "--ids-file", str(tmp_path / "ids.txt")]) == 0
  assert index_main(["delete", str(directory), "--ids", "doc-2"]) == 0
  assert index_main(["compact", str(directory)]) == 0
  assert index_main(["verify", str(directory)]) == 0
  index = load_index(directory)
  assert index.generation == 4 and index.num_live_docs == 77
  capsys.readouterr()
  picture = tree(directory)
  bad = [(["delete", str(directory), "--ids", "doc-1"], 1, "name no live document"),
         (["delete", str(directory), "--ids-file", str(tmp_path / "none.txt")], 1,
          "none.txt: cannot read"),
         (["add", str(directory), "--store", str(tmp_path / "nothing")], 1,
          "cannot read the new documents"),
         (["add", str(tmp_path / "no_index"), "--store", str(tmp_path / "new")], 2,
          "not a readable index"),
         (["compact", str(directory), "--max-shard-tokens", "0"], 1, "must be positive")]
  for argv, code, message in bad:
    assert index_main(argv) == code, argv
    assert message in capsys.readouterr().err, argv
  assert index_main(["add", str(directory), "--store", str(tmp_path / "new")]) == 0
  # 19 updates, and doc-61 (deleted above) back again.
  assert load_index(directory).num_live_docs == 78
  assert tree(directory) != picture and current_generation(directory) == 5


def _unlisted(directory: pathlib.Path) -> list[str]:
  """Files an interrupted change left: hidden temporary ones, and shards or tombstones no
  generation lists."""
  listing = read_listing(directory)
  known = listing.files() | set(listing.retained) | {"index.json", "tombstones"}
  return sorted(p.relative_to(directory).as_posix()
                for p in [*directory.iterdir(), *(directory / "tombstones").glob("*")]
                if p.relative_to(directory).as_posix() not in known)


def _worker(index_dir: pathlib.Path, steps: int, coarse_min: int | None) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
  extra = [] if coarse_min is None else [str(coarse_min)]
  return subprocess.Popen([sys.executable, str(REPO / "tests" / "generations_testlib.py"),
                           str(index_dir), str(steps), *extra], env=env, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["exact", "ivf"])
def test_kill_9_during_add_delete_and_compact_leaves_a_loadable_generation(tmp_path,
                                                                           monkeypatch,
                                                                           backend):
  """A writer applying add / delete / compact in turn is killed at random moments; every
  time the index loads at the generation its listing names, with exactly that generation's
  documents, and every file verifies. The rerun continues the script. With IVF every
  generation also writes (or keeps) its stored coarse level (`coarse_level.py`): the writer
  and this test lower COARSE_MIN so that the small index has one."""
  coarse_min = None
  if backend == "ivf":
    coarse_min = 1
    monkeypatch.setattr(ivf, "COARSE_MIN", coarse_min)
  base = corpus(90, seed=20)
  directory = _built(tmp_path, base, backend)
  # Each writer is killed a random 0-0.15 s after its first change is published, whatever
  # the machine's speed (a change takes 0.03-0.2 s): kills land in every kind of change.
  steps, rng, killed, leftovers = 40, random.Random(0), 0, []
  while current_generation(directory) < steps:
    before = current_generation(directory)
    worker = _worker(directory, steps, coarse_min)
    while worker.poll() is None and current_generation(directory) == before:
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.15))
    if worker.poll() is None:
      worker.kill()
      killed += 1
    worker.wait()
    generation = current_generation(directory)
    assert generation >= before
    leftovers += _unlisted(directory)
    index = load_index(directory)
    assert index.generation == generation
    live = {d for d, alive in zip(index.doc_ids, index.live) if alive}
    assert live == expected_live(base.doc_ids, generation)
    _assert_sound(directory)
  assert killed >= 3, "the writer finished before it could be killed"
  print(f"{killed} kills; files of unfinished changes found: {leftovers}")
  run_script(directory, steps)
  assert current_generation(directory) == steps
  assert (read_listing(directory).coarse is not None) == (backend == "ivf")


def test_readers_during_changes_see_one_generation_or_the_other(tmp_path):
  base = corpus(90, seed=21)
  directory = _built(tmp_path, base)
  steps = 6
  writer = threading.Thread(target=run_script, args=(directory, steps))
  seen, problems = set(), []
  old = load_index(directory)
  old_run = _run(old)
  writer.start()
  while writer.is_alive() or not seen:
    index = load_index(directory)
    live = {d for d, alive in zip(index.doc_ids, index.live) if alive}
    if live != expected_live(base.doc_ids, index.generation):
      problems.append(index.generation)
    seen.add(index.generation)
  writer.join()
  assert not problems
  assert len(seen) >= 2, seen
  assert _run(old) == old_run  # a reader of generation 0 outlives the files it mapped
