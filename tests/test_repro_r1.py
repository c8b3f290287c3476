"""Claim R1 (alignment adaptation): per-family split, per-dataset reports against brute force,
the result files, the figures, and the job end to end on tiny cached token stores."""

import json
import pathlib
import struct

import gin
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax import main as main_lib
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries
from aligner_jax.data.demo_collection import generate_collection
from aligner_jax.eval.adaptation import STRATEGIES
from aligner_jax.eval.adaptation import make_folds
from aligner_jax.index import from_padded
from aligner_jax.index.token_store_io import save_token_store
from repro import r1
from repro import r1_figures as figures
from repro.r1_job import R1Dataset
from repro.r1_job import repro_r1


def tiny_collection(families):
  corpus, queries = new_corpus(), new_queries()
  corpus.add("d0", "text")
  for i, fam in enumerate(families):
    queries.add(f"q{i}", f"query {i}", metadata={} if fam is None else {"family": fam})
  return Collection(name="tiny", corpus=corpus, queries=queries)


def test_family_positions_on_the_demo_test_split():
  collection = generate_collection(0)
  ids = collection.split_queries("test")
  groups = r1.family_positions(collection, ids)
  assert sorted(groups) == ["broad", "factoid"]
  assert len(groups["factoid"]) == 270 and len(groups["broad"]) == 180
  allpos = np.sort(np.concatenate(list(groups.values())))
  np.testing.assert_array_equal(allpos, np.arange(len(ids)))
  for family, pos in groups.items():
    for p in pos:
      row = collection.queries.index[ids[p]]
      assert collection.queries.metadata[row]["family"] == family


def test_family_positions_keep_order_and_name_problems():
  collection = tiny_collection(["b", "a", "b", "a", "a"])
  groups = r1.family_positions(collection, ["q4", "q0", "q1", "q2"])
  assert list(groups) == ["a", "b"]  # order of first appearance in the given ids
  np.testing.assert_array_equal(groups["a"], [0, 2])
  np.testing.assert_array_equal(groups["b"], [1, 3])
  with pytest.raises(ValueError, match="q9.*not in the query table"):
    r1.family_positions(collection, ["q0", "q9"])
  with pytest.raises(ValueError, match="q1.*no metadata field 'family'"):
    r1.family_positions(tiny_collection(["a", None]), ["q0", "q1"])


def brute_force_report(ndcg, folds):
  chosen, tests = [], []
  for fold in folds:
    means = [sum(row[i] for i in fold) / len(fold) for row in ndcg]
    best = means.index(max(means))
    rest = [i for i in range(len(ndcg[0])) if i not in set(fold.tolist())]
    chosen.append(best)
    tests.append(sum(ndcg[best][i] for i in rest) / len(rest))
  return chosen, sum(tests) / len(tests)


@settings(max_examples=30, deadline=None)
@given(st.integers(9, 70), st.integers(0, 10_000))
def test_report_matches_brute_force(num_queries, seed):
  rng = np.random.default_rng(seed)
  ndcg = rng.choice([0.0, 0.25, 0.5, 1.0], size=(len(STRATEGIES), num_queries))
  ids = [f"q{i}" for i in range(num_queries)]
  report = r1.r1_report(ndcg, ids, dataset="x", seed=seed % 7)
  chosen, mean = brute_force_report(ndcg.tolist(), make_folds(num_queries, seed=seed % 7))
  assert report["picked"] == {s: chosen.count(i) for i, s in enumerate(STRATEGIES)}
  assert sum(report["picked"].values()) == report["num_folds"] == num_queries // 8
  assert report["adapted"]["mean"] == pytest.approx(mean, abs=1e-12)
  means = ndcg.mean(axis=1)
  assert report["best_fixed"] == STRATEGIES[int(np.flatnonzero(means == means.max())[0])]
  assert report["adapted_minus_default"] == pytest.approx(mean - means[0], abs=1e-12)


def test_report_rejects_a_wrong_shape():
  with pytest.raises(ValueError, match="x: ndcg has shape"):
    r1.r1_report(np.zeros((3, 20)), [f"q{i}" for i in range(20)], dataset="x")


def make_reports():
  rng = np.random.default_rng(0)
  a = rng.uniform(0.3, 0.5, size=(len(STRATEGIES), 40))
  a[0] += 0.2  # top-1 best
  b = rng.uniform(0.3, 0.5, size=(len(STRATEGIES), 24))
  b[2] += 0.3  # top-4 best, by far
  return [r1.r1_report(a, [f"a{i}" for i in range(40)], dataset="A"),
          r1.r1_report(b, [f"b{i}" for i in range(24)], dataset="B/broad")]


def test_summary_states_the_claim():
  reports = make_reports()
  summary = r1.r1_summary(reports)
  assert summary["best_fixed"] == {"A": "top_k:1", "B/broad": "top_k:4"}
  assert summary["best_differs"]
  default = np.mean([r["ndcg@10"]["top_k:1"] for r in reports])
  adapted = np.mean([r["adapted"]["mean"] for r in reports])
  assert summary["mean_default"] == pytest.approx(default)
  assert summary["mean_adapted"] == pytest.approx(adapted)
  assert summary["adapted_at_least_default"] == (adapted >= default)
  assert sum(summary["picked"].values()) == 5 + 3
  same = r1.r1_summary([reports[0], reports[0]])
  assert not same["best_differs"]


def test_write_r1_files(tmp_path):
  reports = make_reports()
  out = tmp_path / "results" / "r1.json"
  content = r1.write_r1(out, reports, setup={"seed": 0})
  loaded = json.loads(out.read_text())
  assert loaded["summary"] == json.loads(json.dumps(content["summary"]))
  assert [r["dataset"] for r in loaded["reports"]] == ["A", "B/broad"]
  assert loaded["paper"]["rows"][1]["adapted"] == [71.4, 2.2]
  table = out.with_suffix(".md").read_text()
  assert "| A |" in table and "| B/broad |" in table and "mean of the rows above" in table
  assert "SciFact (paper, ALIGNER-xxl)" in table and "71.4 ± 2.2" in table
  # The picks table: per dataset the number of folds, then the count per strategy.
  row = next(line for line in table.splitlines() if line.startswith("| B/broad | 3 |"))
  assert sum(int(c) for c in row.strip("| ").split(" | ")[2:]) == 3
  assert sorted(p.name for p in out.parent.iterdir()) == ["r1.json", "r1.md"]  # no temp files


def png_size(path):
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", data[16:24])


def test_figures_on_a_tiny_input(tmp_path):
  reports = make_reports()
  strategies, names, values = figures.strategy_matrix(reports, r1.paper_numbers()["rows"][:2])
  assert strategies == list(STRATEGIES)
  assert names == ["A", "B/broad", "SciFact (paper, ALIGNER-base)", "SciFact (paper, ALIGNER-xxl)"]
  assert values.shape == (9, 4)
  assert values[0, 0] == pytest.approx(reports[0]["ndcg@10"]["top_k:1"] * 100)
  assert values[5, 3] == 74.4
  heat = figures.plot_strategy_heatmap(reports, tmp_path / "fig" / "h.png",
                                       paper_rows=r1.paper_numbers()["rows"])
  picks = figures.plot_picks(reports, tmp_path / "fig" / "p.png")
  w, h = png_size(heat)
  assert w > h > 100
  assert min(png_size(picks)) > 100
  assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["h.png", "p.png"]
  broken = [dict(reports[0], picked={s: 0 for s in STRATEGIES})]
  with pytest.raises(ValueError, match="do not add up"):
    figures.plot_picks(broken, tmp_path / "x.png")


def write_cached_dataset(root: pathlib.Path, num_docs=30, num_queries=20, dim=8, seed=0):
  """A BEIR directory and an encode-job cache for it: random unit token vectors, each query
  a noisy copy of a few tokens of its relevant document."""
  rng = np.random.default_rng(seed)
  beir = root / "beir"
  (beir / "qrels").mkdir(parents=True)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  docs = unit(rng.normal(size=(num_docs, 12, dim)))
  d_mask = np.arange(12)[None, :] < rng.integers(4, 13, size=num_docs)[:, None]
  with open(beir / "corpus.jsonl", "w") as f:
    for i in range(num_docs):
      f.write(json.dumps({"_id": f"d{i}", "text": f"document {i}"}) + "\n")
  targets = rng.integers(num_docs, size=num_queries)
  q = unit(docs[targets, :4] + 0.6 * rng.normal(size=(num_queries, 4, dim)))
  with open(beir / "queries.jsonl", "w") as f, open(beir / "qrels" / "test.tsv", "w") as g:
    g.write("query-id\tcorpus-id\tscore\n")
    for i, t in enumerate(targets):
      f.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
      g.write(f"q{i}\td{t}\t1\n")
  cache = root / "cache"
  save_token_store(from_padded([f"d{i}" for i in range(num_docs)], docs, d_mask,
                               vector_dtype="float16"),
                   cache / "corpus-00000-of-00001", dataset="tiny", doc_length=16)
  save_token_store(from_padded([f"q{i}" for i in range(num_queries)], q,
                               np.ones((num_queries, 4), bool)),
                   cache / "queries-test", dataset="tiny", query_length=8)
  return beir, cache


@pytest.mark.slow  # nine alignments compiled and refined three times: ~30 s on 2 loaded cores
def test_job_end_to_end_on_a_cached_dataset(tmp_path, capsys):
  beir, cache = write_cached_dataset(tmp_path)
  spec = R1Dataset(name="tiny", beir_dir=str(beir), encoded_dir=str(cache),
                   index_dir=str(tmp_path / "index"), num_neighbors=16, doc_length=16,
                   query_length=8)
  kwargs = dict(datasets=[spec], output_json=str(tmp_path / "docs" / "r1.json"),
                figures_dir=str(tmp_path / "docs" / "figs"), work_dir=str(tmp_path / "work"),
                retriever="exact", top_n=10)
  first = repro_r1(**kwargs)
  report = first["reports"][0]
  assert report["dataset"] == "tiny" and report["num_queries"] == 20 and report["num_folds"] == 2
  assert set(report["ndcg@10"]) == set(STRATEGIES)
  assert report["ndcg@10"]["top_k:1"] > 0.5  # queries are noisy copies of their document
  assert (tmp_path / "work" / "tiny.scores.json").is_file()
  assert (tmp_path / "index" / "index.json").is_file()
  assert sorted(p.name for p in (tmp_path / "docs" / "figs").iterdir()) == [
      "r1_heatmap.png", "r1_picks.png"]
  capsys.readouterr()
  second = repro_r1(**kwargs)  # reuses the per-query scores: same numbers, no refinement
  assert "reused from" in capsys.readouterr().out
  assert second["reports"] == first["reports"]
  # Another setting invalidates the kept scores.
  third = repro_r1(**{**kwargs, "top_n": 5})
  assert "reused_scores_from" not in third["setup"]["timings"]["tiny"]
  with pytest.raises(ValueError, match="no encoded_dir, so the job needs a model"):
    repro_r1(**{**kwargs, "datasets": [R1Dataset(name="demo", beir_dir="demo")]})


def test_experiment_gin_file_configures_the_job():
  gin.clear_config()
  try:
    main_lib.parse_gin(["gin/experiments/repro_r1_adaptation.gin"],
                       ["SCIFACT_CACHE = '/elsewhere/scifact'"])
    datasets = gin.query_parameter("%R1_DATASETS")
    assert [ref.scoped_selector.split("/")[0] for ref in datasets] == ["scifact", "cisi", "demo"]
    make = gin.get_configurable("repro.R1Dataset")
    specs = {}
    for scope in ("scifact", "cisi", "demo"):
      with gin.config_scope(scope):
        specs[scope] = make()
    assert specs["scifact"].encoded_dir == "/elsewhere/scifact"
    assert specs["scifact"].query_length == 256 and specs["cisi"].num_neighbors == 4000
    assert specs["cisi"].encoded_dir == "/work/cache/minilm/cisi"
    assert specs["demo"].encoded_dir is None and specs["demo"].family_key == "family"
    assert gin.query_parameter("%MODEL_DIR") is None  # the demo model's directory is not written
    assert gin.query_parameter("%DEMO_MODEL_DIR") == "runs/demo"
  finally:
    gin.clear_config()
