"""NQ in DPR's formats: JSON questions, qa csv, psgs_w100.tsv; malformed cases; the
incremental JSON array parser."""

import json
import pathlib
import shutil

import hypothesis
from hypothesis import strategies as st
import pytest

from aligner_jax.data import nq
from aligner_jax.data.errors import DataError
from aligner_jax.data.errors import ProblemLog

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "nq"


def test_good_fixture_with_passages():
  c = nq.read_nq(FIXTURES / "good")
  assert c.corpus.ids == ["1", "2", "3", "4", "5", "6", "7"]
  # csv quoting in psgs_w100.tsv is undone; title goes first.
  assert c.corpus.text(2) == ('Charles Dickens Charles Dickens was an English writer and '
                              '"social critic".')
  assert c.queries.ids == ["dev-0", "test-0", "test-1", "train-0", "train-1", "train-2"]
  assert c.queries.metadata[c.queries.index["test-1"]] == {"answers": ["Paris", "City of Paris"]}
  assert c.queries.texts[c.queries.index["train-1"]] == "what river flows through london"
  assert c.qrels["train"] == {"train-0": {"1": 1}, "train-1": {"4": 1, "5": 1}}
  assert c.qrels["dev"] == {"dev-0": {"6": 1}}
  assert "test" not in c.qrels  # answers only
  train = c.training["train"]
  # DPR: the first positive; hard negatives when there are any, else the other negatives.
  pools = [(c.queries.ids[train.query[g]], c.corpus.ids[train.positive[g]],
            [c.corpus.ids[r] for r in train.pool(g)]) for g in range(len(train))]
  assert pools == [("train-0", "1", ["2", "3"]), ("train-1", "4", ["1"])]
  assert c.counts()["nq/train"] == {"without_positive": 1}


def test_contexts_form_the_corpus_without_passages_file(tmp_path):
  root = tmp_path / "nq"
  root.mkdir()
  shutil.copy(FIXTURES / "good" / "biencoder-nq-train.json", root)
  c = nq.read_nq(root)
  assert sorted(c.corpus.ids) == ["1", "2", "3", "4", "5", "6"]
  assert c.corpus.text(c.corpus.index["3"]).endswith('"social critic".')


def _problems(error, root):
  return [str(p).replace(str(root) + "/", "") for p in error.problems]


def test_malformed_questions_and_answers():
  with pytest.raises(DataError) as info:
    nq.read_nq(FIXTURES / "bad_fields", max_problems=100)
  assert _problems(info.value, FIXTURES / "bad_fields") == [
      "nq-test.qa.csv:2: empty question",
      "nq-test.qa.csv:3: wrong column count: expected 2 tab-separated columns (question, "
      "answers), got 1",
      "nq-test.qa.csv:4: answers must be a list literal like ['a', 'b'], got 'not a list'",
      "biencoder-nq-train.json:19: missing `question`",
      "biencoder-nq-train.json:35: missing `positive_ctxs[0].passage_id`",
      "biencoder-nq-train.json:47: passage '1' has a different title or text than at line 2",
      "biencoder-nq-train.json:62: `positive_ctxs` must be a list of contexts",
      "biencoder-nq-train.json:71: empty `positive_ctxs[0].text`",
  ]


def test_broken_json_and_invalid_utf8_name_their_lines():
  with pytest.raises(DataError) as info:
    nq.read_nq(FIXTURES / "bad_json")
  assert _problems(info.value, FIXTURES / "bad_json") == [
      "biencoder-nq-train.json:3: invalid UTF-8 (byte 20 of the line)",
      "biencoder-nq-train.json:12: broken JSON: Expecting ',' delimiter",
  ]


def test_unknown_passage_when_passages_file_is_present(tmp_path):
  root = tmp_path / "nq"
  shutil.copytree(FIXTURES / "good", root)
  lines = (root / "psgs_w100.tsv").read_text().splitlines()
  (root / "psgs_w100.tsv").write_text("\n".join(x for x in lines if not x.startswith("5\t")) + "\n")
  with pytest.raises(DataError, match=r"biencoder-nq-train.json:\d+: unknown passage id '5' "
                     r"\(not in psgs_w100.tsv\)"):
    nq.read_nq(root)


def test_passages_file_checks(tmp_path):
  root = tmp_path / "nq"
  root.mkdir()
  shutil.copy(FIXTURES / "good" / "nq-test.qa.csv", root)
  (root / "psgs_w100.tsv").write_text("pid\ttext\ttitle\n1\tone\n1\tx\tT\n1\ty\tT\n2\t \tT\n"
                                      "3\t \t \n")
  with pytest.raises(DataError) as info:
    nq.read_nq(root)
  assert _problems(info.value, root) == [
      "psgs_w100.tsv:1: expected the header 'id<TAB>text<TAB>title', got 'pid\\ttext\\ttitle'",
      "psgs_w100.tsv:2: wrong column count: expected 3 tab-separated columns, got 2",
      "psgs_w100.tsv:4: duplicate passage id '1' (first at line 3)",
  ]
  with pytest.raises(DataError) as info:
    nq.read_nq(root, strict=True)
  assert _problems(info.value, root)[-1] == (
      "psgs_w100.tsv:6: empty text (document '3' has neither title nor text; refused in strict "
      "mode)")


def test_empty_passages_are_kept_with_a_warning(tmp_path):
  root = tmp_path / "nq"
  root.mkdir()
  shutil.copy(FIXTURES / "good" / "nq-test.qa.csv", root)
  (root / "psgs_w100.tsv").write_text("id\ttext\ttitle\n1\tone\tT\n2\t \tT\n3\t \t \n")
  c = nq.read_nq(root)
  assert [c.corpus.text(r) for r in range(3)] == ["T one", "T", ""]
  assert c.counts()["empty_documents"] == 1
  assert _problems(c.warnings, root) == [
      ("psgs_w100.tsv:4: empty document '3' (neither title nor text): kept, encoded as its "
       "framing tokens only")]


def test_missing_directory_and_split(tmp_path):
  with pytest.raises(DataError, match="NQ directory not found"):
    nq.read_nq(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"file not found \(splits here: dev, test, train\)"):
    nq.read_nq(FIXTURES / "good", splits=["validation"])


def test_not_an_array(tmp_path):
  path = tmp_path / "biencoder-nq-train.json"
  path.write_text('{"question": "x"}')
  log = ProblemLog()
  assert list(nq.iter_json_array(path, log)) == []
  assert str(log.problems[0]).endswith(":1: broken JSON: expected a JSON array of questions "
                                       "('[' first)")
  path.write_text('[{"a": 1},\n{"a": 2}')
  log = ProblemLog()
  assert [v for _, v in nq.iter_json_array(path, log)] == [{"a": 1}, {"a": 2}]
  assert "the array is not closed" in str(log.problems[0])


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(elements=st.lists(values, max_size=8), indent=st.sampled_from([None, 0, 2]),
                  chunk=st.sampled_from([1, 7, 64]))
def test_incremental_parser_matches_json_load(tmp_path_factory, elements, indent, chunk):
  path = tmp_path_factory.mktemp("json") / "x.json"
  text = json.dumps(elements, indent=indent, ensure_ascii=False)
  path.write_text(text, encoding="utf-8")
  old = nq._CHUNK
  nq._CHUNK = chunk  # tiny chunks: every element straddles chunk boundaries
  try:
    log = ProblemLog()
    parsed = list(nq.iter_json_array(path, log))
  finally:
    nq._CHUNK = old
  assert not log
  assert [v for _, v in parsed] == elements
  # Each reported line is where the element's text starts.
  lines = text.split("\n")
  for (line, _), expected in zip(parsed, elements):
    first = json.dumps(expected, indent=indent, ensure_ascii=False).split("\n")[0]
    assert first in lines[line - 1]
