"""Evaluation on a BEIR split, one evaluator per retrieval mode.

  TokenIndexEvaluator  ALIGNER's token index ("scann" / "exact") with refinement by every
                       alignment asked for, and optionally few-shot adaptation (ALIGNER §4.1)
  DenseEvaluator       pooled query and document vectors ("dense")
  BM25Evaluator        the lexical baseline ("bm25")
  RerankEvaluator      BM25's top documents re-ranked by each alignment or by the model's
                       LITE / KNRM head

An evaluator is built from settings only and checks them all in its constructor and in
`check(inputs)` — before any file is read or vector encoded — then `run(data, top_n=…)` returns
an `Evaluation` (the runs, first one primary, with timings and set-up). `evaluate_beir` is the
whole job: check, load the split, run, and write through the one writer
(`aligner_jax.eval.results`), then the optional adaptation files and `report.html`.
"""

import dataclasses
import pathlib
import time
from typing import Any, Protocol, Sequence

from aligner_jax.eval import adaptation as adaptation_lib
from aligner_jax.eval import ir_metrics
from aligner_jax.eval import pruning_curve as pruning_curve_lib
from aligner_jax.eval import results as results_lib
from aligner_jax.eval.inputs import EvalInputs
from aligner_jax.eval.inputs import Log
from aligner_jax.eval.inputs import SplitData
from aligner_jax.eval.inputs import obtain_index
from aligner_jax.eval.inputs import print_log
from aligner_jax.index import IndexConfig
from aligner_jax.index import TokenIndex
from aligner_jax.index import index_exists
from aligner_jax.index import load_index
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import Candidates
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

RETRIEVERS = ("scann", "exact", "dense", "bm25")
RERANK_WITH = ("alignment", "lite")


@dataclasses.dataclass
class Evaluation:
  """What an evaluator produced on one split.

  Attributes:
    runs: run name (an alignment spec, "dense", "bm25" or "lite") -> run; the first is primary.
    timings: seconds per stage.
    setup: what metrics.json records about how the runs were made.
    adaptation: few-shot adaptation reports (token index only).
    index, queries: the token index and encoded queries, for the report's pictures.
    pruning: `pruning_curve.pruning_curve`'s result, when asked for (token index only).
  """
  runs: dict[str, Run]
  timings: dict[str, float] = dataclasses.field(default_factory=dict)
  setup: dict[str, Any] = dataclasses.field(default_factory=dict)
  adaptation: list[dict[str, Any]] = dataclasses.field(default_factory=list)
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

  def __post_init__(self):
    if self.backend not in ("scann", "exact"):
      raise ValueError(f"the token index backend is 'scann' or 'exact', got {self.backend!r}")
    self.alignments = _parse_alignments(self.alignments)
    self.index_config = dataclasses.replace(self.index_config, backend=self.backend)

  @property
  def name(self) -> str:
    return self.backend

  def check(self, inputs: EvalInputs) -> None:
    _needs_model(inputs, f"retriever {self.backend!r}")

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    timings: dict[str, float] = {}
    index = obtain_index(self.index_dir, self.index_config, rebuild=self.rebuild_index,
                         log=data.log,
                         corpus_fn=lambda: data.corpus_store(self.index_config.vector_dtype))
    queries = data.queries()
    t = time.time()
    cands = candidate_documents(index, queries, num_neighbors=self.num_neighbors,
                                prune_query_ratio=self.prune_query_ratio)
    timings["candidates_s"] = time.time() - t
    sizes = cands.sizes()
    data.log(f"candidates: K′ = {cands.num_neighbors}, β^q = {self.prune_query_ratio}, mean "
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
    setup = dict(num_neighbors=cands.num_neighbors, prune_query_ratio=self.prune_query_ratio,
                 index=index.config.to_json(), candidates_mean=float(sizes.mean()),
                 candidates_max=int(sizes.max()))
    reports = []
    if self.adaptation:
      reports.extend(run_adaptation(index, queries, cands, data, top_n=top_n, refined=refined))
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
          ignore_identical_ids=data.inputs.ignore_identical_ids, log=data.log)
      timings["pruning_curve_s"] = time.time() - t
    return Evaluation(runs, timings, setup, reports, index, queries, curve)


@dataclasses.dataclass
class DenseEvaluator:
  """Pooled vectors, exact inner-product search; the pooled document vectors come from the
  token index in `index_dir` when there is one (no second encoding)."""
  index_dir: str | None = None
  rebuild_index: bool = False
  name: str = dataclasses.field(default="dense", init=False)

  def check(self, inputs: EvalInputs) -> None:
    _needs_model(inputs, "the dense retriever")

  def run(self, data: SplitData, *, top_n: int) -> Evaluation:
    if self.index_dir and index_exists(self.index_dir) and not self.rebuild_index:
      index = load_index(self.index_dir)
      doc_ids, pooled = index.doc_ids, index.pooled()
      data.log(f"pooled document vectors from the index in {self.index_dir}")
    else:
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
                   pruning_curve: Sequence[float] = ()) -> Evaluator:
  """The evaluator the flat gin settings of `gin/runs/eval_beir.gin` describe: `rerank_depth`
  > 0 re-ranks BM25's top documents (whatever RETRIEVER says), otherwise RETRIEVER decides."""
  if retriever not in RETRIEVERS:
    raise ValueError(f"RETRIEVER must be one of {RETRIEVERS}, got {retriever!r}")
  if adaptation and (rerank_depth or retriever not in ("scann", "exact")):
    raise ValueError("few-shot adaptation needs the token index (RETRIEVER 'scann' or 'exact', "
                     "RERANK_DEPTH 0): it re-refines the index's candidates")
  if pruning_curve and (rerank_depth or retriever not in ("scann", "exact")):
    raise ValueError("a pruning curve (PRUNING_CURVE) needs the token index (RETRIEVER 'scann' "
                     "or 'exact', RERANK_DEPTH 0): it rebuilds the index at each β^d")
  if rerank_depth:
    return RerankEvaluator(rerank_depth, rerank_with, alignments)
  if retriever == "bm25":
    return BM25Evaluator()
  if retriever == "dense":
    return DenseEvaluator(index_dir, rebuild_index)
  return TokenIndexEvaluator(retriever, alignments, index_dir, index_config or IndexConfig(),
                             rebuild_index, num_neighbors, prune_query_ratio, adaptation,
                             tuple(pruning_curve))


def run_adaptation(index: TokenIndex, queries: QueryBatch, cands: Candidates, data: SplitData,
                   *, top_n: int = 1000, strategies: Sequence[str] = adaptation_lib.STRATEGIES,
                   seed: int = 0, refined: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """ALIGNER §4.1 few-shot adaptation over the fixed candidate sets `cands`; `refined` holds
  results of `refine_many` already computed on them (strategies missing there are refined
  here, all in one pass). One report for all judged queries, then one per query family."""
  qrels = data.collection.qrels[data.inputs.split]
  refined = dict(refined or {})
  missing = [s for s in strategies if s not in refined]
  if missing:
    refined.update(refine_many(index, queries, cands, missing, top_n=top_n, progress=data.log))

  def per_query(spec: str) -> dict[str, float]:
    run = to_run(queries.ids, index.doc_ids, refined[spec])
    _, pq = ir_metrics.evaluate(qrels, run, metrics=("ndcg@10",),
                                ignore_identical_ids=data.inputs.ignore_identical_ids)
    return {q: v["ndcg@10"] for q, v in pq.items()}

  ids = [q for q in queries.ids if q in qrels]
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


def _check_passages(evaluator: Evaluator, inputs: EvalInputs, num_pictures: int) -> None:
  """Passages are scored back per document in the runs only: what reads the passage store
  against document judgements (re-ranking BM25's documents, adaptation, the pruning curve,
  pictures) is refused."""
  if inputs.passages is None:
    return
  if (isinstance(evaluator, (RerankEvaluator, BM25Evaluator)) or num_pictures
      or getattr(evaluator, "adaptation", False) or getattr(evaluator, "pruning_curve", None)):
    raise ValueError("passages (PASSAGE_OVERLAP) work with RETRIEVER 'scann', 'exact' or "
                     "'dense' without RERANK_DEPTH, ADAPTATION, PRUNING_CURVE or NUM_PICTURES")


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
    raise ValueError("alignment pictures (NUM_PICTURES > 0) need the token index "
                     "(RETRIEVER 'scann' or 'exact')")
  evaluator.check(inputs)
  _check_passages(evaluator, inputs, num_pictures)
  t0 = time.time()
  data = SplitData.load(inputs, log)
  evaluation = evaluator.run(data, top_n=top_n)
  if inputs.passages is not None:  # passage runs -> runs per document
    evaluation.runs = {name: document_run(run, inputs.passages.scoring)
                       for name, run in evaluation.runs.items()}
    evaluation.setup["passages"] = dataclasses.asdict(inputs.passages)
  evaluation.timings["total_s"] = time.time() - t0
  out = pathlib.Path(output_dir)
  result = results_lib.write_results(out, data.collection, inputs.split, evaluation.runs,
                                     timings=evaluation.timings,
                                     setup={"retriever": evaluator.name, **evaluation.setup},
                                     ignore_identical_ids=inputs.ignore_identical_ids,
                                     run_name=run_name, log=log)
  if evaluation.adaptation:
    table = adaptation_lib.write_adaptation(out, evaluation.adaptation)
    log("few-shot alignment adaptation (nDCG@10 x 100):\n" + table)
  if evaluation.pruning:
    pruning_curve_lib.write_pruning_curve(out, evaluation.pruning)
  if num_pictures:
    from aligner_jax.eval import report  # pylint: disable=g-import-not-at-top  (matplotlib)
    primary = next(iter(evaluation.runs))
    report.write_report(out, data.collection, inputs.split, evaluation.runs[primary],
                        evaluation.index, evaluation.queries, inputs.model, alignment=primary,
                        num_pictures=num_pictures, metrics=result,
                        adaptation_reports=evaluation.adaptation, pruning=evaluation.pruning)
  return result
