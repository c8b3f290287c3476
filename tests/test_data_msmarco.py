"""MS MARCO reader and training files: fixtures in every format and every malformed case."""

import pathlib
import shutil

import numpy as np
import pytest

from aligner_jax.data import msmarco
from aligner_jax.data.errors import DataError

GOOD = pathlib.Path(__file__).parent / "fixtures" / "msmarco" / "good"
BAD = pathlib.Path(__file__).parent / "fixtures" / "msmarco" / "bad"


def _training(root, *names_and_formats):
  return [msmarco.TrainingFile(str(root / name), fmt) for name, fmt in names_and_formats]


def _pools(collection, groups):
  """{(qid, pid): [negative pids]} for readable assertions."""
  q, c = collection.queries, collection.corpus
  return {(q.ids[groups.query[g]], c.ids[groups.positive[g]]): [c.ids[r] for r in groups.pool(g)]
          for g in range(len(groups))}


def test_collection_queries_and_trec_qrels():
  c = msmarco.read_msmarco(GOOD)
  assert len(c.corpus) == 8 and c.corpus.ids[0] == "0"
  assert c.corpus.text(2).startswith("The Eiffel Tower")
  assert c.queries.ids == ["200", "201", "300", "100", "101", "102"]  # dev, eval, train files
  assert c.qrels["train"] == {"100": {"0": 1}, "101": {"2": 1}, "102": {"5": 1}}
  assert c.qrels["dev"] == {"200": {"3": 1}, "201": {"6": 1}}  # space-separated TREC qrels
  assert "eval" not in c.qrels  # queries without qrels
  assert msmarco.available_splits(GOOD) == ["dev", "eval", "train"]
  only = msmarco.read_msmarco(GOOD, splits=["train"])
  assert len(only.queries) == 3 and list(only.qrels) == ["train"]


def test_id_triples_group_by_query_and_positive():
  c = msmarco.read_msmarco(GOOD, training=_training(GOOD, ("triples.train.ids.tsv", "triples")))
  groups = c.training["triples"]
  # The repeated triple (100 0 1) appears once in the pool; order is file order.
  assert _pools(c, groups) == {("100", "0"): ["1", "2"], ("101", "2"): ["3"],
                               ("102", "5"): ["0", "4"]}
  assert not groups.has_teacher_scores


def test_teacher_triples_keep_scores_aligned():
  c = msmarco.read_msmarco(GOOD, training=_training(
      GOOD, ("teacher_triples.train.tsv", "teacher_triples")))
  g = c.training["teacher_triples"]
  assert g.has_teacher_scores
  assert _pools(c, g) == {("100", "0"): ["1", "2"], ("101", "2"): ["3"], ("102", "5"): ["0"]}
  np.testing.assert_allclose(g.teacher_positive, [9.5, 8.0, 7.0])
  np.testing.assert_allclose(g.pool_scores(0), [1.0, 2.0])
  np.testing.assert_allclose(g.pool_scores(2), [-1.5])


def test_hard_negative_jsonl_with_and_without_scores():
  c = msmarco.read_msmarco(GOOD, training=_training(
      GOOD, ("hard_negatives.train.jsonl", "hard_negatives"),
      ("hard_negatives.train.jsonl", "hard_negatives_scored")))
  plain, scored = c.training["hard_negatives"], c.training["hard_negatives_scored"]
  # Numeric ids are accepted; a positive listed among the negatives is dropped.
  expected = {("100", "0"): ["1", "2", "3"], ("101", "2"): ["3", "4"],
              ("102", "5"): ["0", "4", "7"]}
  assert _pools(c, plain) == expected and _pools(c, scored) == expected
  assert not plain.has_teacher_scores
  np.testing.assert_allclose(scored.teacher_positive, [9.5, 8.0, 7.0])
  np.testing.assert_allclose(scored.pool_scores(1), [0.5, -1.0])
  np.testing.assert_allclose(scored.pool_scores(2), [-1.5, 0.0, 0.25])


def test_usual_training_file_names_are_found():
  found = msmarco.find_training_files(GOOD)
  assert {(pathlib.Path(t.path).name, t.format) for t in found} == {
      ("triples.train.ids.tsv", "triples"), ("teacher_triples.train.tsv", "teacher_triples"),
      ("hard_negatives.train.jsonl", "hard_negatives")}
  with pytest.raises(DataError, match="no triples training file"):
    msmarco.default_training_file(BAD.parent / "nowhere", "triples")


def _problems(error, root):
  return [str(p).replace(str(root) + "/", "") for p in error.problems]


def test_malformed_collection_queries_and_qrels():
  with pytest.raises(DataError) as info:
    msmarco.read_msmarco(BAD, max_problems=100)
  assert _problems(info.value, BAD) == [
      "collection.tsv:2: wrong column count: expected 2 tab-separated columns, got 3",
      "collection.tsv:4: duplicate passage id '0' (first at line 1)",
      "collection.tsv:5: invalid UTF-8 (byte 5 of the line: b'\\xe9')",
      "collection.tsv:6: empty passage id",
      "queries.train.tsv:2: wrong column count: expected 2 tab-separated columns, got 1",
      "queries.train.tsv:3: duplicate query id '100' (first at line 1)",
      "qrels.train.tsv:2: wrong column count: expected 4 columns (qid 0 docid relevance), got 3",
      "qrels.train.tsv:3: unknown query id '999' (not in the queries file)",
      "qrels.train.tsv:4: unknown document id '99' (not in the corpus)",
      "qrels.train.tsv:5: relevance score must be an integer, got 'yes'",
  ]


def test_empty_passages_are_kept_with_a_warning_unless_strict(tmp_path):
  root = tmp_path / "msmarco"
  shutil.copytree(GOOD, root)
  with open(root / "collection.tsv", "a") as f:
    f.write("8\t \n")
  with open(root / "qrels.train.tsv", "a") as f:
    f.write("100 0 8 1\n")
  c = msmarco.read_msmarco(root)
  assert c.corpus.text(c.corpus.index["8"]) == "" and c.qrels["train"]["100"] == {"0": 1, "8": 1}
  assert c.counts()["empty_documents"] == 1
  assert [str(p).replace(str(root) + "/", "") for p in c.warnings.problems] == [
      ("collection.tsv:9: empty document '8' (neither title nor text): kept, encoded as its "
       "framing tokens only")]
  with pytest.raises(DataError) as info:
    msmarco.read_msmarco(root, strict=True)
  assert _problems(info.value, root) == [
      ("collection.tsv:9: empty text (document '8' has neither title nor text; refused in "
       "strict mode)"),
      ("qrels.train.tsv:4: document id '8' names a document refused at collection.tsv:9 (see "
       "the problem reported there)")]


def test_malformed_training_files(tmp_path):
  root = tmp_path / "msmarco"
  shutil.copytree(GOOD, root)
  for name in ("triples.train.ids.tsv", "teacher_triples.train.tsv",
               "hard_negatives.train.jsonl"):
    shutil.copy(BAD / name, root / name)
  training = _training(root, ("triples.train.ids.tsv", "triples"),
                       ("teacher_triples.train.tsv", "teacher_triples"),
                       ("hard_negatives.train.jsonl", "hard_negatives_scored"))
  with pytest.raises(DataError) as info:
    msmarco.read_msmarco(root, training=training, max_problems=100)
  assert _problems(info.value, root) == [
      "triples.train.ids.tsv:2: wrong column count: expected 3 tab-separated columns, got 2",
      "triples.train.ids.tsv:3: unknown query id '555' (not in the queries)",
      "triples.train.ids.tsv:4: unknown document id '77' (not in the corpus)",
      "teacher_triples.train.tsv:2: positive teacher score must be a number, got 'high'",
      "teacher_triples.train.tsv:3: negative teacher score must be finite, got 'nan'",
      "hard_negatives.train.jsonl:2: broken JSON: Expecting ',' delimiter (column 42)",
      "hard_negatives.train.jsonl:3: missing `pos`",
      "hard_negatives.train.jsonl:4: duplicate query id '100' (first at line 1)",
      "hard_negatives.train.jsonl:5: empty `pos`: a training query needs a positive document",
      "hard_negatives.train.jsonl:6: `neg` must be a list of ids",
      "hard_negatives.train.jsonl:7: `scores` has no score for document '4'",
      "hard_negatives.train.jsonl:8: duplicate query id '200' (first at line 7)",
  ]


def test_scores_required_only_when_asked(tmp_path):
  root = tmp_path / "msmarco"
  shutil.copytree(GOOD, root)
  (root / "hard_negatives.train.jsonl").write_text(
      '{"qid": "100", "pos": ["0"], "neg": ["1"]}\n')
  ok = msmarco.read_msmarco(root, training=_training(
      root, ("hard_negatives.train.jsonl", "hard_negatives")))
  assert len(ok.training["hard_negatives"]) == 1
  with pytest.raises(DataError, match=r"jsonl:1: missing `scores` \(teacher scores are required"):
    msmarco.read_msmarco(root, training=_training(
        root, ("hard_negatives.train.jsonl", "hard_negatives_scored")))


def test_empty_training_file_is_a_problem(tmp_path):
  root = tmp_path / "msmarco"
  shutil.copytree(GOOD, root)
  (root / "triples.train.ids.tsv").write_text("")
  with pytest.raises(DataError, match="triples.train.ids.tsv: no triples"):
    msmarco.read_msmarco(root, training=_training(root, ("triples.train.ids.tsv", "triples")))


def test_missing_directory_and_split(tmp_path):
  with pytest.raises(DataError, match="MS MARCO directory not found"):
    msmarco.read_msmarco(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"queries.test.tsv: file not found \(splits with queries "
                     r"here: dev, eval, train\)"):
    msmarco.read_msmarco(GOOD, splits=["test"])
