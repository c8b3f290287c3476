"""The validate command: counts and exit 0 on good data, `file:line: problem` and exit 1 on bad."""

import os
import pathlib
import subprocess
import sys

import pytest

from aligner_jax.data import validate

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(capsys, *args):
  code = validate.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


def test_scifact_counts(capsys, scifact_dir):
  code, out, err = _run(capsys, "--format", "beir", str(scifact_dir))
  assert code == 0 and not err
  assert out.splitlines() == [
      f"{scifact_dir}: beir data OK",
      "  documents: 5183",
      "  queries: 1109",
      "  qrels/test: 300 queries, 339 judged pairs (339 relevant)",
      "  qrels/train: 809 queries, 919 judged pairs (919 relevant)",
  ]
  code, out, _ = _run(capsys, "--format", "beir", str(scifact_dir), "--split", "test")
  assert code == 0 and "qrels/train" not in out


def test_cisi_counts(capsys, cisi_dir):
  code, out, _ = _run(capsys, "--format", "beir", str(cisi_dir))
  assert code == 0
  assert "  documents: 1460" in out and "  queries: 76" in out
  assert "  qrels/test: 76 queries, 3114 judged pairs (3114 relevant)" in out


def test_msmarco_and_nq_counts(capsys):
  code, out, _ = _run(capsys, "--format", "msmarco", str(FIXTURES / "msmarco" / "good"))
  assert code == 0
  assert "  training/triples: 3 training groups, 5 negatives" in out
  assert "  training/teacher_triples: 3 training groups, 4 negatives, with teacher scores" in out
  code, out, _ = _run(capsys, "--format", "msmarco", str(FIXTURES / "msmarco" / "good"),
                      "--training", "hard_negatives_scored=" + str(
                          FIXTURES / "msmarco" / "good" / "hard_negatives.train.jsonl"))
  assert code == 0 and "hard_negatives_scored: 3 training groups, 8 negatives, with teacher" in out
  assert "training/triples" not in out  # explicit files replace the usual names
  code, out, _ = _run(capsys, "--format", "nq", str(FIXTURES / "nq" / "good"))
  assert code == 0 and "  nq/train: without positive 1" in out


@pytest.mark.parametrize("fmt,root,first,total", [
    ("beir", "beir/bad", "corpus.jsonl:2: broken JSON: Expecting ',' delimiter (column 31)", 18),
    ("msmarco", "msmarco/bad", "collection.tsv:2: wrong column count: expected 2 "
     "tab-separated columns, got 3", None),
    ("nq", "nq/bad_json", "biencoder-nq-train.json:3: invalid UTF-8 (byte 20 of the line)", 2),
])
def test_bad_data_exits_1_with_file_and_line(capsys, fmt, root, first, total):
  path = FIXTURES / root
  code, out, err = _run(capsys, "--format", fmt, str(path), "--max_problems", "4")
  assert code == 1 and not out
  lines = err.splitlines()
  assert lines[0] == f"{path}: {fmt} data has problems"
  assert lines[2] == f"{path}/{first}"
  listed = [x for x in lines if x.startswith(str(path))][1:]
  assert len(listed) == min(4, total or 4)
  if total and total > 4:
    assert lines[-1] == f"... and {total - 4} more problem(s) not listed"


def test_missing_path_and_bad_arguments(capsys, tmp_path):
  code, _, err = _run(capsys, "--format", "nq", str(tmp_path / "none"))
  assert code == 1 and f"{tmp_path / 'none'}: NQ directory not found" in err
  with pytest.raises(SystemExit) as info:
    validate.main(["--format", "csv", str(tmp_path)])
  assert info.value.code == 2
  with pytest.raises(SystemExit):
    validate.main(["--format", "beir", str(tmp_path), "--training", "triples=x"])
  with pytest.raises(SystemExit):
    validate.main(["--format", "msmarco", str(tmp_path), "--training", "pairs=x"])
  capsys.readouterr()


def test_demo_directory_validates_with_its_training_file(capsys, tmp_path):
  from aligner_jax.data import demo_collection  # pylint: disable=g-import-not-at-top
  demo_collection.main(["--out", str(tmp_path / "demo")])
  capsys.readouterr()
  code, out, _ = _run(capsys, "--format", "beir", str(tmp_path / "demo"))
  assert code == 0
  assert "  training/hard_negatives: 900 training groups, 9000 negatives" in out


def test_module_entry_point(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  good = subprocess.run([sys.executable, "-m", "aligner_jax.data.validate", "--format", "beir",
                         str(FIXTURES / "beir" / "good")], capture_output=True, text=True,
                        env=env, cwd=tmp_path, timeout=300)
  assert good.returncode == 0 and "documents: 8" in good.stdout
  bad = subprocess.run([sys.executable, "-m", "aligner_jax.data.validate", "--format", "beir",
                        str(FIXTURES / "beir" / "bad")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
  assert bad.returncode == 1 and "corpus.jsonl:3: missing `_id`" in bad.stderr
