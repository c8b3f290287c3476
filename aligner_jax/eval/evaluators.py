"""Evaluation on a BEIR split, one evaluator per retrieval mode.

  TokenIndexEvaluator  ALIGNER's token index ("scann" / "exact") with refinement by every
                       alignment asked for, and optionally few-shot adaptation (ALIGNER §4.1)
  DenseEvaluator       pooled query and document vectors ("dense")
  BM25Evaluator        the lexical baseline ("bm25")
  RerankEvaluator      BM25's top documents re-ranked by each alignment or by the model's
                       LITE / KNRM head

An evaluator is built from settings only and checks them all in its constructor and in
`check(inputs)` — before any file is read or vector encoded — then `run(data, top_n=…)` returns
an `Evaluation` (the runs, first one primary, with timings and set-up) of the judged queries
`data.query_ids`. `evaluate_beir` is the whole job: check, load the split, run, and write
through the one writer (`aligner_jax.eval.results`), then the optional adaptation files and
`report.html`.

With several processes (`jax.process_count()` > 1) each process runs the evaluator on its own
slice of the judged queries (`multihost`), process 0 gathers the runs and alone writes the
files; every process logs how many queries it retrieved and process 0 how many it gathered
from each. The token index is then built once, by process 0 (`inputs.obtain_index`), and the
corpus vectors of the dense and re-ranking paths must come from files (INDEX_DIR or
ENCODED_DIR) rather than be encoded again by every process; BM25's in-memory index of the
corpus (seconds for a BEIR corpus) is built by each process that retrieves with it. Pictures
and the pruning curve need one process.
"""

import dataclasses
import pathlib
import time
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics
from aligner_jax.eval import multihost
from aligner_jax.eval import pruning_curve as pruning_curve_lib
from aligner_jax.eval import results as results_lib
from aligner_jax.eval.encoder_record import EncoderRecord
from aligner_jax.eval.encoder_record import check_same_encoder
from aligner_jax.eval.inputs import EvalInputs
from aligner_jax.eval.inputs import Log
from aligner_jax.eval.inputs import SplitData
from aligner_jax.eval.inputs import obtain_index
from aligner_jax.eval.inputs import print_log
from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenIndex
from aligner_jax.index import index_exists
from aligner_jax.index import load_index
from aligner_jax.index.token_index import read_encoder
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import alignment_pair_fn
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import dense_search
from aligner_jax.retrieval import rerank
from aligner_jax.retrieval import to_run
from aligner_jax.retrieval import token_scorer
from aligner_jax.retrieval.passages import document_run
from aligner_jax.retrieval.runs import Run
from aligner_jax.retrieval.token_retrieval import refine_many
from aligner_jax.scoring import Alignment

TOKEN_INDEX_RETRIEVERS = ("scann", "ivf", "exact")
RETRIEVERS = TOKEN_INDEX_RETRIEVERS + ("dense", "bm25")
_TOKEN_INDEX_NAMES = "RETRIEVER 'scann', 'ivf' or 'exact'"
RERANK_WITH = ("alignment", "lite")


@dataclasses.dataclass
class Evaluation:
  """What an evaluator produced on one split.

  Attributes:
    runs: run name (an alignment spec, "dense", "bm25" or "lite") -> run; the first is primary.
    timings: seconds per stage.
    setup: what metrics.json records about how the runs were made.
    strategy_runs: few-shot adaptation: the run of every strategy (token index only).
    candidates: number of candidate documents of each query (token index only).
    index, queries: the token index and encoded queries, for the report's pictures.
    pruning: `pruning_curve.pruning_curve`'s result, when asked for (token index only).
  """
  runs: dict[str, Run]
  timings: dict[str, float] = dataclasses.field(default_factory=dict)
  setup: dict[str, Any] = dataclasses.field(default_factory=dict)
  strategy_runs: dict[str, Run] = dataclasses.field(default_factory=dict)
  candidates: dict[str, int] = dataclasses.field(default_factory=dict)
  index: TokenIndex | None = None
  queries: QueryBatch | None = None
  pruning: dict[str, Any] | None = None


class Evaluator(Protocol):
  name: str  # the RETRIEVER it answers to, recorded in metrics.json

  def check(self, inputs: EvalInputs) -> None:
    """Raises ValueError when `inputs` cannot serve this evaluator; reads no file."""

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    """Retrieves the top `top_n` documents of every judged query."""


def _parse_alignments(alignments: Sequence[str]) -> list[str]:
  specs = [str(Alignment.parse(a)) for a in alignments]
  if not specs:
    raise ValueError("give at least one alignment")
  return specs


def _needs_model(inputs: EvalInputs, what: str) -> None:
  if inputs.model is None:
    raise ValueError(f"{what} needs a model (MODEL_DIR or CHECKPOINT_PATH) to encode with")


def _one_process(what: str) -> None:
  if jax.process_count() > 1:
    raise ValueError(f"{what} needs one process (this run has {jax.process_count()})")


@dataclasses.dataclass
class TokenIndexEvaluator:
  """ALIGNER §2–3: token search for candidates, then refinement with each alignment."""
  backend: str = "scann"
  alignments: Sequence[str] = ("top_k:1",)
  index_dir: str | None = None
  index_config: IndexConfig = dataclasses.field(default_factory=IndexConfig)
  rebuild_index: bool = False
  num_neighbors: int = 4000
  prune_query_ratio: float = 1.0
  adaptation: bool = False
  pruning_curve: Sequence[float] = ()
  verify_index: bool = False
  num_refine: int | None = None
  leaves_to_search: int | None = None

  def __post_init__(self):
    if self.backend not in TOKEN_INDEX_RETRIEVERS:
      raise ValueError(f"the token index backend is one of {TOKEN_INDEX_RETRIEVERS}, got "
                       f"{self.backend!r}")
    if self.num_refine is not None and self.num_refine < 0:
      raise ValueError(f"NUM_REFINE must be positive (0 or None: refine every candidate), got "
                       f"{self.num_refine}")
    if self.leaves_to_search is not None and (self.backend == "exact" or
                                              self.leaves_to_search < 1):
      raise ValueError(f"LEAVES_TO_SEARCH = {self.leaves_to_search} needs the 'scann' or 'ivf' "
                       "backend and a positive number (None: the index's own setting)")
    self.alignments = _parse_alignments(self.alignments)
    self.index_config = dataclasses.replace(self.index_config, backend=self.backend)

  @property
  def name(self) -> str:
    return self.backend

  def search_options(self) -> dict[str, Any]:
    """The backend's search effort overrides (ScaNN leaves or IVF cells searched per query
    token)."""
    if self.leaves_to_search is None:
      return {}
    return {"leaves_to_search": self.leaves_to_search}

  def encoder_record(self, inputs: EvalInputs) -> dict[str, Any] | None:
    """The model's encoder record with this evaluation's alignment and first-stage settings
    as the index's search defaults (None when the model has no record)."""
    record = getattr(inputs.model, "record", None)
    if record is None:
      return None
    search = dict(num_neighbors=self.num_neighbors, num_refine=self.num_refine,
                  leaves_to_search=self.leaves_to_search,
                  prune_query_ratio=self.prune_query_ratio)
    return record.with_defaults(self.alignments[0], search).to_json()

  def check_index_encoder(self, inputs: EvalInputs) -> None:
    """An index in INDEX_DIR that records its encoder must have been built by this model
    (`encoder_record.EncoderMismatchError` otherwise): its documents and these queries are
    compared in one vector space."""
    record = getattr(inputs.model, "record", None)
    found = read_encoder(self.index_dir) if self.index_dir and record is not None else None
    if found is not None:
      check_same_encoder(EncoderRecord.from_json(found, self.index_dir), record,
                         index=self.index_dir, model="this evaluation's model")

  def check(self, inputs: EvalInputs) -> None:
    _needs_model(inputs, f"retriever {self.backend!r}")
    if jax.process_count() > 1 and not self.index_dir:
      raise ValueError("with several processes, INDEX_DIR must be set: process 0 builds the "
                       "index once and the other processes load it from there")
    if self.pruning_curve:
      _one_process("a pruning curve (PRUNING_CURVE)")

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    timings: dict[str, float] = {}
    index = obtain_index(self.index_dir, self.index_config, rebuild=self.rebuild_index,
                         log=data.log, verify=self.verify_index,
                         corpus_fn=lambda: data.corpus_store(self.index_config.vector_dtype),
                         encoder=self.encoder_record(data.inputs))
    self.check_index_encoder(data.inputs)
    queries = data.queries()
    t = time.time()
    cands = candidate_documents(index, queries, num_neighbors=self.num_neighbors,
                                prune_query_ratio=self.prune_query_ratio,
                                num_refine=self.num_refine, **self.search_options())
    timings["candidates_s"] = time.time() - t
    sizes = cands.sizes()
    data.log(f"candidates: K′ = {cands.num_neighbors}, β^q = {self.prune_query_ratio}, "
             f"R = {cands.num_refine or 'all'}, mean "
             f"{sizes.mean():.0f} / max {sizes.max()} documents per query "
             f"({timings['candidates_s']:.1f}s)")
    # One refinement pass scores the candidates under every alignment asked for and, with
    # adaptation, under every strategy it chooses from.
    specs = list(dict.fromkeys(self.alignments + (list(adaptation_lib.STRATEGIES)
                                                  if self.adaptation else [])))
    t = time.time()
    refined = refine_many(index, queries, cands, specs, top_n=top_n, progress=data.log)
    timings["refine_s"] = time.time() - t
    data.log(f"refined {len(queries)} queries with {len(specs)} alignments in "
             f"{timings['refine_s']:.1f}s")
    runs = {spec: to_run(queries.ids, index.doc_ids, refined[spec]) for spec in self.alignments}
    strategy_runs = ({spec: to_run(queries.ids, index.doc_ids, refined[spec])
                      for spec in adaptation_lib.STRATEGIES} if self.adaptation else {})
    setup = dict(num_neighbors=cands.num_neighbors, prune_query_ratio=self.prune_query_ratio,
                 num_refine=cands.num_refine, leaves_to_search=self.leaves_to_search,
                 index=index.config.to_json(), candidates_mean=float(sizes.mean()),
                 candidates_max=int(sizes.max()))
    curve = None
    if self.pruning_curve:
      t = time.time()
      primary = self.alignments[0]
      curve = pruning_curve_lib.pruning_curve(
          self.pruning_curve, lambda: data.corpus_store(self.index_config.vector_dtype),
          queries, data.collection.qrels[data.inputs.split],
          results_lib.query_families(data.collection), alignment=primary,
          index_config=index.config, num_neighbors=self.num_neighbors,
          prune_query_ratio=self.prune_query_ratio, top_n=top_n,
          known={index.config.prune_doc_ratio: (runs[primary], index.num_ann_tokens)},
          ignore_identical_ids=data.inputs.ignore_identical_ids, log=data.log,
          candidate_options=dict(num_refine=self.num_refine, **self.search_options()))
      timings["pruning_curve_s"] = time.time() - t
    candidates = {q: int(n) for q, n in zip(queries.ids, sizes)}
    return Evaluation(runs, timings, setup, strategy_runs, candidates, index, queries, curve)


@dataclasses.dataclass
class DenseEvaluator:
  """Pooled vectors, exact inner-product search; the pooled document vectors come from the
  token index in `index_dir` when there is one (no second encoding)."""
  index_dir: str | None = None
  rebuild_index: bool = False
  verify_index: bool = False
  name: str = dataclasses.field(default="dense", init=False)

  def check(self, inputs: EvalInputs) -> None:
    _needs_model(inputs, "the dense retriever")
    if jax.process_count() > 1 and not (self.index_dir or inputs.encoded_dir):
      raise ValueError("with several processes, the dense retriever reads the pooled document "
                       "vectors from INDEX_DIR or ENCODED_DIR (every process encoding the "
                       "corpus would repeat the work)")

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    if self.index_dir and index_exists(self.index_dir) and not self.rebuild_index:
      index = load_index(self.index_dir,
                         verify=self.verify_index and jax.process_index() == 0)
      doc_ids, pooled = index.doc_ids, index.pooled()
      if pooled is not None and index.deleted.any():  # a changed index: live documents only
        live = np.flatnonzero(index.live)
        doc_ids, pooled = [doc_ids[i] for i in live], pooled[live]
      data.log(f"pooled document vectors from the index in {self.index_dir}")
    else:
      if jax.process_count() > 1 and not data.inputs.encoded_dir:
        raise ValueError(f"{self.index_dir}: no index to read pooled vectors from, and no "
                         "ENCODED_DIR: with several processes the corpus is not encoded by "
                         "every process")
      store = data.corpus_store()
      doc_ids, pooled = store.doc_ids, store.pooled
    if pooled is None:
      raise ValueError("the dense path needs pooled document vectors, and these have none")
    queries = data.queries()
    if queries.pooled is None:
      raise ValueError("the dense path needs pooled query vectors, and these have none")
    t = time.time()
    results = dense_search(pooled, queries.pooled, top_n)
    timings = {"search_s": time.time() - t}
    return Evaluation({"dense": to_run(queries.ids, doc_ids, results)}, timings)


def bm25_run(data: SplitData, depth: int) -> tuple[Run, float]:
  """BM25's top `depth` documents per judged query, and the seconds it took."""
  t = time.time()
  corpus = data.collection.corpus
  bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
  run = to_run(data.query_ids, corpus.ids, bm25.search(data.query_texts(), depth))
  return run, time.time() - t


@dataclasses.dataclass
class BM25Evaluator:
  name: str = dataclasses.field(default="bm25", init=False)

  def check(self, inputs: EvalInputs) -> None:
    del inputs  # BM25 reads text only

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    run, seconds = bm25_run(data, top_n)
    return Evaluation({"bm25": run}, {"bm25_s": seconds})


@dataclasses.dataclass
class RerankEvaluator:
  """BM25's top `depth` documents, re-scored by each alignment over all their tokens
  (`rerank_with="alignment"`) or by the model's LITE / KNRM head (`"lite"`)."""
  depth: int = 100
  rerank_with: str = "alignment"
  alignments: Sequence[str] = ("top_k:1",)
  name: str = dataclasses.field(default="bm25", init=False)

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"the re-ranking depth must be positive, got {self.depth}")
    if self.rerank_with not in RERANK_WITH:
      raise ValueError(f"RERANK_WITH must be one of {RERANK_WITH}, got {self.rerank_with!r}")
    self.alignments = _parse_alignments(self.alignments)

  def check(self, inputs: EvalInputs) -> None:
    _needs_model(inputs, f"re-ranking (depth {self.depth})")
    if jax.process_count() > 1 and not inputs.encoded_dir:
      raise ValueError("with several processes, re-ranking reads the corpus vectors from "
                       "ENCODED_DIR (every process encoding the corpus would repeat the work)")
    if self.rerank_with == "lite" and inputs.model.lite is None:
      raise ValueError("RERANK_WITH='lite' needs a model with a LITE / KNRM head "
                       "(DualEncoder.lite_scorer)")

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    first, bm25_s = bm25_run(data, max(top_n, self.depth))
    store, queries = data.corpus_store(), data.queries()
    t = time.time()
    model = data.inputs.model
    if self.rerank_with == "lite":
      q_len, d_len = model.lite_lengths
      scorers = {"lite": token_scorer(queries, store, model.lite, query_length=q_len,
                                      doc_length=d_len)}
    else:
      scorers = {spec: token_scorer(queries, store, alignment_pair_fn(spec))
                 for spec in self.alignments}
    runs = {name: rerank(first, scorer, depth=self.depth) for name, scorer in scorers.items()}
    timings = {"bm25_s": bm25_s, "rerank_s": time.time() - t}
    setup = dict(first_stage="bm25", rerank_depth=self.depth, rerank_with=self.rerank_with)
    return Evaluation(runs, timings, setup)


def make_evaluator(retriever: str, *, alignments: Sequence[str] = ("top_k:1",),
                   rerank_depth: int = 0, rerank_with: str = "alignment",
                   index_dir: str | None = None, index_config: IndexConfig | None = None,
                   rebuild_index: bool = False, num_neighbors: int = 4000,
                   prune_query_ratio: float = 1.0, adaptation: bool = False,
                   pruning_curve: Sequence[float] = (), verify_index: bool = False,
                   num_refine: int | None = None,
                   leaves_to_search: int | None = None) -> Evaluator:
  """The evaluator the flat gin settings of `gin/runs/eval_beir.gin` describe: `rerank_depth`
  > 0 re-ranks BM25's top documents (whatever RETRIEVER says), otherwise RETRIEVER decides.
  `verify_index`: compare the SHA-256 of every file of an existing index with its manifests
  before using it (otherwise sizes, counts and array headers only)."""
  if retriever not in RETRIEVERS:
    raise ValueError(f"RETRIEVER must be one of {RETRIEVERS}, got {retriever!r}")
  if adaptation and (rerank_depth or retriever not in TOKEN_INDEX_RETRIEVERS):
    raise ValueError(f"few-shot adaptation needs the token index ({_TOKEN_INDEX_NAMES}, "
                     "RERANK_DEPTH 0): it re-refines the index's candidates")
  if pruning_curve and (rerank_depth or retriever not in TOKEN_INDEX_RETRIEVERS):
    raise ValueError(f"a pruning curve (PRUNING_CURVE) needs the token index "
                     f"({_TOKEN_INDEX_NAMES}, RERANK_DEPTH 0): it rebuilds the index at each β^d")
  if rerank_depth:
    return RerankEvaluator(rerank_depth, rerank_with, alignments)
  if retriever == "bm25":
    return BM25Evaluator()
  if retriever == "dense":
    return DenseEvaluator(index_dir, rebuild_index, verify_index)
  return TokenIndexEvaluator(retriever, alignments, index_dir, index_config or IndexConfig(),
                             rebuild_index, num_neighbors, prune_query_ratio, adaptation,
                             tuple(pruning_curve), verify_index, num_refine, leaves_to_search)


def adaptation_reports(strategy_runs: dict[str, Run], data: SplitData, *,
                       strategies: Sequence[str] = adaptation_lib.STRATEGIES,
                       seed: int = 0) -> list[dict[str, Any]]:
  """ALIGNER §4.1 few-shot adaptation from each strategy's run over the same candidates: one
  report for all judged queries (in the split's order), then one per query family."""
  qrels = data.collection.qrels[data.inputs.split]

  def per_query(spec: str) -> dict[str, float]:
    _, pq = ir_metrics.evaluate(qrels, strategy_runs[spec], metrics=("ndcg@10",),
                                ignore_identical_ids=data.inputs.ignore_identical_ids)
    return {q: v["ndcg@10"] for q, v in pq.items()}

  ids = [q for q in data.judged_ids if q in qrels]
  ndcg = adaptation_lib.score_strategies(per_query, ids, strategies, progress=data.log)
  dataset = f"{data.collection.name}/{data.inputs.split}"
  reports = [adaptation_lib.adaptation_report(ndcg, ids, strategies, seed=seed, dataset=dataset)]
  # Each query family (the demo's factoid / broad) adapts on its own: the task decides.
  family = results_lib.query_families(data.collection)
  for name in sorted({family[q] for q in ids if family.get(q)}):
    rows = [i for i, q in enumerate(ids) if family.get(q) == name]
    reports.append(adaptation_lib.adaptation_report(
        ndcg[:, rows], [ids[i] for i in rows], strategies, seed=seed,
        dataset=f"{dataset} [{name}]"))
  return reports


def gather(evaluation: Evaluation, data: SplitData, log: Log) -> Evaluation | None:
  """With several processes: every process's runs (and adaptation runs, candidate counts and
  timings) on process 0, None on the others; the evaluation itself with one process."""
  here, count = data.part
  mine, judged = data.query_ids, data.judged_ids
  log(f"process {here}/{count}: retrieved {len(mine)} of {len(judged)} judged queries")
  if count == 1:
    return evaluation
  parts = multihost.gather_json({"runs": evaluation.runs, "strategy_runs":
                                 evaluation.strategy_runs, "candidates": evaluation.candidates,
                                 "timings": evaluation.timings, "queries": len(mine)})
  if here != 0:
    return None
  merge = lambda key, name: {q: v for p in parts for q, v in p[key][name].items()}  # noqa
  runs = {name: merge("runs", name) for name in evaluation.runs}
  strategy_runs = {name: merge("strategy_runs", name) for name in evaluation.strategy_runs}
  candidates = {q: n for p in parts for q, n in p["candidates"].items()}
  counts = [p["queries"] for p in parts]
  log(f"gathered the runs of {sum(counts)} queries from {count} processes: {counts}")
  setup = {**evaluation.setup, "processes": count, "queries_by_process": counts,
           "timings_by_process": [p["timings"] for p in parts]}
  return dataclasses.replace(evaluation, runs=runs, strategy_runs=strategy_runs,
                             candidates=candidates, setup=setup)


def _check_passages(evaluator: Evaluator, inputs: EvalInputs, num_pictures: int) -> None:
  """Passages are scored back per document in the runs only: what reads the passage store
  against document judgements (re-ranking BM25's documents, adaptation, the pruning curve,
  pictures) is refused."""
  if inputs.passages is None:
    return
  if (isinstance(evaluator, (RerankEvaluator, BM25Evaluator)) or num_pictures
      or getattr(evaluator, "adaptation", False) or getattr(evaluator, "pruning_curve", None)):
    raise ValueError(f"passages (PASSAGE_OVERLAP) work with {_TOKEN_INDEX_NAMES} or 'dense' "
                     "without RERANK_DEPTH, ADAPTATION, PRUNING_CURVE or NUM_PICTURES")


def evaluate_beir(evaluator: Evaluator, inputs: EvalInputs, output_dir: str, *,
                  top_n: int = 1000, num_pictures: int = 0, run_name: str = "aligner_jax",
                  log: Log = print_log) -> dict[str, Any]:
  """Runs `evaluator` on `inputs`' split and writes to `output_dir`:

    run.trec          the 6-column TREC run of the primary run (the first alignment)
    run.<spec>.trec   one per further run (the same candidates, refined differently)
    metrics.json      ndcg@10, mrr@10, recall@100, recall@1000, map of the primary run with
                      per-query values, `by_alignment` means, `by_family` when queries have a
                      family, timings and the set-up
    adaptation.json / adaptation.md   few-shot alignment adaptation (when asked)
    report.html (+ pictures/)          tables and alignment pictures (`num_pictures` > 0)

  Returns:
    The content of metrics.json.
  """
  if num_pictures and not isinstance(evaluator, TokenIndexEvaluator):
    raise ValueError(f"alignment pictures (NUM_PICTURES > 0) need the token index "
                     f"({_TOKEN_INDEX_NAMES})")
  if num_pictures:
    _one_process("alignment pictures (NUM_PICTURES > 0)")
  evaluator.check(inputs)
  _check_passages(evaluator, inputs, num_pictures)
  t0 = time.time()
  data = SplitData.load(inputs, log, part=multihost.process())
  evaluation = gather(evaluator.run(data, top_n=top_n), data, log)
  if evaluation is None:  # another process writes
    return {"process": data.part[0], "queries": len(data.query_ids)}
  if inputs.passages is not None:  # passage runs -> runs per document
    evaluation.runs = {name: document_run(run, inputs.passages.scoring)
                       for name, run in evaluation.runs.items()}
    evaluation.setup["passages"] = dataclasses.asdict(inputs.passages)
  evaluation.timings["total_s"] = time.time() - t0
  setup = {"retriever": evaluator.name, **evaluation.setup}
  if evaluation.candidates:
    sizes = np.array([evaluation.candidates[q] for q in data.judged_ids
                      if q in evaluation.candidates])
    setup.update(candidates_mean=float(sizes.mean()), candidates_max=int(sizes.max()))
  out = pathlib.Path(output_dir)
  result = results_lib.write_results(out, data.collection, inputs.split, evaluation.runs,
                                     timings=evaluation.timings, setup=setup,
                                     ignore_identical_ids=inputs.ignore_identical_ids,
                                     run_name=run_name, log=log)
  reports = (adaptation_reports(evaluation.strategy_runs, data) if evaluation.strategy_runs
             else [])
  if reports:
    table = adaptation_lib.write_adaptation(out, reports)
    log("few-shot alignment adaptation (nDCG@10 x 100):\n" + table)
  if evaluation.pruning:
    pruning_curve_lib.write_pruning_curve(out, evaluation.pruning)
  if num_pictures:
    from aligner_jax.eval import report  # pylint: disable=g-import-not-at-top  (matplotlib)
    report.write_report(out, data.collection, inputs.split, evaluation.runs,
                        evaluation.index, evaluation.queries, inputs.model,
                        num_pictures=num_pictures, metrics=result,
                        adaptation_reports=reports, pruning=evaluation.pruning)
  return result
