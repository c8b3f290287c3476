"""Which query-document pairs report.html draws: relevant ones, every family in turn, each
family ranked and drawn under its best alignment."""

from aligner_jax.eval.report import best_alignment_per_family
from aligner_jax.eval.report import picture_pairs


def test_pictures_show_relevant_pairs_one_family_after_the_other():
  run = {"q1": {"a": 3.0, "b": 2.0}, "q2": {"c": 5.0, "d": 1.0}, "q3": {"e": 1.0},
         "q4": {"f": 2.0, "g": 1.0}, "q5": {"h": 1.0}}
  qrels = {"q1": {"b": 1}, "q2": {"c": 1}, "q3": {"x": 1}, "q4": {"f": 1}, "q5": {"h": 0}}
  family = {"q1": "broad", "q2": "broad", "q3": "factoid", "q4": "factoid", "q5": "factoid"}
  pairs = picture_pairs(run, qrels, ["q1", "q2", "q3", "q4", "q5"], family, 3)
  # q2 ranks its relevant document first, so it comes before q1; q3's relevant document is not
  # in the run and q5 has none judged relevant: neither is ever drawn.
  assert pairs == [("q2", "c", 1), ("q4", "f", 1), ("q1", "b", 2)]
  assert picture_pairs(run, qrels, ["q3", "q5"], family, 3) == []


def test_each_family_is_drawn_under_its_best_alignment():
  metrics = {"by_family": {
      "top_k:1": {"factoid": {"ndcg@10": 0.8}, "broad": {"ndcg@10": 0.3}},
      "top_k:4": {"factoid": {"ndcg@10": 0.5}, "broad": {"ndcg@10": 0.7}},
      "top_p:0.02": {"factoid": {"ndcg@10": 0.8}, "broad": {"ndcg@10": 0.6}}}}
  best = best_alignment_per_family(metrics, ["top_k:1", "top_k:4", "top_p:0.02"])
  assert best == {"factoid": "top_k:1", "broad": "top_k:4"}  # the earlier one wins a tie
  assert best_alignment_per_family({}, ["top_k:1"]) == {}
  # The broad query's relevant document is ranked by top-4's run, where it comes first.
  top1 = {"q1": {"a": 3.0, "b": 2.0}, "q2": {"c": 5.0}}
  top4 = {"q1": {"b": 3.0, "a": 2.0}, "q2": {"c": 1.0, "x": 2.0}}
  qrels = {"q1": {"b": 1}, "q2": {"c": 1}}
  family = {"q1": "broad", "q2": "factoid"}
  assert picture_pairs(top1, qrels, ["q1", "q2"], family, 2,
                       family_runs={"broad": top4}) == [("q1", "b", 1), ("q2", "c", 1)]
