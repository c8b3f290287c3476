"""BEIR reader: real SciFact and CISI counts, the hand-written fixtures, every malformed case."""

import pathlib
import shutil

import pytest

from aligner_jax.data import beir
from aligner_jax.data.collection import document_text
from aligner_jax.data.errors import DataError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "beir"


def test_scifact_counts(scifact_dir):
  c = beir.read_beir(scifact_dir)
  assert len(c.corpus) == 5183
  assert len(c.queries) == 1109
  counts = c.counts()
  assert counts["qrels/test"] == {"queries": 300, "pairs": 339, "relevant_pairs": 339}
  assert counts["qrels/train"] == {"queries": 809, "pairs": 919, "relevant_pairs": 919}
  assert len(c.split_queries("test")) == 300
  # A document is read as "title text".
  row = c.corpus.index["4983"]
  assert c.corpus.text(row).startswith("Microstructural development of human newborn cerebral "
                                       "white matter assessed in vivo by diffusion tensor "
                                       "magnetic resonance imaging. Alterations of")


def test_cisi_counts(cisi_dir):
  c = beir.read_beir(cisi_dir)
  assert (len(c.corpus), len(c.queries)) == (1460, 76)
  assert c.counts()["qrels/test"]["queries"] == 76
  assert c.counts()["qrels/test"]["pairs"] == 3114


def test_good_fixture():
  c = beir.read_beir(FIXTURES / "good")
  assert c.name == "good"
  assert c.corpus.ids == [f"d{i}" for i in range(1, 9)]
  assert c.corpus.text(0) == "Alpha The alpha document is about cats."
  assert c.corpus.text(1) == "Beta document about dogs."  # empty title
  assert c.corpus.text(2) == "Gamma document about birds, without a title."  # no title key
  assert "crème brûlée" in c.corpus.text(7)
  assert c.queries.metadata[0] == {"family": "factoid"}
  assert c.queries.metadata[1] == {}
  assert c.qrels["train"] == {"q1": {"d1": 1, "d4": 1}, "q2": {"d2": 1}, "q3": {"d3": 1},
                              "q5": {"d8": 1}}
  assert c.qrels["test"] == {"q4": {"d4": 1, "d6": 2, "d1": 0}}
  assert c.counts()["qrels/test"] == {"queries": 1, "pairs": 3, "relevant_pairs": 2}
  only_test = beir.read_beir(FIXTURES / "good", splits=["test"])
  assert list(only_test.qrels) == ["test"]


EXPECTED_BAD = [
    "corpus.jsonl:2: broken JSON: Expecting ',' delimiter (column 31)",
    "corpus.jsonl:3: missing `_id`",
    "corpus.jsonl:4: missing `text`",
    "corpus.jsonl:5: duplicate document id 'd1' (first at line 1)",
    "corpus.jsonl:7: invalid UTF-8 (byte 26 of the line: b'\\xe9')",
    "corpus.jsonl:8: expected a JSON object, got list",
    "corpus.jsonl:10: `text` must be a string, got int",
    "queries.jsonl:2: empty `text` (query)",
    "queries.jsonl:3: duplicate query id 'q1' (first at line 1)",
    "queries.jsonl:4: `metadata` must be a JSON object, got list",
    "qrels/dev.tsv:1: expected the header 'query-id\\tcorpus-id\\tscore', "
    "got 'qid\\tdocid\\tscore'",
    "qrels/dev.tsv:3: blank line",
    "qrels/test.tsv:3: unknown query id 'q9' (not in the queries file)",
    "qrels/test.tsv:4: unknown document id 'd9' (not in the corpus)",
    "qrels/test.tsv:5: wrong column count: expected 3 tab-separated columns, got 2",
    "qrels/test.tsv:6: relevance score must be an integer, got 'high'",
    "qrels/test.tsv:7: duplicate judgement for query 'q1' and document 'd1'",
    ("qrels/test.tsv:8: query id 'q2' names a query refused at queries.jsonl:2 (see the "
     "problem reported there)"),
]
# Strict mode refuses the empty document d4 too, and the judgement naming it says so.
EXPECTED_BAD_STRICT = (
    EXPECTED_BAD[:4]
    + [("corpus.jsonl:6: empty text (document 'd4' has neither title nor text; refused in "
        "strict mode)")]
    + EXPECTED_BAD[4:]
    + [("qrels/test.tsv:8: document id 'd4' names a document refused at corpus.jsonl:6 (see "
        "the problem reported there)")])


def test_every_malformed_case_is_reported_with_file_and_line():
  with pytest.raises(DataError) as info:
    beir.read_beir(FIXTURES / "bad", max_problems=100)
  root = str(FIXTURES / "bad") + "/"
  assert [str(p).replace(root, "") for p in info.value.problems] == EXPECTED_BAD
  assert info.value.total == len(EXPECTED_BAD)
  message = str(info.value)
  assert message.startswith(f"{len(EXPECTED_BAD)} problems in the data:\n")
  assert f"{root}corpus.jsonl:2: broken JSON" in message


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_strict_mode_refuses_empty_documents(monkeypatch, how):
  if how == "environment":
    monkeypatch.setenv("ALIGNER_STRICT_DATA", "1")
  with pytest.raises(DataError) as info:
    beir.read_beir(FIXTURES / "bad", max_problems=100,
                   strict=True if how == "argument" else None)
  root = str(FIXTURES / "bad") + "/"
  assert [str(p).replace(root, "") for p in info.value.problems] == EXPECTED_BAD_STRICT
  monkeypatch.setenv("ALIGNER_STRICT_DATA", "maybe")
  with pytest.raises(ValueError, match="ALIGNER_STRICT_DATA='maybe'"):
    beir.read_beir(FIXTURES / "good")


def test_problem_list_is_limited_but_all_are_counted():
  with pytest.raises(DataError) as info:
    beir.read_beir(FIXTURES / "bad", max_problems=3)
  assert len(info.value.problems) == 3 and info.value.total == len(EXPECTED_BAD)
  assert str(info.value).endswith(f"... and {len(EXPECTED_BAD) - 3} more problem(s) not listed")


def test_each_malformed_file_alone(tmp_path):
  # One bad file at a time beside good ones: the problems are exactly that file's.
  for bad_file in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
    root = tmp_path / bad_file.replace("/", "_")
    shutil.copytree(FIXTURES / "good", root)
    shutil.copy(FIXTURES / "bad" / bad_file, root / bad_file)
    with pytest.raises(DataError) as info:
      beir.read_beir(root, max_problems=100)
    files = {p.path for p in info.value.problems}
    assert str(root / bad_file) in files


def test_missing_directory_file_and_split(tmp_path):
  with pytest.raises(DataError, match="BEIR directory not found"):
    beir.read_beir(tmp_path / "nowhere")
  with pytest.raises(DataError, match=r"qrels/dev.tsv: file not found \(splits with qrels here: "
                     r"test, train\)"):
    beir.read_beir(FIXTURES / "good", splits=["dev"])
  root = tmp_path / "no_corpus"
  shutil.copytree(FIXTURES / "good", root)
  (root / "corpus.jsonl").unlink()
  with pytest.raises(DataError, match="corpus.jsonl: file not found"):
    beir.read_beir(root)


def test_document_text():
  assert document_text("T", "body") == "T body"
  assert document_text("", "body") == "body"
  assert document_text(" T ", "  ") == "T"


def test_document_metadata_is_kept_and_checked(tmp_path):
  """A corpus row's `metadata` object is kept per document (in memory and read a range at a
  time); one that is not an object is a problem at its line."""
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text('{"_id": "a", "text": "x", "metadata": {"year": 2020}}\n'
                    '{"_id": "b", "text": "y"}\n', encoding="utf-8")
  log = beir.ProblemLog()
  table = beir.read_corpus_jsonl(corpus, log)
  assert not log.total
  assert [table.metadata_of(r) for r in range(2)] == [{"year": 2020}, {}]
  assert table.read_rows(range(2), with_metadata=True)[2] == [{"year": 2020}, {}]
  streamed = beir.CorpusFile(corpus)
  assert streamed.read_rows(range(2), with_metadata=True) == table.read_rows(
      range(2), with_metadata=True)
  assert streamed.read_rows(range(1, 2)) == (["b"], ["y"])
  corpus.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y", "metadata": [1]}\n',
                    encoding="utf-8")
  with pytest.raises(DataError, match=r"corpus.jsonl:2: `metadata` must be a JSON object"):
    beir.CorpusFile(corpus)
