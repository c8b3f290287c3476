"""The benchmark harness: each implementation in a fresh process, agreement checked before timing.

A `Benchmark` is a list of `Cell`s (one input configuration each); every cell names a reference
(check-only, never timed) and the implementations to time. For each cell the harness

  1. runs the reference in its own subprocess, which writes `reference.npy` to a temp dir;
  2. for every implementation starts a fresh subprocess (`python -m bench.worker`) that builds
     the cell's inputs (seeded, so every process sees the same arrays), calls the implementation
     once (compilation), `warmup` more times, writes its output to `<impl>.npy` and reports
     "ready";
  3. compares that output with the reference (|x − ref| ≤ atol + rtol·|ref| everywhere, NaN only
     where the reference has NaN). Only an implementation that agrees is told to time `runs`
     calls; one that disagrees is recorded as "disagrees" and never timed.

Only one subprocess lives at a time, so implementations never compete for the cores, and no
process holds two frameworks' runtimes (the worker refuses to time with both torch and jax
loaded). NumPy is in every process (JAX and torch depend on it) but computes only in "numpy"
implementations.

Targets are "module:function" strings resolved in the worker:
  inputs(params: dict) -> dict[str, np.ndarray]       NumPy only and deterministic.
  impl(params: dict, inputs: dict) -> Callable[[], A]  set-up (device transfer, jit) happens
      here, outside timing; the callable computes once and returns when the result is ready
      (JAX implementations block); A converts with `np.asarray`. Set-up may instead return
      (callable, info) with a JSON-able dict of what it measured (an index's build time, bytes).

A cell with `role="peak"` measures a plain GEMM; the best GFLOP/s measured there (median time) is
the run's GEMM peak and every other result with a FLOP count gets `pct_gemm_peak`. Results go to
`bench/results/<name>.json` (schema `SCHEMA`, checked by `validate_result`), a PNG plot and the
generated tables of `bench/README.md` (`bench/report.py`).
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from aligner_jax.io import write_json

SCHEMA = "aligner_jax.bench/1"
TABLE_SCHEMA = "aligner_jax.bench.table/1"  # measured quantities that are not timings
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
# Quick runs (fewer cells, subsets of the data) never overwrite the full suite's results.
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"
STATUSES = ("ok", "disagrees", "error", "timeout", "skipped")
# Versions recorded with every result (read from package metadata: nothing is imported).
PACKAGES = ("numpy", "jax", "jaxlib", "flax", "torch", "scann", "faiss-cpu", "tensorflow",
            "aligner_jax")
MIN_RUNS = 5


@dataclasses.dataclass(frozen=True)
class Impl:
  """One implementation under test.

  Attributes:
    name: short label, unique within a cell ("numpy_blas", "aligner_jax", ...).
    target: "module:function" of its set-up function (see the module docstring).
    framework: "numpy", "torch", "jax", "faiss", "scann", ...; recorded with the result.
    project: True for aligner_jax's own implementations (compared against the fastest peer).
    options: extra parameters merged over the cell's (e.g. an ANN operating point).
  """
  name: str
  target: str
  framework: str
  project: bool = False
  options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One input configuration.

  Attributes:
    label: unique within the benchmark, e.g. "top_k:1 n=32 m=256 K=1000".
    params: JSON-serialisable parameters given to the inputs and implementation functions.
    impls: the implementations timed in this cell.
    reference: check-only implementation whose output the others must match (never timed).
    flops: useful floating-point operations of one call (None: no GFLOP/s reported).
    role: "measure", or "peak" for the plain GEMMs that define the run's GEMM peak.
    group: plot panel / README sub-table this cell belongs to.
    rtol, atol: agreement tolerance of this cell (None: the benchmark's).
    items: queries (or other units) one call handles; gives a rate per second.
  """
  label: str
  params: dict[str, Any]
  impls: tuple[Impl, ...]
  reference: Impl
  flops: float | None = None
  role: str = "measure"
  group: str = ""
  rtol: float | None = None
  atol: float | None = None
  items: int | None = None


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A named set of cells sharing one inputs function and agreement check.

  check: "allclose" (|x − ref| ≤ atol + rtol·|ref|) or "recall" for approximate search: outputs
    are neighbour ids [Q, k] (-1 = unfilled), the recall of the reference's ids is recorded and
    an implementation agrees when it reaches `min_recall` (it searched the same data).
  """
  name: str
  description: str
  inputs: str
  cells: tuple[Cell, ...]
  rtol: float = 1e-4
  atol: float = 1e-5
  check: str = "allclose"
  min_recall: float = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a benchmark is run."""
  mode: str = "full"  # "quick" or "full"; recorded only
  runs: int = 7
  warmup: int = 2
  timeout_s: float = 900.0  # per subprocess


# ------------------------------------------------------------------------------------------
# Statistics and agreement.


def summarize(times: Sequence[float]) -> dict[str, float]:
  """Median and spread of timings in seconds."""
  t = np.asarray(times, np.float64)
  if t.size == 0:
    raise ValueError("summarize needs at least one timing")
  q1, median, q3 = np.percentile(t, [25, 50, 75])
  return {"runs": int(t.size), "median_s": float(median), "q1_s": float(q1), "q3_s": float(q3),
          "iqr_s": float(q3 - q1), "min_s": float(t.min()), "max_s": float(t.max()),
          "mean_s": float(t.mean())}


def compare(out: np.ndarray, ref: np.ndarray, *, rtol: float, atol: float) -> dict[str, Any]:
  """Whether `out` matches `ref` within atol + rtol·|ref| (NaN must match NaN)."""
  out = np.asarray(out)
  ref = np.asarray(ref)
  if out.shape != ref.shape:
    return {"agrees": False, "max_abs_err": None, "max_rel_err": None,
            "problem": f"shape {list(out.shape)} differs from the reference's {list(ref.shape)}"}
  out64 = out.astype(np.float64)
  ref64 = ref.astype(np.float64)
  nan_out, nan_ref = np.isnan(out64), np.isnan(ref64)
  if np.any(nan_out != nan_ref):
    where = tuple(int(i) for i in np.argwhere(nan_out != nan_ref)[0])
    return {"agrees": False, "max_abs_err": None, "max_rel_err": None,
            "problem": f"NaN pattern differs from the reference (first at index {list(where)})"}
  both = ~nan_ref
  err = np.abs(out64 - ref64)[both]
  bound = (atol + rtol * np.abs(ref64))[both]
  max_abs = float(err.max()) if err.size else 0.0
  rel = err / np.maximum(np.abs(ref64[both]), np.finfo(np.float64).tiny)
  max_rel = float(rel.max()) if rel.size else 0.0
  bad = err > bound
  problem = None
  if np.any(bad):
    flat = np.flatnonzero(both)[np.flatnonzero(bad)[0]]
    where = [int(i) for i in np.unravel_index(flat, ref.shape)]
    problem = (f"{int(bad.sum())} of {err.size} values differ by more than atol={atol} + "
               f"rtol={rtol}·|ref| (first at index {where}: {out64.flat[flat]!r} vs "
               f"{ref64.flat[flat]!r})")
  return {"agrees": not np.any(bad), "max_abs_err": max_abs, "max_rel_err": max_rel,
          "problem": problem}


def compare_recall(out: np.ndarray, ref: np.ndarray, *, min_recall: float) -> dict[str, Any]:
  """Mean over rows of |out ∩ ref| / |ref| for id arrays [Q, k] (-1 entries ignored)."""
  out, ref = np.asarray(out), np.asarray(ref)
  if out.ndim != 2 or ref.ndim != 2 or len(out) != len(ref):
    return {"agrees": False, "recall": None,
            "problem": f"ids {list(out.shape)} do not match the reference's {list(ref.shape)}"}
  per_row = [len(set(o[o >= 0].tolist()) & set(r[r >= 0].tolist())) / max(1, int((r >= 0).sum()))
             for o, r in zip(out, ref)]
  recall = float(np.mean(per_row)) if per_row else 1.0
  problem = None if recall >= min_recall else (
      f"recall {recall:.3f} of the reference's neighbours is below {min_recall}")
  return {"agrees": problem is None, "recall": recall, "problem": problem}


def _check(bench: "Benchmark", out: np.ndarray, ref: np.ndarray, rtol: float,
           atol: float) -> dict[str, Any]:
  if bench.check == "recall":
    return compare_recall(out, ref, min_recall=bench.min_recall)
  return compare(out, ref, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# The machine.


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def package_versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_commit() -> str | None:
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30, check=True).stdout.strip()
    # The benchmark's own outputs (results, README tables) do not make the code uncommitted.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "aligner_jax", "bench",
                            ":!bench/results", ":!bench/README.md"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+uncommitted" if dirty.strip() else "")


def machine_info() -> dict[str, Any]:
  return {"cpu_model": cpu_model(), "nproc": os.cpu_count(),
          "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
          "python": platform.python_version(), "versions": package_versions(),
          "git_commit": git_commit()}


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------
# Subprocesses.


def _file_name(name: str) -> str:
  """An implementation name as a file name (operating points may hold '=' or spaces)."""
  return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def worker_env() -> dict[str, str]:
  """The environment of every worker: the real CPU device (no fake devices), quiet TF."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


class _Worker:
  """One `python -m bench.worker` subprocess speaking JSON lines (see bench/worker.py)."""

  def __init__(self, spec: dict[str, Any], workdir: pathlib.Path, timeout_s: float):
    self.deadline = time.monotonic() + timeout_s
    spec_path = workdir / f"{spec['name']}.spec.json"
    spec_path.write_text(json.dumps(spec))
    self.stderr_path = workdir / f"{spec['name']}.stderr"
    self._stderr = open(self.stderr_path, "w")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "bench.worker", str(spec_path)], cwd=REPO_ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=worker_env(),
        text=True)
    self._lines: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._lines.put(line)
    self._lines.put(None)

  def message(self) -> dict[str, Any]:
    """The next protocol message; {"event": "timeout"} or {"event": "exit"} when none comes."""
    while True:
      left = self.deadline - time.monotonic()
      if left <= 0:
        return {"event": "timeout"}
      try:
        line = self._lines.get(timeout=left)
      except queue.Empty:
        return {"event": "timeout"}
      if line is None:
        return {"event": "exit"}
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        continue  # not a protocol line

  def send(self, command: str):
    try:
      self.proc.stdin.write(command + "\n")
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError):
      pass

  def stderr_tail(self, chars: int = 2000) -> str:
    self._stderr.flush()
    text = self.stderr_path.read_text(errors="replace")
    return text[-chars:]

  def close(self):
    try:
      self.proc.stdin.close()
    except OSError:
      pass
    try:
      self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self._stderr.close()


def _failure(worker: _Worker, msg: dict[str, Any]) -> tuple[str, str]:
  if msg["event"] == "timeout":
    worker.proc.kill()
    return "timeout", "no answer before the per-process time limit"
  detail = msg.get("error") or f"worker exited with code {worker.proc.poll()}"
  return "error", f"{detail}\n{worker.stderr_tail()}".strip()


def run_impl(impl: Impl, *, inputs: str, params: dict[str, Any], workdir: pathlib.Path,
             settings: Settings, reference: np.ndarray | None,
             check: Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None = None,
             check_only: bool = False) -> dict[str, Any]:
  """Runs one implementation in a fresh subprocess; see the module docstring.

  `check(out, reference)` returns the agreement record ({"agrees", "problem", ...}).
  """
  out_path = workdir / f"{_file_name(impl.name)}.npy"
  spec = {"name": _file_name(impl.name), "target": impl.target, "framework": impl.framework,
          "inputs": inputs, "params": {**params, **impl.options},
          "warmup": 0 if check_only else settings.warmup,
          "runs": 0 if check_only else settings.runs, "out": str(out_path)}
  result: dict[str, Any] = {"impl": impl.name, "framework": impl.framework,
                            "project": impl.project, "status": "error", "agreement": None,
                            "setup_s": None, "first_call_s": None, "runtime": None,
                            "times_s": [], "stats": None, "error": None, "info": None,
                            "options": impl.options, "loadavg_1m": os.getloadavg()[0]}
  worker = _Worker(spec, workdir, settings.timeout_s)
  started = time.perf_counter()
  try:
    msg = worker.message()
    if msg.get("event") != "ready":
      result["status"], result["error"] = _failure(worker, msg)
      return result
    result.update(setup_s=msg["setup_s"], first_call_s=msg["first_call_s"],
                  runtime=msg["runtime"], info=msg.get("info"))
    out = np.load(out_path, allow_pickle=False)
    if reference is not None:
      result["agreement"] = check(out, reference)
      if not result["agreement"]["agrees"]:
        worker.send("stop")
        result["status"] = "disagrees"
        result["error"] = result["agreement"]["problem"]
        return result
    if check_only:
      worker.send("stop")
      result["status"] = "ok"
      result["output"] = out
      return result
    worker.send("time")
    msg = worker.message()
    if msg.get("event") != "done":
      result["status"], result["error"] = _failure(worker, msg)
      return result
    result["times_s"] = [float(t) for t in msg["times_s"]]
    result["stats"] = summarize(result["times_s"])
    result["status"] = "ok"
    return result
  finally:
    worker.close()
    result["wall_s"] = time.perf_counter() - started


# ------------------------------------------------------------------------------------------
# Running a benchmark.


def _log(text: str):
  print(text, file=sys.stderr, flush=True)


def run_cell(bench: Benchmark, cell: Cell, settings: Settings) -> dict[str, Any]:
  """Reference, then every implementation of one cell; returns the cell's JSON record."""
  rtol = bench.rtol if cell.rtol is None else cell.rtol
  atol = bench.atol if cell.atol is None else cell.atol
  record: dict[str, Any] = {"label": cell.label, "group": cell.group, "role": cell.role,
                            "params": cell.params, "flops": cell.flops, "items": cell.items,
                            "tolerance": {"rtol": rtol, "atol": atol}, "results": []}
  names = [impl.name for impl in cell.impls]
  if len(set(names)) != len(names) or cell.reference.name in names:
    raise ValueError(f"cell {cell.label!r}: implementation names must be unique and differ "
                     f"from the reference's, got {names} and {cell.reference.name!r}")
  with tempfile.TemporaryDirectory(prefix="aligner_bench_") as tmp:
    workdir = pathlib.Path(tmp)
    t0 = time.perf_counter()
    ref = run_impl(cell.reference, inputs=bench.inputs, params=cell.params, workdir=workdir,
                   settings=settings, reference=None, check_only=True)
    ref_out = ref.pop("output", None)
    record["reference"] = {"impl": cell.reference.name, "framework": cell.reference.framework,
                           "status": ref["status"], "seconds": time.perf_counter() - t0,
                           "error": ref["error"]}
    _log(f"[{bench.name}] {cell.label}: reference {cell.reference.name} {ref['status']} "
         f"(process {ref['wall_s']:.1f} s)")
    for impl in cell.impls:
      if ref_out is None:
        res = {"impl": impl.name, "framework": impl.framework, "project": impl.project,
               "status": "skipped", "agreement": None, "setup_s": None, "first_call_s": None,
               "runtime": None, "times_s": [], "stats": None, "loadavg_1m": os.getloadavg()[0],
               "error": f"reference {cell.reference.name} failed, so agreement cannot be checked"}
      else:
        res = run_impl(impl, inputs=bench.inputs, params=cell.params, workdir=workdir,
                       settings=settings, reference=ref_out,
                       check=lambda out, ref: _check(bench, out, ref, rtol, atol))
      res["gflops"] = (cell.flops / res["stats"]["median_s"] / 1e9
                       if cell.flops and res["stats"] else None)
      res["per_second"] = (cell.items / res["stats"]["median_s"]
                           if cell.items and res["stats"] else None)
      res["pct_gemm_peak"] = None
      record["results"].append(res)
      median = f"{res['stats']['median_s'] * 1e3:.2f} ms" if res["stats"] else ""
      _log(f"[{bench.name}] {cell.label}: {impl.name} {res['status']} {median} "
           f"(process {res.get('wall_s', 0.0):.1f} s)"
           + (f" ({res['error'].splitlines()[0]})" if res["error"] else ""))
  return record


def _finish(result: dict[str, Any]) -> None:
  """GEMM peak, % of peak and project-vs-fastest-peer ratios, filled in after all cells."""
  peak = None
  for cell in result["cells"]:
    if cell["role"] != "peak":
      continue
    for res in cell["results"]:
      if res["status"] == "ok" and res["gflops"] and (peak is None or
                                                      res["gflops"] > peak["gflops"]):
        peak = {"gflops": res["gflops"], "impl": res["impl"], "cell": cell["label"]}
  result["gemm_peak"] = peak
  for cell in result["cells"]:
    ok = [r for r in cell["results"] if r["status"] == "ok"]
    if peak and cell["role"] != "peak":
      for res in ok:
        if res["gflops"]:
          res["pct_gemm_peak"] = 100.0 * res["gflops"] / peak["gflops"]
    peers = [r for r in ok if not r["project"]]
    fastest = min(peers, key=lambda r: r["stats"]["median_s"]) if peers else None
    cell["fastest_peer"] = None if fastest is None else {
        "impl": fastest["impl"], "median_s": fastest["stats"]["median_s"]}
    cell["project_speedup"] = {
        r["impl"]: fastest["stats"]["median_s"] / r["stats"]["median_s"]
        for r in ok if r["project"] and fastest is not None}


def run_benchmark(bench: Benchmark, settings: Settings, *,
                  results_dir: pathlib.Path = RESULTS_DIR,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs every cell, writes `<results_dir>/<name>.json` atomically and returns the record."""
  if settings.runs < MIN_RUNS:
    raise ValueError(f"runs must be at least {MIN_RUNS} (median and spread), got {settings.runs}")
  labels = [c.label for c in bench.cells]
  if len(set(labels)) != len(labels):
    raise ValueError(f"benchmark {bench.name}: cell labels must be unique, got {labels}")
  result: dict[str, Any] = {
      "schema": SCHEMA, "benchmark": bench.name, "description": bench.description,
      "mode": settings.mode, "settings": dataclasses.asdict(settings),
      "tolerance": {"rtol": bench.rtol, "atol": bench.atol}, "check": bench.check,
      "min_recall": bench.min_recall if bench.check == "recall" else None,
      "started": _now(),
      "machine": machine_info(), "loadavg_before": list(os.getloadavg())}
  result["cells"] = [run_cell(bench, cell, settings) for cell in bench.cells]
  result["loadavg_after"] = list(os.getloadavg())
  result["finished"] = _now()
  result["extra"] = extra or {}
  _finish(result)
  validate_result(result, source=f"benchmark {bench.name}")
  write_result(pathlib.Path(results_dir) / f"{bench.name}.json", result)
  return result


def write_result(path: pathlib.Path, result: dict[str, Any]) -> None:
  """A results file, atomically; keys stay in the order the schema lists them."""
  write_json(path, result, sort_keys=False)


# ------------------------------------------------------------------------------------------
# The result schema.

_TOP_KEYS = {"schema": str, "benchmark": str, "description": str, "mode": str, "settings": dict,
             "tolerance": dict, "started": str, "finished": str, "machine": dict,
             "loadavg_before": list, "loadavg_after": list, "cells": list, "extra": dict}
_MACHINE_KEYS = {"cpu_model": str, "nproc": int, "versions": dict}
_CELL_KEYS = {"label": str, "group": str, "role": str, "params": dict, "results": list,
              "reference": dict, "project_speedup": dict}
_RESULT_KEYS = {"impl": str, "framework": str, "project": bool, "status": str, "times_s": list}


class ResultSchemaError(ValueError):
  """A results file (or record) that does not follow SCHEMA; the message names it."""


def _require(obj: Any, keys: dict[str, type], where: str) -> None:
  if not isinstance(obj, dict):
    raise ResultSchemaError(f"{where}: expected an object, got {type(obj).__name__}")
  for key, typ in keys.items():
    if key not in obj:
      raise ResultSchemaError(f"{where}: missing key {key!r}")
    if not isinstance(obj[key], typ):
      raise ResultSchemaError(f"{where}: {key!r} must be {typ.__name__}, got "
                              f"{type(obj[key]).__name__}")


def validate_result(obj: Any, *, source: str) -> None:
  """Raises ResultSchemaError naming `source` and the offending entry unless obj follows SCHEMA."""
  _require(obj, _TOP_KEYS, source)
  if obj["schema"] != SCHEMA:
    raise ResultSchemaError(f"{source}: schema {obj['schema']!r} is not {SCHEMA!r}")
  _require(obj["machine"], _MACHINE_KEYS, f"{source}: machine")
  for name in ("loadavg_before", "loadavg_after"):
    if len(obj[name]) != 3:
      raise ResultSchemaError(f"{source}: {name} must hold the 1, 5 and 15 minute load averages")
  for i, cell in enumerate(obj["cells"]):
    where = f"{source}: cells[{i}]"
    _require(cell, _CELL_KEYS, where)
    where = f"{where} ({cell['label']})"
    if cell["role"] not in ("measure", "peak"):
      raise ResultSchemaError(f"{where}: role must be 'measure' or 'peak'")
    for j, res in enumerate(cell["results"]):
      rwhere = f"{where}: results[{j}]"
      _require(res, _RESULT_KEYS, rwhere)
      if res["status"] not in STATUSES:
        raise ResultSchemaError(f"{rwhere}: status {res['status']!r} is not one of {STATUSES}")
      if res["status"] == "ok":
        if len(res["times_s"]) < MIN_RUNS or res.get("stats") is None:
          raise ResultSchemaError(f"{rwhere}: an 'ok' result needs >= {MIN_RUNS} timings and stats")
        for key in ("median_s", "q1_s", "q3_s", "iqr_s", "min_s", "max_s"):
          if not isinstance(res["stats"].get(key), float):
            raise ResultSchemaError(f"{rwhere}: stats lacks the float {key!r}")
      elif not res.get("error"):
        raise ResultSchemaError(f"{rwhere}: status {res['status']!r} needs an error message")


_TABLE_KEYS = {"schema": str, "benchmark": str, "description": str, "mode": str,
               "started": str, "finished": str, "machine": dict, "loadavg_before": list,
               "loadavg_after": list, "columns": list, "rows": list, "notes": list,
               "extra": dict}


def validate_table(obj: Any, *, source: str) -> None:
  """Raises ResultSchemaError unless obj follows TABLE_SCHEMA (rows as long as the columns)."""
  _require(obj, _TABLE_KEYS, source)
  if obj["schema"] != TABLE_SCHEMA:
    raise ResultSchemaError(f"{source}: schema {obj['schema']!r} is not {TABLE_SCHEMA!r}")
  _require(obj["machine"], _MACHINE_KEYS, f"{source}: machine")
  for i, row in enumerate(obj["rows"]):
    if not isinstance(row, list) or len(row) != len(obj["columns"]):
      raise ResultSchemaError(f"{source}: rows[{i}] must be a list of {len(obj['columns'])} "
                              f"values (one per column)")


def load_result(path: pathlib.Path) -> dict[str, Any]:
  """A results file (timings or a table), checked against its schema (errors name the file)."""
  try:
    obj = json.loads(pathlib.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ResultSchemaError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if isinstance(obj, dict) and obj.get("schema") == TABLE_SCHEMA:
    validate_table(obj, source=str(path))
  else:
    validate_result(obj, source=str(path))
  return obj


class TableRun:
  """Records a table benchmark: machine and load before, rows as they come, then `write`.

  `plot` (optional) tells report.write_plot how to draw it: {"x": column, "y": column,
  "series": column or None, "kind": "line" | "bar", "logx": bool, "logy": bool}.
  """

  def __init__(self, name: str, description: str, columns: Sequence[str], *, mode: str,
               plot: dict[str, Any] | None = None):
    self.record: dict[str, Any] = {
        "schema": TABLE_SCHEMA, "benchmark": name, "description": description, "mode": mode,
        "started": _now(), "machine": machine_info(), "loadavg_before": list(os.getloadavg()),
        "columns": list(columns), "rows": [], "notes": [], "extra": {}, "plot": plot}

  def add(self, row: dict[str, Any]) -> None:
    missing = [c for c in self.record["columns"] if c not in row]
    if missing:
      raise ValueError(f"table {self.record['benchmark']}: row lacks columns {missing}")
    self.record["rows"].append([row[c] for c in self.record["columns"]])
    _log(f"[{self.record['benchmark']}] " + ", ".join(f"{k}={row[k]}" for k in row))

  def write(self, results_dir: pathlib.Path = RESULTS_DIR, *, notes: Sequence[str] = (),
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    self.record.update(finished=_now(), loadavg_after=list(os.getloadavg()),
                       notes=list(notes), extra=extra or {})
    validate_table(self.record, source=f"table {self.record['benchmark']}")
    write_result(pathlib.Path(results_dir) / f"{self.record['benchmark']}.json", self.record)
    return self.record


# ------------------------------------------------------------------------------------------
# Command line shared by the bench_* scripts.


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help="a subset of cells and 5 runs")
  parser.add_argument("--runs", type=int, default=None, help=f"timed calls (>= {MIN_RUNS})")
  parser.add_argument("--warmup", type=int, default=None, help="untimed calls after the first")
  parser.add_argument("--only", default=None, help="run only cells whose label contains this")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
  add_results_dir_arg(parser)
  parser.add_argument("--no-report", action="store_true", help="skip the plot and README tables")
  return resolve_results_dir(parser.parse_args(argv))


def add_results_dir_arg(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--results-dir", default=None,
                      help=f"default {RESULTS_DIR}, or {QUICK_RESULTS_DIR} with --quick")


def resolve_results_dir(args: argparse.Namespace) -> argparse.Namespace:
  """Fills in the default --results-dir: quick runs keep their results apart."""
  if args.results_dir is None:
    args.results_dir = str(QUICK_RESULTS_DIR if getattr(args, "quick", False) else RESULTS_DIR)
  return args


def main(build: Callable[[bool], Benchmark], argv: Sequence[str] | None = None,
         extra: Callable[[bool], dict[str, Any]] | None = None) -> dict[str, Any]:
  """Entry point of a bench_* script: `build(quick)` gives the Benchmark to run."""
  args = parse_args(argv, "aligner_jax benchmark")
  bench = build(args.quick)
  if args.only:
    bench = dataclasses.replace(bench, cells=tuple(c for c in bench.cells
                                                   if args.only in c.label or c.role == "peak"))
  settings = Settings(mode="quick" if args.quick else "full",
                      runs=args.runs or (MIN_RUNS if args.quick else 7),
                      warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
                      timeout_s=args.timeout)
  result = run_benchmark(bench, settings, results_dir=pathlib.Path(args.results_dir),
                         extra=extra(args.quick) if extra else None)
  if not args.no_report:
    from bench import report  # matplotlib only in the parent, only when plotting
    report.write_plot(result, pathlib.Path(args.results_dir) / f"{bench.name}.png")
    report.update_bench_readme(pathlib.Path(args.results_dir))
  return result
