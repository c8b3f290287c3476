"""bench/head_vectors.py and the end-to-end benchmark's `--head` rows, on a tiny encode cache.

The head is a real (untrained, seeded) R4 ColBERT projection saved the way the repro jobs save
trained heads; the expected vectors are computed here from its kernel with NumPy.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from aligner_jax.eval import inputs
from aligner_jax.index.token_store import from_padded
from aligner_jax.index.token_store_io import save_token_store
from bench import bench_end_to_end as e2e
from bench import harness
from bench import head_vectors
from repro.frozen import heads
from repro.frozen import trained_heads

HIDDEN = 16
DIM = 8
DOC_LENGTHS = (2, 5, 3)
QUERY_LENGTHS = (4, 1)


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _padded(rng: np.random.Generator, lengths) -> tuple[np.ndarray, np.ndarray]:
  width = max(lengths)
  vectors = _unit(rng.standard_normal((len(lengths), width, HIDDEN))).astype(np.float32)
  mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
  return vectors, mask


@pytest.fixture
def encoded(tmp_path) -> pathlib.Path:
  """An encode cache in the encode job's layout: one corpus shard and the test queries."""
  rng = np.random.default_rng(0)
  root = tmp_path / "encoded"
  d_vec, d_mask = _padded(rng, DOC_LENGTHS)
  docs = from_padded(["d0", "d1", "d2"], d_vec, d_mask, vector_dtype="float16",
                     token_ids=rng.integers(1000, 2000, d_mask.shape))
  save_token_store(docs, root / "corpus-00000-of-00001", dataset="tiny", doc_length=256)
  q_vec, q_mask = _padded(rng, QUERY_LENGTHS)
  queries = from_padded(["q0", "q1"], q_vec, q_mask, vector_dtype="float16")
  save_token_store(queries, root / "queries-test", dataset="tiny", query_length=256)
  return root


def _save_head(directory: pathlib.Path, seed: int) -> pathlib.Path:
  config = heads.HeadConfig(kind="colbert", projection_dim=DIM)
  params = heads.init_params(heads.build_module(config), config, hidden_dim=HIDDEN,
                             rng=jax.random.key(seed))
  npz, meta = trained_heads.paths(directory, "colbert", seed, "tiny")
  trained_heads.save_head(params, {"trained": True}, npz, meta)
  return npz


def _kernel(npz: pathlib.Path) -> np.ndarray:
  with np.load(npz) as f:
    return f["token_projection/kernel"]


def test_the_cache_holds_the_projected_vectors_of_every_token(encoded, tmp_path):
  npz = _save_head(tmp_path / "heads", seed=0)
  out = head_vectors.write_head_cache(encoded, npz, "colbert", DIM, tmp_path / "vectors",
                                      log=lambda m: None)
  kernel = _kernel(npz)
  for part, ids in (("corpus-00000-of-00001", ["d0", "d1", "d2"]),
                    ("queries-test", ["q0", "q1"])):
    src_ids, src_off, src_vec = e2e.read_store(encoded / part)
    got_ids, got_off, got_vec = e2e.read_store(out / part)  # what the torch peers read
    assert got_ids == src_ids == ids
    np.testing.assert_array_equal(got_off, src_off)
    assert got_vec.shape == (src_vec.shape[0], DIM) and got_vec.dtype == np.float16
    want = _unit(np.asarray(src_vec, np.float32) @ kernel)
    np.testing.assert_allclose(np.asarray(got_vec, np.float32), want, atol=2e-3)
  manifest = json.loads((out / "queries-test" / "manifest.json").read_text())
  assert manifest["config"]["query_length"] == 256
  assert manifest["config"]["head"] == npz.name and manifest["config"]["head_dim"] == DIM
  # The project's workers read it as an encode cache of the lengths the benchmark asks for.
  batch = inputs.load_encoded_queries(out / "queries-test", ["q1", "q0"],
                                      query_length=e2e.LENGTH)
  assert batch.vectors.shape == (2, max(QUERY_LENGTHS), DIM)
  corpus_manifest = json.loads((inputs.corpus_shards(out)[0] / "manifest.json").read_text())
  assert corpus_manifest["config"]["doc_length"] == 256


def test_the_cache_is_written_once_per_head(encoded, tmp_path):
  first = _save_head(tmp_path / "heads", seed=0)
  second = _save_head(tmp_path / "heads", seed=1)
  logs = []
  out = head_vectors.write_head_cache(encoded, first, "colbert", DIM, tmp_path / "v",
                                      log=logs.append)
  stamp = (out / "queries-test" / "vectors.npy").stat().st_mtime_ns
  again = head_vectors.write_head_cache(encoded, first, "colbert", DIM, tmp_path / "v",
                                        log=logs.append)
  assert again == out and logs[-1] == f"head vectors read from {out}"
  assert (out / "queries-test" / "vectors.npy").stat().st_mtime_ns == stamp
  other = head_vectors.write_head_cache(encoded, second, "colbert", DIM, tmp_path / "v",
                                        log=logs.append)
  assert other != out and other.name.startswith(second.stem)
  _, _, a = e2e.read_store(out / "queries-test")
  _, _, b = e2e.read_store(other / "queries-test")
  assert not np.allclose(a, b)


def test_a_head_without_its_history_is_refused(encoded, tmp_path):
  npz = _save_head(tmp_path / "heads", seed=0)
  npz.with_suffix(".json").unlink()
  with pytest.raises(SystemExit, match="no trained head there"):
    head_vectors.write_head_cache(encoded, npz, "colbert", DIM, tmp_path / "v",
                                  log=lambda m: None)
  with pytest.raises(SystemExit, match="no such head file"):
    head_vectors.write_head_cache(encoded, tmp_path / "missing.npz", "colbert", DIM,
                                  tmp_path / "v", log=lambda m: None)
  assert not (tmp_path / "v").exists()  # nothing half-written


def test_rows_on_head_vectors_are_named_for_them():
  suffix = head_vectors.head_suffix("colbert", 128)
  assert e2e.row_name("plaid", suffix) == "plaid_colbert128"
  assert e2e.row_name("aligner_jax_index_xtr", suffix) == "aligner_jax_index_xtr_colbert128"
  assert e2e.row_name("bm25", suffix) == "bm25"  # reads no vectors
  assert e2e.row_name("aligner_jax_exact", "") == "aligner_jax_exact"
  # Another alignment names the project's rows only: the peers compute MaxSim whatever it is.
  assert e2e.row_name("aligner_jax_exact", "", "top_k:2") == "aligner_jax_exact_top_k2"
  assert e2e.row_name("aligner_jax_index_xtr", suffix, "top_p:0.015") == (
      "aligner_jax_index_xtr_colbert128_top_p0.015")
  assert e2e.row_name("plaid_fastest", "", "top_k:2") == "plaid_fastest"
  assert e2e.row_name("bm25", "", "top_k:2") == "bm25"


def test_keeping_other_rows_keeps_the_minilm_rows_of_a_rerun_pipeline(tmp_path):
  def table(pipelines):
    run = harness.TableRun("end_to_end", "test", e2e.COLUMNS, mode="full")
    for p in pipelines:
      run.add({c: None for c in e2e.COLUMNS} | {"pipeline": p, "status": "ok", "note": p})
    return run

  table(["bm25", "plaid", "plaid_colbert128"]).write(tmp_path)
  rerun = [e2e.row_name(p, "_colbert128") for p in ("plaid", "aligner_jax_exact")]
  new = table([])
  e2e._keep_rows(new, tmp_path / "end_to_end.json", rerun)
  kept = [dict(zip(e2e.COLUMNS, r))["pipeline"] for r in new.record["rows"]]
  assert kept == ["bm25", "plaid"]
