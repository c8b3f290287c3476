"""The gin job of claim R1 (`gin/experiments/repro_r1_adaptation.gin`). Entry-point code: gin
configures the arguments, the work is done by `repro.r1` and the eval / index / retrieval
libraries. Registered under the gin module `repro`:
  R1Dataset     one dataset of claim R1 (where its token vectors come from, K′, query families)
  repro_r1      run.job: every R1Dataset -> docs/results/r1.{json,md} and the two figures

Token vectors come from an encode job's cache (`R1Dataset.encoded_dir`: corpus shards and
`queries-<split>/`, never encoded again here) or, without one, from the job's `model` (the demo
model: a small corpus, encoded in memory). The token index is loaded from / saved to
`index_dir` (`eval.inputs.obtain_index`). The [strategies, queries] nDCG@10 matrix of a
cached dataset is kept in `work_dir/<name>.scores.json`, keyed by a fingerprint of the encoded
stores' manifests (their SHA-256s) and every setting that changes it, so that a rerun only
redoes what changed; `reuse_scores=False` recomputes everything.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np

from aligner_jax.eval import inputs as eval_inputs
from aligner_jax.eval.retrieval_jobs import model_encoders
from aligner_jax.index import IndexConfig
from aligner_jax.index import files
from aligner_jax.io import write_json
from aligner_jax.retrieval import candidate_documents
from repro import r1 as r1_lib
from repro import r1_figures

_MODULE = "repro"


@dataclasses.dataclass(frozen=True)
class R1Dataset:
  """One dataset of claim R1.

  Attributes:
    name: the name in tables and file names ("scifact").
    beir_dir: a BEIR directory, or "demo" for the built-in demo collection.
    split: the qrels split that is evaluated.
    encoded_dir: the encode job's output for this dataset (corpus-*-of-*/ and
      queries-<split>/), or None to encode with the job's model.
    index_dir: where the token index is loaded from / saved to (None: in memory only).
    num_neighbors: K′ nearest stored tokens per query token.
    family_key: a query metadata field; when set, each of its values is a separate row
      ("demo/factoid", "demo/broad") and the dataset as a whole is not.
    doc_length, query_length: encoder lengths when encoding with the model.
  """
  name: str
  beir_dir: str
  split: str = "test"
  encoded_dir: str | None = None
  index_dir: str | None = None
  num_neighbors: int = 4000
  family_key: str | None = None
  doc_length: int = 256
  query_length: int = 64


def _log(message: str) -> None:
  print(message, flush=True)


# The index settings that change retrieval results; fields added to IndexConfig for other
# formats (e.g. product quantisation) must not invalidate scores kept from before.
_SCORE_INDEX_FIELDS = (
    "backend", "vector_dtype", "prune_doc_ratio", "refine_tokens", "max_shard_tokens",
    "num_leaves", "leaves_to_search", "search_fraction", "scan_factor", "expected_k",
    "dims_per_block", "anisotropic_threshold", "reorder", "reorder_factor",
    "training_sample_size", "training_threads")


def _index_settings(config: IndexConfig) -> dict[str, Any]:
  return {k: v for k, v in config.to_json().items() if k in _SCORE_INDEX_FIELDS}


def _fingerprint(spec: R1Dataset, **settings: Any) -> str:
  """SHA-256 over the encoded stores' manifests (content checksums) and the settings."""
  stores = [*eval_inputs.corpus_shards(spec.encoded_dir),
            pathlib.Path(spec.encoded_dir) / f"queries-{spec.split}"]
  h = hashlib.sha256()
  for store in stores:
    h.update((store / files.MANIFEST).read_bytes())
  fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "index_dir"}
  h.update(json.dumps({"spec": fields, **settings}, sort_keys=True, default=str).encode())
  return h.hexdigest()


def _load_scores(path: pathlib.Path, fingerprint: str) -> tuple[list[str], np.ndarray] | None:
  if not path.is_file():
    return None
  saved = files.read_json(path)
  if saved.get("fingerprint") != fingerprint:
    return None
  return list(saved["query_ids"]), np.asarray(saved["ndcg@10"], np.float64)


def _dataset_scores(spec: R1Dataset, *, model: Callable[[], Any] | None, vocabulary: str | None,
                    index_config: IndexConfig, strategies: Sequence[str], top_n: int,
                    batch_size: int, work_dir: pathlib.Path, reuse_scores: bool,
                    timings: dict[str, float]) -> tuple[Any, list[str], np.ndarray]:
  """(collection, judged query ids [Q], nDCG@10 [S, Q]) of one dataset."""
  collection = eval_inputs.load_split(spec.beir_dir, spec.split)
  qrels = collection.qrels[spec.split]
  cache = fingerprint = None
  if spec.encoded_dir:
    fingerprint = _fingerprint(spec, strategies=list(strategies), top_n=top_n,
                               index=_index_settings(index_config))
    cache = work_dir / f"{spec.name}.scores.json"
    found = _load_scores(cache, fingerprint) if reuse_scores else None
    if found is not None:
      _log(f"{spec.name}: per-query nDCG@10 of every strategy reused from {cache}")
      timings["reused_scores_from"] = str(cache)
      return collection, *found
    corpus_fn = lambda: eval_inputs.load_encoded_corpus(  # noqa: E731
        spec.encoded_dir, collection, doc_length=spec.doc_length,
        log=_log).with_vector_dtype(index_config.vector_dtype)
    t = time.time()
    queries = eval_inputs.load_encoded_queries(
        pathlib.Path(spec.encoded_dir) / f"queries-{spec.split}",
        collection.split_queries(spec.split), query_length=spec.query_length)
    timings["load_queries_s"] = time.time() - t
  else:
    if model is None or vocabulary is None:
      raise ValueError(f"R1 dataset {spec.name!r} has no encoded_dir, so the job needs a model "
                       "and its VOCABULARY to encode it")
    module, params = model()
    encoders = model_encoders(module, params, vocabulary, batch_size=batch_size)
    corpus_fn = lambda: eval_inputs.encode_collection_corpus(  # noqa: E731
        encoders, collection, doc_length=spec.doc_length,
        vector_dtype=index_config.vector_dtype, log=_log)
    t = time.time()
    queries = eval_inputs.encode_split_queries(encoders, collection, spec.split,
                                               query_length=spec.query_length, log=_log)
    timings["encode_queries_s"] = time.time() - t
  t = time.time()
  index = eval_inputs.obtain_index(spec.index_dir, index_config, rebuild=False, log=_log,
                                   corpus_fn=corpus_fn)
  timings["index_s"] = time.time() - t
  t = time.time()
  cands = candidate_documents(index, queries, num_neighbors=spec.num_neighbors)
  timings["candidates_s"] = time.time() - t
  sizes = cands.sizes()
  _log(f"{spec.name}: {len(queries)} queries, K′ = {cands.num_neighbors}, mean "
       f"{sizes.mean():.0f} candidate documents ({timings['candidates_s']:.1f}s)")
  t = time.time()
  ids, ndcg = r1_lib.strategy_ndcg(index, queries, cands, qrels, strategies, top_n=top_n,
                                   log=lambda m: _log(f"{spec.name}: {m}"))
  timings["strategies_s"] = time.time() - t
  if cache is not None:
    write_json(cache, {"fingerprint": fingerprint, "query_ids": ids,
                       "strategies": list(strategies), "ndcg@10": ndcg.tolist()})
  return collection, ids, ndcg


@gin.configurable(module=_MODULE)
def repro_r1(*, datasets: Sequence[R1Dataset], output_json: str, figures_dir: str,
             work_dir: str, model: Callable[[], Any] | None = None,
             vocabulary: str | None = None, retriever: str = "scann",
             index_config: IndexConfig = IndexConfig(), top_n: int = 1000,
             fold_size: int = 8, seed: int = 0, batch_size: int = 32,
             reuse_scores: bool = True, figure_prefix: str = "r1",
             extra_setup: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Claim R1 over `datasets`: writes `output_json` (+ `.md`), `figures_dir/<figure_prefix>_
  heatmap.png` and `_picks.png`. `model` is called only for datasets without encoded_dir;
  `extra_setup` is recorded with the set-up (e.g. how the model was trained)."""
  if not datasets:
    raise ValueError("repro_r1 needs at least one R1Dataset")
  names = [d.name for d in datasets]
  if len(set(names)) != len(names):
    raise ValueError(f"R1 dataset names must be unique, got {names}")
  config = dataclasses.replace(index_config, backend=retriever)
  strategies = list(r1_lib.STRATEGIES)
  reports, timings = [], {}
  t0 = time.time()
  for spec in datasets:
    t = time.time()
    timings[spec.name] = {}
    collection, ids, ndcg = _dataset_scores(
        spec, model=model, vocabulary=vocabulary, index_config=config, strategies=strategies,
        top_n=top_n, batch_size=batch_size, work_dir=pathlib.Path(work_dir),
        reuse_scores=reuse_scores, timings=timings[spec.name])
    if spec.family_key:
      groups = r1_lib.family_positions(collection, ids, key=spec.family_key)
    else:
      groups = {"": np.arange(len(ids))}
    for family, pos in groups.items():
      report = r1_lib.r1_report(ndcg[:, pos], [ids[i] for i in pos], strategies,
                                dataset=f"{spec.name}/{family}" if family else spec.name,
                                fold_size=fold_size, seed=seed)
      reports.append(report)
      _log(f"{report['dataset']}: top-1 {report['ndcg@10']['top_k:1']:.4f}, best fixed "
           f"{report['best_fixed']} {report['ndcg@10'][report['best_fixed']]:.4f}, adapted "
           f"{report['adapted']['mean']:.4f} ± {report['adapted']['std']:.4f}")
    timings[spec.name]["total_s"] = time.time() - t
  setup = {
      "datasets": [dataclasses.asdict(d) for d in datasets], "retriever": retriever,
      "index": config.to_json(), "top_n": top_n, "fold_size": fold_size, "fold_seed": seed,
      "timings": timings, "total_s": time.time() - t0, "load_average": os.getloadavg(),
      "cpu_count": os.cpu_count(), **dict(extra_setup or {}),
  }
  content = r1_lib.write_r1(output_json, reports, setup=setup)
  heatmap = r1_figures.plot_strategy_heatmap(
      reports, pathlib.Path(figures_dir) / f"{figure_prefix}_heatmap.png",
      paper_rows=r1_lib.paper_numbers()["rows"])
  picks = r1_figures.plot_picks(reports, pathlib.Path(figures_dir) / f"{figure_prefix}_picks.png")
  _log(f"wrote {output_json}, {pathlib.Path(output_json).with_suffix('.md')}, {heatmap}, "
       f"{picks}\n" + r1_lib.r1_table(reports))
  return content


gin.external_configurable(R1Dataset, module=_MODULE)
