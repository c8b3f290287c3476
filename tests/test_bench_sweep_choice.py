"""The first-stage sweep's choice by a recall target (bench/sweep_first_stage.py)."""

import json

from bench import sweep_first_stage


def _row(neighbors, leaves, refine, recall):
  return {"neighbors": neighbors, "leaves": leaves, "refine": refine, "top10_recall": recall,
          "delta_ndcg": -0.001}


ROWS = [_row(64, 20, 64, 0.86), _row(128, 20, 128, 0.957), _row(128, 40, 64, 0.951),
        _row(256, 20, 64, 0.97), _row(64, 20, 0, 0.99)]


def test_the_fewest_refined_documents_win_then_the_fewest_neighbours():
  assert sweep_first_stage.choose(ROWS, 0.95) == ROWS[2]
  assert sweep_first_stage.choose(ROWS, 0.96) == ROWS[3]
  # R = 0 refines every candidate: chosen only when nothing else reaches the target.
  assert sweep_first_stage.choose(ROWS, 0.98) == ROWS[4]
  assert sweep_first_stage.choose(ROWS, 0.999) is None


def test_the_choice_is_recorded_and_printed(tmp_path, capsys):
  out = tmp_path / "sweep.json"
  out.write_text(json.dumps({"rows": ROWS}))
  sweep_first_stage.report_choice(str(out), ROWS, 0.95)
  assert "--gin.NUM_NEIGHBORS=128 --gin.LEAVES_TO_SEARCH=40 --gin.NUM_REFINE=64" in (
      capsys.readouterr().out)
  record = json.loads(out.read_text())
  assert record["chosen"] == ROWS[2] and record["recall_target"] == 0.95
  sweep_first_stage.report_choice(str(out), ROWS, 0.999)
  assert "no setting reaches recall 0.999" in capsys.readouterr().out
  assert json.loads(out.read_text())["chosen"] is None
