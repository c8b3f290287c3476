"""Plots and README tables from benchmark results (`bench/results/*.json`, see harness.SCHEMA).

`write_plot` draws one PNG per benchmark: a panel per cell group, one bar per implementation
(median time, log scale) with the interquartile range as error bars. `update_readme` rewrites
the part of `bench/README.md` between GENERATED_BEGIN and GENERATED_END from every results file;
the prose around it is left alone.
"""

import json
import pathlib
from typing import Any

from aligner_jax.io import atomic_output
from aligner_jax.io import atomic_write
from bench import harness

GENERATED_BEGIN = "<!-- BEGIN GENERATED RESULTS (bench/report.py; do not edit by hand) -->"
GENERATED_END = "<!-- END GENERATED RESULTS -->"


def _groups(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
  groups: dict[str, list[dict[str, Any]]] = {}
  for cell in result["cells"]:
    name = "GEMM peak" if cell["role"] == "peak" else (cell["group"] or result["benchmark"])
    groups.setdefault(name, []).append(cell)
  return groups


def _impl_order(cells: list[dict[str, Any]]) -> list[str]:
  names: list[str] = []
  for cell in cells:
    for res in cell["results"]:
      if res["impl"] not in names:
        names.append(res["impl"])
  return names


def _save(fig, path: pathlib.Path) -> None:
  import matplotlib.pyplot as plt
  try:
    with atomic_output(path) as tmp:
      fig.savefig(tmp, dpi=110)
  finally:
    plt.close(fig)


def _title(result: dict[str, Any]) -> str:
  load = result["loadavg_before"][0], result["loadavg_after"][0]
  return (f"{result['benchmark']} ({result['mode']}) on {result['machine']['cpu_model']}, "
          f"{result['machine']['nproc']} CPUs, load {load[0]:.1f} -> {load[1]:.1f}")


def write_table_plot(result: dict[str, Any], path: pathlib.Path) -> None:
  """A table result drawn as its `plot` spec says (see harness.TableRun)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  spec = result["plot"]
  cols = result["columns"]
  xi, yi = cols.index(spec["x"]), cols.index(spec["y"])
  si = cols.index(spec["series"]) if spec.get("series") else None
  series: dict[str, list[tuple[Any, Any]]] = {}
  for row in result["rows"]:
    if row[xi] is None or row[yi] is None:
      continue
    series.setdefault("" if si is None else str(row[si]), []).append((row[xi], row[yi]))
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  if spec.get("kind") == "bar":
    labels = [f"{name} {x}".strip() for name, pts in series.items() for x, _ in pts]
    values = [y for pts in series.values() for _, y in pts]
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
  else:
    for name, pts in series.items():
      pts = sorted(pts)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name or None)
    if si is not None:
      ax.legend(fontsize=7)
  for axis, key in (("x", "logx"), ("y", "logy")):
    if spec.get(key):
      getattr(ax, f"set_{axis}scale")("log")
  for line in spec.get("hlines", []):
    ax.axhline(line["y"], color="gray", linestyle="--", linewidth=1)
    ax.text(ax.get_xlim()[0], line["y"], " " + line["label"], va="bottom", fontsize=7)
  ax.set_xlabel(spec["x"])
  ax.set_ylabel(spec["y"])
  ax.set_title(_title(result), fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def write_plot(result: dict[str, Any], path: pathlib.Path) -> None:
  """One PNG for one benchmark result (matplotlib's Agg backend; written atomically)."""
  if result.get("schema") == harness.TABLE_SCHEMA:
    if result.get("plot"):
      write_table_plot(result, path)
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  groups = _groups(result)
  cols = min(3, len(groups))
  rows = -(-len(groups) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.2 * rows), squeeze=False)
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  # One colour per implementation across every panel.
  color = {name: palette[i % len(palette)]
           for i, name in enumerate(_impl_order(result["cells"]))}
  for ax, (title, cells) in zip(axes.flat, groups.items()):
    impls = _impl_order(cells)
    width = 0.8 / max(1, len(impls))
    x = np.arange(len(cells))
    for i, name in enumerate(impls):
      med, lo, hi = [], [], []
      for cell in cells:
        res = next((r for r in cell["results"] if r["impl"] == name), None)
        if res is None or res["stats"] is None:
          med.append(np.nan), lo.append(0.0), hi.append(0.0)
          continue
        s = res["stats"]
        med.append(s["median_s"] * 1e3)
        lo.append((s["median_s"] - s["q1_s"]) * 1e3)
        hi.append((s["q3_s"] - s["median_s"]) * 1e3)
      ax.bar(x + (i - (len(impls) - 1) / 2) * width, med, width, yerr=[lo, hi], capsize=2,
             label=name, color=color[name])
    ax.set_xticks(x)
    ax.set_xticklabels([c["label"].removeprefix(title).strip() or c["label"] for c in cells],
                       rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median ms per call (IQR bars)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(groups):]:
    ax.axis("off")
  fig.suptitle(_title(result), fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def _num(x: float) -> str:
  """Milliseconds with about three significant digits and no exponent."""
  return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _ms(res: dict[str, Any]) -> str:
  if res["status"] != "ok":
    return f"*{res['status']}*"
  s = res["stats"]
  text = f"{_num(s['median_s'] * 1e3)} [{_num(s['iqr_s'] * 1e3)}]"
  recall = (res.get("agreement") or {}).get("recall")
  if recall is not None:  # approximate search: rate, recall and index size matter
    text = f"{res['per_second']:.0f}/s, R {recall:.3f}"
    info = res.get("info") or {}
    if info.get("bytes_per_vector") is not None:
      text += f", {info['bytes_per_vector']:.0f} B/vec"
  return text


def _single_cell_table(cell: dict[str, Any]) -> list[str]:
  """One cell: a row per implementation."""
  # Rates at different recalls are not comparable, so approximate search gets no ratio.
  ratios = {r["impl"]: cell["project_speedup"].get(r["impl"]) for r in cell["results"]
            if r["project"] and (r.get("agreement") or {}).get("recall") is None}
  ratios = {k: v for k, v in ratios.items() if v is not None}
  head = "| implementation | result |" + (" vs fastest peer |" if ratios else "")
  lines = [f"{cell['label']}:", "", head, "|---|---|" + ("---|" if ratios else "")]
  for res in cell["results"]:
    row = f"| {res['impl']} | {_ms(res)} |"
    if ratios:
      speed = ratios.get(res["impl"])
      row += f" {'' if speed is None else f'{speed:.2f}×'} |"
    lines.append(row)
  return lines


def _cell_table(cells: list[dict[str, Any]]) -> list[str]:
  if len(cells) == 1 and not cells[0]["flops"]:
    return _single_cell_table(cells[0])
  impls = _impl_order(cells)
  project = [n for n in impls
             if any(r["impl"] == n and r["project"] for c in cells for r in c["results"])]
  head = ["cell"] + impls
  for name in project:
    head += [f"{name} GFLOP/s (% peak)", f"{name} vs fastest peer"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for cell in cells:
    by = {r["impl"]: r for r in cell["results"]}
    row = [cell["label"]] + [_ms(by[n]) if n in by else "" for n in impls]
    for name in project:
      res = by.get(name)
      if res is None or res["status"] != "ok":
        row += ["", ""]
        continue
      gf = "" if res.get("gflops") is None else f"{res['gflops']:.1f}"
      if res.get("pct_gemm_peak") is not None:
        gf += f" ({res['pct_gemm_peak']:.0f} %)"
      speed = cell["project_speedup"].get(name)
      peer = cell.get("fastest_peer")
      row += [gf, "" if speed is None else f"{speed:.2f}× ({peer['impl']})"]
    lines.append("| " + " | ".join(row) + " |")
  return lines


def _header(result: dict[str, Any]) -> list[str]:
  m = result["machine"]
  versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
  lb, la = result["loadavg_before"], result["loadavg_after"]
  return [f"### `{result['benchmark']}` ({result['mode']})", "", result["description"], "",
          f"- run {result['started']} → {result['finished']}, commit `{m.get('git_commit')}`",
          f"- machine: {m['cpu_model']}, {m['nproc']} CPUs; load average (1/5/15 min) "
          f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} "
          "after", f"- versions: {versions}"]


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def table_markdown(result: dict[str, Any], png_link: str | None) -> list[str]:
  """The README section of a table result."""
  out = _header(result)
  out += [f"- {k}: {v}" for k, v in result.get("extra", {}).items()]
  out += [f"- {note}" for note in result["notes"]]
  cols = result["columns"]
  out += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in result["rows"]]
  if png_link:
    out += ["", f"![{result['benchmark']}]({png_link})"]
  return out


def result_markdown(result: dict[str, Any], png_link: str | None) -> list[str]:
  """The README section of one benchmark result."""
  if result.get("schema") == harness.TABLE_SCHEMA:
    return table_markdown(result, png_link)
  out = _header(result)[:-1] + [
         f"- {result['settings']['runs']} timed runs after {result['settings']['warmup']} "
         f"warm-up calls, each implementation in a fresh process; "
         + (f"recall of the reference's neighbours ≥ {result.get('min_recall')} checked before "
            "timing" if result.get("check") == "recall" else
            f"agreement with the reference within rtol={result['tolerance']['rtol']}, "
            f"atol={result['tolerance']['atol']} checked before timing"),
         _header(result)[-1]]
  if result.get("gemm_peak"):
    p = result["gemm_peak"]
    out.append(f"- GEMM peak measured in this run: {p['gflops']:.1f} GFLOP/s "
               f"({p['impl']}, {p['cell']})")
  for key, value in result.get("extra", {}).items():
    out.append(f"- {key}: {value}")
  out.append("")
  if result.get("check") == "recall":
    out.append("Entries: query vectors per second (median call), recall R of the exact "
               "top-K′, bytes per vector of the serialised index.")
  else:
    out.append("Entries: median ms per call [interquartile range].")
  for title, cells in _groups(result).items():
    out += ["", f"**{title}**", ""] + _cell_table(cells)
  if png_link:
    out += ["", f"![{result['benchmark']}]({png_link})"]
  return out


def _has_schema(path: pathlib.Path) -> bool:
  """Whether a results file claims a harness schema (then `load_result` checks it whole)."""
  try:
    obj = json.loads(path.read_text())
  except json.JSONDecodeError:
    return True  # let load_result name the file and line
  return not isinstance(obj, dict) or "schema" in obj


def _result_sections(results_dir: pathlib.Path, link_prefix: str) -> list[str]:
  lines = []
  for path in sorted(pathlib.Path(results_dir).glob("*.json")):
    if not _has_schema(path):
      continue  # a benchmark's own record (e.g. a tuning sweep), quoted in prose instead
    result = harness.load_result(path)
    png = path.with_suffix(".png")
    lines += result_markdown(result, link_prefix + png.name if png.exists() else None) + [""]
  return lines


def generated_section(results_dir: pathlib.Path) -> str:
  """The generated README block: the full results of `results_dir`, then its quick runs."""
  results_dir = pathlib.Path(results_dir)
  lines = [GENERATED_BEGIN, ""]
  full = _result_sections(results_dir, "results/")
  quick = _result_sections(results_dir / harness.QUICK_RESULTS_DIR.name, "results/quick/")
  if not full and not quick:
    lines.append("No results yet: run `make bench-quick` or `make bench`.")
  lines += full
  if quick:
    lines += ["## Quick runs (`make bench-quick`)", "",
              "Subsets of the cells and of the data, kept in `results/quick/`; they never "
              "replace the full results above.", ""] + quick
  lines.append(GENERATED_END)
  return "\n".join(lines) + "\n"


def results_root(results_dir: pathlib.Path) -> pathlib.Path:
  """The results root a results directory belongs to (its quick/ directory names the root)."""
  results_dir = pathlib.Path(results_dir)
  if results_dir.name == harness.QUICK_RESULTS_DIR.name:
    return results_dir.parent
  return results_dir


def update_bench_readme(results_dir: pathlib.Path = harness.RESULTS_DIR) -> bool:
  """`update_readme` of bench/README.md, only for the repository's own results: a run written
  elsewhere (`--results-dir`) would otherwise replace the block with that directory's few
  results. Returns whether the README was rewritten."""
  if results_root(results_dir).resolve() != harness.RESULTS_DIR.resolve():
    print(f"results in {results_dir}, outside {harness.RESULTS_DIR}: bench/README.md left as "
          f"it is", flush=True)
    return False
  update_readme(harness.BENCH_DIR / "README.md", results_dir)
  return True


def update_readme(readme: pathlib.Path, results_dir: pathlib.Path = harness.RESULTS_DIR) -> None:
  """Replaces the generated block of `readme` (appends one if absent); written atomically.

  `results_dir` is the results root (or its quick/ directory, which means the same root): the
  block always shows both the full and the quick results.
  """
  results_dir = results_root(results_dir)
  text = readme.read_text() if readme.exists() else "# Benchmarks\n\n"
  block = generated_section(results_dir)
  begin, end = text.find(GENERATED_BEGIN), text.find(GENERATED_END)
  if begin >= 0 and end > begin:
    text = text[:begin] + block + text[end + len(GENERATED_END):].lstrip("\n")
  elif begin >= 0 or end >= 0:
    raise ValueError(f"{readme}: found only one of the generated-results markers; restore "
                     f"both {GENERATED_BEGIN!r} and {GENERATED_END!r}")
  else:
    text = text.rstrip("\n") + "\n\n" + block
  atomic_write(readme, text)
