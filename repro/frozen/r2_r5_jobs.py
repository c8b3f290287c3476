"""Gin jobs of the frozen-encoder claims R2-R5 (`gin/experiments/repro_r{2,3,4,5}_*.gin`).

Entry-point code only: gin binds the arguments, `experiments` does the work, and each job
writes `output_json` (numbers, seeds, settings, the paper's numbers from
`docs/results/papers.json`, machine, wall time), its markdown table and its figure(s).
Registered under the gin module `repro.frozen`:
  FrozenData, FrozenHead (= heads.HeadConfig), FrozenTrain (= head_training.TrainConfig)
  repro_r2_pruning, repro_r3_gates, repro_r4_rerank, repro_r5_distill   (run.job)
"""

import datetime
import os
import pathlib
import platform
import time
from typing import Any, Mapping, Sequence

import gin
import jax

from aligner_jax.io import atomic_write
from aligner_jax.io import write_json
from repro.frozen import experiments
from repro.frozen import r2_r5_figures
from repro.frozen import r2_r5_tables
from repro.frozen.frozen_data import FrozenData
from repro.frozen.head_training import TrainConfig
from repro.frozen.heads import HeadConfig
from repro.papers import paper_numbers

_MODULE = "repro.frozen"
gin.external_configurable(FrozenData, "FrozenData", module=_MODULE)
gin.external_configurable(HeadConfig, "FrozenHead", module=_MODULE)
gin.external_configurable(TrainConfig, "FrozenTrain", module=_MODULE)


def machine() -> dict[str, Any]:
  return {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "jax_devices": [str(d) for d in jax.devices()], "loadavg": list(os.getloadavg())}


def _data_setup(data: FrozenData) -> dict[str, Any]:
  return {k: getattr(data, k) for k in ("name", "beir_dir", "cache_dir", "train_split",
                                        "test_split", "max_query_tokens", "doc_length",
                                        "negatives_depth", "dev_fraction", "split_seed")}


def _pruning_mode(mode: str, num_neighbors: int, depth: int,
                  backend: str = "exact") -> dict[str, Any]:
  if mode == "rerank":
    return {"mode": f"re-ranking BM25's top {depth}, scoring only the kept tokens"}
  refined = "all tokens (ALIGNER §3.2)" if mode == "index" else "the kept tokens only"
  return {"mode": f"{backend} token index, refinement with {refined}",
          "num_neighbors": num_neighbors, "backend": backend}


def _write(claim: str, output_json: str, results: Mapping[str, Any], setup: Mapping[str, Any],
           started: float, load_before: Sequence[float]) -> dict[str, Any]:
  out = pathlib.Path(output_json)
  created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  content = {"claim": claim, "created": created, "setup": dict(setup), "results": dict(results),
             "paper": paper_numbers(claim),
             "machine": {**machine(), "loadavg_before": list(load_before)},
             "wall_seconds": time.time() - started}
  write_json(out, content)
  md = out.with_suffix(".md")
  atomic_write(md, r2_r5_tables.table(content))
  print(f"wrote {out} and {md}", flush=True)
  return content


def _pruning_setup(data: FrozenData, head: HeadConfig, train: TrainConfig,
                   seeds: Sequence[int], gates: Sequence[str], mode: str, num_neighbors: int,
                   depth: int, backend: str) -> dict[str, Any]:
  """The settings R2 and R3 record beside their results."""
  return _plain({"data": _data_setup(data), "head": head, "train": train, "seeds": list(seeds),
                 "gates": list(gates), **_pruning_mode(mode, num_neighbors, depth, backend),
                 "alignment": "top_k:1 with saliences"})


@gin.configurable(module=_MODULE)
def repro_r2_pruning(*, data: FrozenData, head: HeadConfig, train: TrainConfig,
                     seeds: Sequence[int], doc_ratios: Sequence[float],
                     query_ratios: Sequence[float], num_neighbors: int, output_json: str,
                     figure: str, gates: Sequence[str] = ("lp",), mode: str = "rerank",
                     depth: int = 100, backend: str = "exact") -> dict[str, Any]:
  """R2: nDCG@10 of the ALIGNER head through the pruned token index -> JSON + pruning curve."""
  started, load = time.time(), os.getloadavg()
  results = experiments.run_pruning(data, head=head, config=train, gates=gates, seeds=seeds,
                                    doc_ratios=doc_ratios, query_ratios=query_ratios,
                                    num_neighbors=num_neighbors, mode=mode, depth=depth,
                                    backend=backend)
  r2_r5_figures.plot_pruning(results, figure, gate=gates[0], title=(
      f"{data.name} {data.test_split}: frozen MiniLM + ALIGNER head ({mode})"))
  setup = _pruning_setup(data, head, train, seeds, gates, mode, num_neighbors, depth, backend)
  return _write("r2", output_json, results, setup, started, load)


@gin.configurable(module=_MODULE)
def repro_r3_gates(*, data: FrozenData, head: HeadConfig, train: TrainConfig,
                   seeds: Sequence[int], doc_ratios: Sequence[float], query_ratio: float,
                   num_neighbors: int, output_json: str, figure: str,
                   gates: Sequence[str] = ("lp", "relu", "hard_topk"), mode: str = "rerank",
                   depth: int = 100, backend: str = "exact") -> dict[str, Any]:
  """R3: the same pruning evaluation for each salience gate -> JSON + one curve per gate."""
  started, load = time.time(), os.getloadavg()
  results = experiments.run_pruning(data, head=head, config=train, gates=gates, seeds=seeds,
                                    doc_ratios=doc_ratios, query_ratios=(query_ratio,),
                                    num_neighbors=num_neighbors, mode=mode, depth=depth,
                                    backend=backend)
  r2_r5_figures.plot_gates(results, figure, query_ratio=query_ratio, title=(
      f"{data.name} {data.test_split}: salience gates, β^q = {100 * query_ratio:g}%"))
  setup = _pruning_setup(data, head, train, seeds, gates, mode, num_neighbors, depth, backend)
  return _write("r3", output_json, results, setup, started, load)


@gin.configurable(module=_MODULE)
def repro_r4_rerank(*, data: FrozenData, models: Mapping[str, HeadConfig],
                    temperatures: Mapping[str, float], train: TrainConfig,
                    seeds: Sequence[int], output_json: str, figure: str, depth: int = 100,
                    transfer: Sequence[FrozenData] = (),
                    sweep: Mapping[str, Sequence[Any]] | None = None,
                    encoder: str = "frozen MiniLM") -> dict[str, Any]:
  """R4: heads trained alike (the same `sweep` of settings, each chosen on dev) re-rank BM25's
  top `depth` -> JSON + bar chart; `encoder` says whose cached vectors they read."""
  started, load = time.time(), os.getloadavg()
  sweep = {k: list(v) for k, v in (sweep or {}).items()}
  results = experiments.run_rerank(data, models=models, temperatures=temperatures,
                                   config=train, seeds=seeds, depth=depth, transfer=transfer,
                                   sweep=sweep)
  r2_r5_figures.plot_rerank(results, figure, dataset=data.name, title=(
      f"{data.name} {data.test_split}: re-ranking BM25 top {depth}, {encoder}"))
  setup = {"data": _data_setup(data), "encoder": encoder, "train": train, "seeds": list(seeds),
           "depth": depth,
           "sweep": sweep, "selection": "dev nDCG@10 (held-out training queries), first seed",
           "objective": "softmax CE over each query's positive + BM25 negatives",
           "transfer": [_data_setup(t) for t in transfer]}
  return _write("r4", output_json, results, _plain(setup), started, load)


@gin.configurable(module=_MODULE)
def repro_r5_distill(*, data: FrozenData, teacher_name: str, teacher: HeadConfig,
                     teacher_train: TrainConfig, student: HeadConfig, train: TrainConfig,
                     objectives: Mapping[str, Any], seeds: Sequence[int], output_json: str,
                     figure: str, num_candidates: int = 20, depth: int = 100,
                     sweep: Mapping[str, Sequence[Any]] | None = None,
                     teacher_sweep: Mapping[str, Sequence[Any]] | None = None,
                     protocol: str = "shared", pool_depth: int = 100) -> dict[str, Any]:
  """R5: dual-encoder students per distillation loss (settings over `sweep` chosen on dev;
  the teacher's over `teacher_sweep`, R4's) -> JSON + bar chart. `protocol`: the candidates
  each loss trains on (`distill_protocols`)."""
  started, load = time.time(), os.getloadavg()
  objectives = {k: (v[0], dict(v[1]) if len(v) > 1 else {}) for k, v in objectives.items()}
  sweep = {k: list(v) for k, v in (sweep or {}).items()}
  teacher_sweep = {k: list(v) for k, v in (teacher_sweep or {}).items()}
  results = experiments.run_distillation(
      data, teacher_name=teacher_name, teacher=teacher, teacher_config=teacher_train,
      student=student, config=train, objectives=objectives, seeds=seeds,
      num_candidates=num_candidates, depth=depth, sweep=sweep, teacher_sweep=teacher_sweep,
      protocol=protocol, pool_depth=pool_depth)
  r2_r5_figures.plot_distillation(results, figure, dataset=data.name, title=(
      f"{data.name} {data.test_split}: DE students re-ranking BM25 top {depth} "
      f"({protocol} candidates)"))
  setup = {"data": _data_setup(data), "teacher_train": teacher_train, "student": student,
           "train": train, "seeds": list(seeds), "num_candidates": num_candidates,
           "depth": depth, "objectives": objectives, "sweep": sweep, "protocol": protocol,
           "pool_depth": pool_depth if protocol == "paper" else None,
           "teacher_sweep": teacher_sweep,
           "selection": "dev nDCG@10 (held-out training queries), first seed"}
  return _write("r5", output_json, results, _plain(setup), started, load)


def _plain(value: Any) -> Any:
  """Dataclasses and tuples as JSON values."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return _plain(dataclasses.asdict(value))
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value
