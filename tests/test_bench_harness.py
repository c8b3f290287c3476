"""The benchmark harness: agreement is checked before timing, and results follow the schema.

Runs real subprocesses (`python -m bench.worker`) on the NumPy-only tasks of
`bench/impls/selfcheck.py`; nothing here is timed against a threshold.
"""

import copy
import json

import numpy as np
import pytest

from bench import harness
from bench import report

INPUTS = "bench.impls.selfcheck:make_inputs"


def _impl(name, fn=None):
  return harness.Impl(name, f"bench.impls.selfcheck:{fn or name}", "numpy")


REFERENCE = _impl("reference")
SETTINGS = harness.Settings(mode="quick", runs=5, warmup=1, timeout_s=120)


def _bench(cells, name="selfcheck"):
  return harness.Benchmark(name=name, description="harness self-check", inputs=INPUTS,
                           cells=tuple(cells), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("results")
  cells = [
      harness.Cell("peak", {"size": 1000, "seed": 1}, (_impl("right"),), REFERENCE,
                   flops=2000.0, role="peak"),
      harness.Cell("square", {"size": 1000, "seed": 0, "eps": 1e-3},
                   (_impl("right"), _impl("off_by_eps"), _impl("wrong_shape"), _impl("crashes"),
                    _impl("prints"), harness.Impl("mine", "bench.impls.selfcheck:right", "numpy",
                                                  project=True)),
                   REFERENCE, flops=2000.0, group="g"),
  ]
  res = harness.run_benchmark(_bench(cells), SETTINGS, results_dir=out_dir)
  return res, out_dir


def _by_impl(cell):
  return {r["impl"]: r for r in cell["results"]}


def test_a_wrong_implementation_is_caught_and_never_timed(result):
  res, _ = result
  by = _by_impl(res["cells"][1])
  assert by["right"]["status"] == "ok"
  assert by["right"]["agreement"]["agrees"]
  wrong = by["off_by_eps"]
  assert wrong["status"] == "disagrees"
  assert wrong["times_s"] == [] and wrong["stats"] is None
  assert "1 of 1000 values differ" in wrong["error"] and "[500]" in wrong["error"]
  assert wrong["agreement"]["max_abs_err"] == pytest.approx(1e-3, rel=1e-3)
  assert by["wrong_shape"]["status"] == "disagrees"
  assert "shape [999]" in by["wrong_shape"]["error"]


def test_failures_are_reported_with_their_cause(result):
  res, _ = result
  by = _by_impl(res["cells"][1])
  assert by["crashes"]["status"] == "error"
  assert "RuntimeError: set-up failed on purpose" in by["crashes"]["error"]
  # Printing to stdout does not corrupt the worker protocol.
  assert by["prints"]["status"] == "ok"


def test_timings_and_derived_numbers(result):
  res, _ = result
  by = _by_impl(res["cells"][1])
  ok = by["right"]
  assert len(ok["times_s"]) == SETTINGS.runs
  s = ok["stats"]
  assert s["min_s"] <= s["q1_s"] <= s["median_s"] <= s["q3_s"] <= s["max_s"]
  assert s["iqr_s"] == pytest.approx(s["q3_s"] - s["q1_s"])
  assert s["median_s"] == pytest.approx(float(np.median(ok["times_s"])))
  assert ok["gflops"] == pytest.approx(2000.0 / s["median_s"] / 1e9)
  peak = res["gemm_peak"]
  assert peak["cell"] == "peak" and peak["impl"] == "right"
  assert ok["pct_gemm_peak"] == pytest.approx(100.0 * ok["gflops"] / peak["gflops"])
  cell = res["cells"][1]
  assert cell["fastest_peer"]["impl"] in ("right", "prints")
  assert cell["project_speedup"]["mine"] == pytest.approx(
      cell["fastest_peer"]["median_s"] / by["mine"]["stats"]["median_s"])
  assert ok["runtime"]["numpy"] == np.__version__


def test_results_file_follows_the_schema(result):
  res, out_dir = result
  path = out_dir / "selfcheck.json"
  on_disk = harness.load_result(path)
  assert on_disk["schema"] == harness.SCHEMA
  assert on_disk["cells"][1]["label"] == "square"
  m = on_disk["machine"]
  assert m["nproc"] >= 1 and m["cpu_model"]
  assert m["versions"]["numpy"] == np.__version__
  assert len(on_disk["loadavg_before"]) == 3 and len(on_disk["loadavg_after"]) == 3
  assert on_disk["settings"]["runs"] == SETTINGS.runs
  assert not list(out_dir.glob(".*.tmp*"))  # written through a rename
  assert next(iter(json.loads(path.read_text()))) == "schema"  # in schema order, not sorted


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("machine"), "missing key 'machine'"),
    (lambda r: r.update(schema="other/0"), "schema 'other/0'"),
    (lambda r: r["cells"][1]["results"][0].update(status="fast"), "status 'fast'"),
    (lambda r: r["cells"][1]["results"][0].update(times_s=[0.1]), ">= 5 timings"),
    (lambda r: r["cells"][1]["results"][1].update(error=None), "needs an error message"),
])
def test_schema_violations_name_the_entry(result, tmp_path, mutate, message):
  res, _ = result
  bad = json.loads(json.dumps(res))
  mutate(bad)
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(bad))
  with pytest.raises(harness.ResultSchemaError, match=message) as info:
    harness.load_result(path)
  assert str(path) in str(info.value)


def test_compare_tolerances_and_nans():
  ref = np.array([1.0, 2.0, np.nan])
  assert harness.compare(ref + 1e-7, ref, rtol=1e-6, atol=0)["agrees"]
  bad = harness.compare(ref + 1e-5, ref, rtol=1e-6, atol=0)
  assert not bad["agrees"] and "2 of 2 values" in bad["problem"]
  assert not harness.compare(np.array([1.0, np.nan, np.nan]), ref, rtol=1, atol=1)["agrees"]


def test_recall_check_for_approximate_search():
  ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  got = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
  rec = harness.compare_recall(got, ref, min_recall=0.7)
  assert rec["recall"] == pytest.approx((2 / 4 + 1.0) / 2) and rec["agrees"]
  low = harness.compare_recall(got, ref, min_recall=0.9)
  assert not low["agrees"] and "recall 0.750" in low["problem"]
  assert not harness.compare_recall(got[:1], ref, min_recall=0.0)["agrees"]


def test_too_few_runs_are_refused():
  with pytest.raises(ValueError, match="runs must be at least 5"):
    harness.run_benchmark(_bench([]), harness.Settings(runs=3))


def test_report_plot_and_readme_block(result, tmp_path):
  res, out_dir = result
  png = tmp_path / "selfcheck.png"
  report.write_plot(res, png)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  readme = tmp_path / "README.md"
  readme.write_text("# Benchmarks\n\nprose stays\n")
  report.update_readme(readme, out_dir)
  report.update_readme(readme, out_dir)  # idempotent: one block, prose kept
  text = readme.read_text()
  assert text.count(report.GENERATED_BEGIN) == 1 and "prose stays" in text
  assert "| square |" in text and "*disagrees*" in text and "*error*" in text
  broken = copy.deepcopy(text).replace(report.GENERATED_END, "")
  readme.write_text(broken)
  with pytest.raises(ValueError, match="only one of the generated-results markers"):
    report.update_readme(readme, out_dir)


def test_quick_results_are_kept_apart_from_full_ones(result, tmp_path):
  res, out_dir = result
  assert harness.parse_args(["--quick"], "").results_dir == str(harness.QUICK_RESULTS_DIR)
  assert harness.parse_args([], "").results_dir == str(harness.RESULTS_DIR)
  assert harness.parse_args(["--quick", "--results-dir", "x"], "").results_dir == "x"
  root = tmp_path / "results"
  full = copy.deepcopy(res)
  full["mode"] = "full"
  harness.write_result(root / "selfcheck.json", full)
  harness.write_result(root / "quick" / "selfcheck.json", res)
  (root / "quick" / "selfcheck.png").write_bytes(b"png")
  readme = tmp_path / "README.md"
  report.update_readme(readme, root / "quick")  # the quick dir names the same root
  text = readme.read_text()
  full_at, quick_at = text.index("`selfcheck` (full)"), text.index("`selfcheck` (quick)")
  assert full_at < text.index("## Quick runs") < quick_at
  assert "](results/quick/selfcheck.png)" in text


def test_readme_block_leaves_out_records_without_a_schema(result):
  _, out_dir = result
  sweep, bad = out_dir / "a_sweep.json", out_dir / "b_bad.json"
  try:
    sweep.write_text(json.dumps({"rows": [{"x": 1}]}))
    block = report.generated_section(out_dir)
    assert "| square |" in block and "a_sweep" not in block
    # A file that claims a schema is still checked whole.
    bad.write_text(json.dumps({"schema": "aligner_jax.bench/1"}))
    with pytest.raises(harness.ResultSchemaError, match="b_bad.json"):
      report.generated_section(out_dir)
  finally:
    sweep.unlink(missing_ok=True)
    bad.unlink(missing_ok=True)


def test_results_written_elsewhere_leave_the_bench_readme_alone(result, tmp_path):
  _, out_dir = result
  readme = harness.BENCH_DIR / "README.md"
  before = readme.read_bytes()
  assert report.update_bench_readme(out_dir) is False
  assert report.update_bench_readme(tmp_path / "quick") is False
  assert readme.read_bytes() == before
  assert report.results_root(tmp_path / "quick") == tmp_path
