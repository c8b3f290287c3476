"""The papers' numbers as data (docs/results/papers.json): they hold every number the committed
result files compared against, the report code turns the committed result files into exactly
the committed tables with them, and a broken file is reported with its name and line."""

import json
import pathlib

import pytest

from repro import papers
from repro import r1
from repro.frozen import r2_r5_tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
FROZEN_RESULTS = ("r2", "r2_index", "r3", "r4", "r4_cisi", "r4_layer1", "r5", "r5_paper")
R1_RESULTS = ("r1", "r1_head", "r1_head_seed1")

# The result files keep their keys sorted, the tables were written from the jobs' dicts, whose
# order is the gin files' (heads, losses, gates, sweep fields, transfer datasets): restored here.
JOB_ORDER = ("maxsim", "colbert", "de", "knrm", "lite_raw", "lite", "lite50",
             "one_hot_ce", "mse", "margin_mse", "m3se", "softmax_ce", "rankdistil_b",
             "learning_rate", "doc_token_dropout", "scifact", "cisi", "lp", "lp_iters3",
             "lp_iters5", "lp_iters10", "relu", "hard_topk")


def in_job_order(value):
  if isinstance(value, dict):
    keys = [k for k in JOB_ORDER if k in value] + [k for k in value if k not in JOB_ORDER]
    return {k: in_job_order(value[k]) for k in keys}
  if isinstance(value, list):
    return [in_job_order(v) for v in value]
  return value


def assert_contained(recorded, current, where):
  """Every value of `recorded` is in `current` at the same place (`current` may add more)."""
  if isinstance(recorded, dict):
    assert isinstance(current, dict), where
    for key, value in recorded.items():
      assert key in current, f"{where}/{key} missing"
      assert_contained(value, current[key], f"{where}/{key}")
  elif isinstance(recorded, list):
    assert isinstance(current, list) and len(current) == len(recorded), where
    for i, (a, b) in enumerate(zip(recorded, current, strict=True)):
      assert_contained(a, b, f"{where}[{i}]")
  else:
    assert current == recorded and type(current) is type(recorded), where


@pytest.mark.parametrize("name", R1_RESULTS + FROZEN_RESULTS)
def test_papers_json_holds_what_each_result_file_compared_against(name):
  content = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
  claim = "r1" if name in R1_RESULTS else content["claim"]
  assert_contained(content["paper"], papers.paper_numbers(claim), name)


@pytest.mark.parametrize("name", FROZEN_RESULTS)
def test_frozen_tables_regenerate_the_committed_markdown(name):
  content = in_job_order(json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8")))
  assert r2_r5_tables.table(content) == (RESULTS / f"{name}.md").read_text(encoding="utf-8")


def test_r5_table_takes_the_paper_column_from_papers_json():
  content = in_job_order(json.loads((RESULTS / "r5.json").read_text(encoding="utf-8")))
  lines = r2_r5_tables.table(content).splitlines()
  assert lines[2].endswith("| 37.0 / 43.0 (cross-attention) |")  # teacher
  assert lines[3].startswith("| BM25 |") and lines[3].endswith("| 19.4 / 24.1 |")
  assert next(x for x in lines if x.startswith("| M3SE |")).endswith("| 34.9 / 40.6 |")


@pytest.mark.parametrize("name", R1_RESULTS)
def test_r1_table_regenerates_the_committed_markdown(name):
  content = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
  table = r1.MD_HEADER + r1.r1_table(content["reports"])
  assert table == (RESULTS / f"{name}.md").read_text(encoding="utf-8")
  assert "| ArguAna (paper, ALIGNER-xxl) |" in table


def test_r1_paper_rows_match_the_strategies():
  paper = r1.paper_numbers()
  assert paper["strategies"] == list(r1.STRATEGIES)
  assert all(len(row["ndcg@10"]) == len(r1.STRATEGIES) for row in paper["rows"])


def test_broken_papers_file_names_file_line_and_problem(tmp_path):
  bad = tmp_path / "papers.json"
  bad.write_text('{\n  "r1": {"source": "x",\n  "rows": [1, 2,]}\n}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"papers\.json:3: not valid JSON"):
    papers.paper_numbers("r1", bad)
  bad.write_text('{"r1": {"source": "ALIGNER"}, "about": "text"}', encoding="utf-8")
  assert papers.paper_numbers("r1", bad) == {"source": "ALIGNER"}
  with pytest.raises(ValueError, match=r"no entry with a 'source' for claim 'r9'.*\['r1'\]"):
    papers.paper_numbers("r9", bad)
  with pytest.raises(FileNotFoundError, match="missing"):
    papers.paper_numbers("r1", tmp_path / "none.json")
