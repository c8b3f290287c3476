"""Few-shot alignment adaptation: folds and strategy choice against a brute-force reference."""

import json

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.eval.adaptation import STRATEGIES
from aligner_jax.eval.adaptation import adapt
from aligner_jax.eval.adaptation import adaptation_report
from aligner_jax.eval.adaptation import make_folds
from aligner_jax.eval.adaptation import score_strategies
from aligner_jax.eval.adaptation import write_adaptation


def reference_adapt(ndcg, folds):
  """Plain loops: best strategy on each fold (first on ties), its mean on all other queries."""
  num_strategies, num_queries = len(ndcg), len(ndcg[0])
  tests = []
  chosen = []
  for fold in folds:
    fold = [int(i) for i in fold]
    best, best_value = None, None
    for s in range(num_strategies):
      value = sum(ndcg[s][i] for i in fold) / len(fold)
      if best_value is None or value > best_value:
        best, best_value = s, value
    rest = [i for i in range(num_queries) if i not in fold]
    tests.append(sum(ndcg[best][i] for i in rest) / len(rest))
    chosen.append(best)
  mean = sum(tests) / len(tests)
  std = (sum((t - mean) ** 2 for t in tests) / len(tests)) ** 0.5
  return chosen, tests, mean, std


def test_strategies_are_the_papers():
  assert STRATEGIES == ("top_k:1", "top_k:2", "top_k:4", "top_k:6", "top_k:8", "top_p:0.005",
                        "top_p:0.01", "top_p:0.015", "top_p:0.02")


@settings(max_examples=40, deadline=None)
@given(st.integers(9, 60), st.integers(0, 1000))
def test_folds_are_disjoint_groups_of_eight(num_queries, seed):
  folds = make_folds(num_queries, seed=seed)
  assert len(folds) == num_queries // 8
  flat = np.concatenate(folds)
  assert all(len(f) == 8 for f in folds)
  assert len(set(flat.tolist())) == len(flat) and flat.max() < num_queries
  again = make_folds(num_queries, seed=seed)
  assert all(np.array_equal(a, b) for a, b in zip(folds, again))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(9, 50), st.integers(0, 10_000), st.booleans())
def test_adapt_matches_the_reference(num_strategies, num_queries, seed, coarse):
  rng = np.random.default_rng(seed)
  ndcg = rng.random((num_strategies, num_queries))
  if coarse:
    ndcg = np.round(ndcg * 4) / 4  # many exact ties between strategies
  folds = make_folds(num_queries, seed=seed)
  got = adapt(ndcg, folds)
  chosen, tests, mean, std = reference_adapt(ndcg.tolist(), folds)
  assert got["chosen"] == chosen
  np.testing.assert_allclose(got["test_scores"], tests, rtol=1e-12)
  assert got["mean"] == pytest.approx(mean, abs=1e-12)
  assert got["std"] == pytest.approx(std, abs=1e-12)


def test_ties_prefer_the_earlier_strategy_and_a_dominant_one_wins():
  ndcg = np.zeros((3, 16))
  folds = make_folds(16)
  assert adapt(ndcg, folds)["chosen"] == [0, 0]
  ndcg[2] = 1.0
  out = adapt(ndcg, folds)
  assert out["chosen"] == [2, 2] and out["mean"] == 1.0 and out["std"] == 0.0


def test_too_few_queries_is_refused():
  with pytest.raises(ValueError, match="more than 8"):
    make_folds(8)


def test_report_table_and_files(tmp_path):
  rng = np.random.default_rng(0)
  ids = [f"q{i}" for i in range(30)]
  calls = []

  def per_query(strategy):
    calls.append(strategy)
    base = 0.3 + 0.05 * STRATEGIES.index(strategy)
    return {q: float(np.clip(base + 0.1 * rng.normal(), 0, 1)) for q in ids}

  ndcg = score_strategies(per_query, ids)
  assert calls == list(STRATEGIES) and ndcg.shape == (9, 30)
  report = adaptation_report(ndcg, ids, dataset="toy")
  assert report["num_folds"] == 3 and len(report["folds"]) == 3
  assert all(len(f["queries"]) == 8 for f in report["folds"])
  assert report["ndcg@10"]["top_k:1"] == pytest.approx(ndcg[0].mean())
  table = write_adaptation(tmp_path, [report, {**report, "dataset": "toy2"}])
  lines = table.splitlines()
  assert lines[0].startswith("| dataset | k=1 | k=2 | k=4 | k=6 | k=8 | p=0.5% | p=1% | p=1.5% |")
  assert lines[2].startswith("| toy |") and "±" in lines[2] and "**" in lines[2]
  data = json.loads((tmp_path / "adaptation.json").read_text())
  assert data["reports"][0]["adapted"] == report["adapted"]
  assert (tmp_path / "adaptation.md").read_text() == table
  with pytest.raises(ValueError, match="no nDCG"):
    score_strategies(lambda s: {}, ids)
