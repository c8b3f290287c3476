"""The frozen-encoder experiments behind claims R2-R5, as gin-free functions returning plain
JSON-ready dicts (the gin jobs in `r2_r5_jobs.py` write them and their figures).

  run_pruning      R2 / R3: ALIGNER heads (one per salience gate), token-index retrieval on the
                   test split for every (β^d, β^q)
  run_rerank       R4: several heads trained alike, re-ranking BM25's top documents
  run_distillation R5: dual-encoder students distilled from a trained teacher, one per loss
Every trained head is selected on the dev queries (held out from the training split) by
re-ranking BM25's top 100 (nDCG@10): its best evaluated step, and, with a `sweep` of training
settings, its best setting (`select_on_dev`); test numbers are computed once, after training,
for the selected head only.
"""

import dataclasses
import itertools
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.index import pruning
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import from_padded
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import runs as runs_lib
from repro.frozen import batches as batches_lib
from repro.frozen import distill_protocols
from repro.frozen import head_eval
from repro.frozen import head_training as train_lib
from repro.frozen import heads
from repro.frozen import trained_heads
from repro.frozen.frozen_data import FrozenData

Log = Callable[[str], None]
DEV_DEPTH = 100
INDEX_MODES = {"index": "all", "index_kept": "kept"}  # pruning mode -> IndexConfig.refine_tokens
PRUNING_MODES = ("rerank",) + tuple(INDEX_MODES)


def _print(message: str) -> None:
  print(message, flush=True)


def mean_std(values: Sequence[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "n": int(len(v))}


def rerank_metrics(data: FrozenData, split: str, module: Any, head: heads.HeadConfig,
                   params: Any, *, query_ids: Sequence[str] | None = None,
                   corpus: TokenStore | None = None, depth: int = DEV_DEPTH) -> dict[str, float]:
  """Metrics of re-ranking BM25's top `depth` of `split` (optionally only `query_ids`)."""
  first = data.bm25(split, depth)
  if query_ids is not None:
    first = {q: first[q] for q in query_ids}
  corpus = data.corpus if corpus is None else corpus
  run = head_eval.rerank_with_head(module, head, params, data.queries(split), corpus, first,
                                   depth=depth, doc_length=int(corpus.lengths.max()))
  return head_eval.evaluate(data.qrels(split), run, query_ids=list(first))


def dev_ndcg_fn(data: FrozenData, module: Any, head: heads.HeadConfig, *,
                corpus: TokenStore | None = None) -> Callable[[Any], float]:
  dev = data.examples[1]
  return lambda params: rerank_metrics(data, data.train_split, module, head, params,
                                       query_ids=dev.query_ids, corpus=corpus)["ndcg@10"]


def train_or_load(data: FrozenData, name: str, head: heads.HeadConfig,
                  config: train_lib.TrainConfig, seed: int, *,
                  batches: Callable[[int], Iterator[dict]] | None = None,
                  dev_corpus: TokenStore | None = None, extra_key: Any = None,
                  log: Log = _print) -> tuple[Any, Any, dict[str, Any]]:
  """(module, params, history) of head `name` trained with `seed` (or read back when the same
  head, settings, data and seed were trained before; see `trained_heads`).

  Default batches: `batches.sample_batches` over the training examples. Parameter-free heads
  (maxsim) return empty params.
  """
  module = heads.build_module(head)
  if head.kind == "maxsim":
    return module, {}, {"trained": False}
  train_ex, _ = data.examples  # first: encodes a missing training split into the cache
  key = trained_heads.head_key(name, head, config, data.fingerprint(), seed, extra_key)
  npz, meta = trained_heads.paths(pathlib.Path(data.work_dir) / "heads", name, seed, key)
  loaded = trained_heads.load_head(npz, meta)
  if loaded is not None:
    log(f"{name} seed {seed}: trained head read from {npz}")
    return module, loaded[0], loaded[1]
  if batches is None:
    it = batches_lib.sample_batches(
        train_ex, data.queries(data.train_split), data.corpus, batch_size=config.batch_size,
        num_negatives=config.num_negatives, negative_depth=config.negative_depth,
        doc_length=data.doc_length, seed=seed)
  else:
    it = batches(seed)
  params = heads.init_params(module, head, hidden_dim=data.corpus.dim, rng=jax.random.key(seed))
  log(f"{name} seed {seed}: training {heads.num_params(params)} parameters")
  params, history = train_lib.train_head(module, head, params, it, config,
                                         dev_fn=dev_ndcg_fn(data, module, head, corpus=dev_corpus),
                                         log=lambda m: log(f"{name} seed {seed}: {m}"),
                                         rng=jax.random.fold_in(jax.random.key(seed), 1))
  history["trained"] = True
  history["num_params"] = heads.num_params(params)
  history["dev_ndcg@10"] = max(v for _, v in history["dev"])
  history["key"] = key
  trained_heads.save_head(params, history, npz, meta)
  return module, params, history


def sweep_configs(config: train_lib.TrainConfig,
                  sweep: Mapping[str, Sequence[Any]]) -> list[train_lib.TrainConfig]:
  """`config` with every combination of the `sweep` values (TrainConfig field -> values), in
  `itertools.product` order of the fields as given; [config] for an empty sweep."""
  fields = list(sweep)
  unknown = set(fields) - {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  if unknown:
    raise ValueError(f"sweep over unknown TrainConfig fields {sorted(unknown)}")
  return [dataclasses.replace(config, **dict(zip(fields, values)))
          for values in itertools.product(*(sweep[f] for f in fields))]


def swept_values(config: train_lib.TrainConfig, sweep: Iterable[str]) -> dict[str, Any]:
  """{swept TrainConfig field: its value in `config`}, the record of a chosen setting."""
  return {f: getattr(config, f) for f in sweep}


def select_on_dev(data: FrozenData, name: str, head: heads.HeadConfig,
                  config: train_lib.TrainConfig, sweep: Mapping[str, Sequence[Any]],
                  seed: int, **train_kw: Any) -> tuple[train_lib.TrainConfig, list[dict]]:
  """Trains (or reads back) head `name` with `seed` under each setting of `sweep_configs` and
  returns the one with the best dev nDCG@10 (the first on ties) and one row per setting
  ({swept field: value, "dev_ndcg@10", "best_step"}). Only the dev queries (held out from the
  training split) are read; `train_kw` goes to `train_or_load`."""
  configs = sweep_configs(config, sweep)
  rows = []
  for cfg in configs:
    _, _, history = train_or_load(data, name, head, cfg, seed, **train_kw)
    rows.append({**swept_values(cfg, sweep), "dev_ndcg@10": history["dev_ndcg@10"],
                 "best_step": history["best_step"]})
  best = int(np.argmax([r["dev_ndcg@10"] for r in rows]))
  return configs[best], rows


def _summary(history: Mapping[str, Any]) -> dict[str, Any]:
  return {k: history[k] for k in ("best_step", "dev_ndcg@10", "seconds", "num_params", "dev")
          if k in history}


# ------------------------------------------------------------------------------------------
# R2 / R3: pruning.


def run_pruning(data: FrozenData, *, head: heads.HeadConfig, config: train_lib.TrainConfig,
                gates: Sequence[str], seeds: Sequence[int], doc_ratios: Sequence[float],
                query_ratios: Sequence[float], num_neighbors: int, mode: str = "rerank",
                depth: int = 100, backend: str = "exact", log: Log = _print) -> dict[str, Any]:
  """nDCG@10 etc. of ALIGNER heads per gate, seed and (β^d, β^q) on the test split.

  mode "rerank": BM25's top `depth` re-scored with the kept tokens only
  (`head_eval.pruned_rerank`); "index": the exact token index pruned to β^d, K′ =
  num_neighbors per searched query token, refinement with all tokens (ALIGNER §3.2,
  `head_eval.PruningEvaluator`); "index_kept": the same index refining with the kept tokens
  only (the storage variant). `backend`: the index's MIPS backend ("exact" | "scann").
  """
  if mode not in PRUNING_MODES:
    raise ValueError(f"pruning mode must be one of {PRUNING_MODES}, got {mode!r}")
  split = data.test_split
  results: dict[str, Any] = {}
  for gate in gates:
    per_seed = []
    for seed in seeds:
      gate_head = heads.with_gate(head, gate)
      module, params, history = train_or_load(data, f"aligner-{gate}", gate_head, config, seed,
                                              log=log)
      t = time.time()
      settings = list(itertools.product(doc_ratios, query_ratios))
      if mode == "rerank":
        runs = head_eval.pruned_rerank(module, gate_head, params, data.queries(split),
                                       data.corpus, data.bm25(split, depth), ratios=settings,
                                       depth=depth, doc_length=data.doc_length)
        total = data.corpus.num_tokens
        get = lambda bd, bq: (runs[(bd, bq)], {  # noqa: B023 (used in this iteration)
            "indexed_tokens": int(pruning.prune_budget(data.corpus.lengths, bd).sum()),
            "original_tokens": total})  # noqa: B023
      else:
        ev = head_eval.PruningEvaluator(
            head_eval.head_store(module, params, data.corpus, doc_length=data.doc_length),
            head_eval.head_queries(module, params, data.queries(split)), num_neighbors,
            refine_tokens=INDEX_MODES[mode], backend=backend)
        by_setting = ev.runs(settings)
        get = lambda bd, bq: by_setting[(bd, bq)]  # noqa: B023 (used in this iteration)
      cells = []
      for bd, bq in settings:
        run, stats = get(bd, bq)
        m = head_eval.evaluate(data.qrels(split), run)
        cells.append({"doc_ratio": bd, "query_ratio": bq, **m, **stats})
        log(head_eval.score_log(f"{gate} seed {seed} β^d={bd} β^q={bq}", m))
      per_seed.append({"seed": seed, "training": _summary(history), "cells": cells,
                       "eval_seconds": time.time() - t})
    results[gate] = {"seeds": per_seed, "summary": _pruning_summary(per_seed)}
  return results


def _pruning_summary(per_seed: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per (β^d, β^q): mean ± std over seeds of nDCG@10 and of its change from the least pruned
  setting (the largest β^d and β^q evaluated: (1, 1) when present)."""
  out = []
  first = per_seed[0]["cells"]
  ref = max(range(len(first)), key=lambda i: (first[i]["doc_ratio"], first[i]["query_ratio"]))
  for i, cell in enumerate(first):
    values = [s["cells"][i]["ndcg@10"] for s in per_seed]
    full = [s["cells"][ref]["ndcg@10"] for s in per_seed]
    out.append({"doc_ratio": cell["doc_ratio"], "query_ratio": cell["query_ratio"],
                "ndcg@10": mean_std(values),
                "delta_points": mean_std([100 * (v - f) for v, f in zip(values, full)]),
                "reference": [first[ref]["doc_ratio"], first[ref]["query_ratio"]],
                "mrr@10": mean_std([s["cells"][i]["mrr@10"] for s in per_seed]),
                "indexed_fraction": cell["indexed_tokens"] / cell["original_tokens"]})
  return out


# ------------------------------------------------------------------------------------------
# R4: re-ranking with heads trained alike.


def run_rerank(data: FrozenData, *, models: Mapping[str, heads.HeadConfig],
               temperatures: Mapping[str, float], config: train_lib.TrainConfig,
               seeds: Sequence[int], depth: int = 100, transfer: Sequence[FrozenData] = (),
               sweep: Mapping[str, Sequence[Any]] | None = None,
               log: Log = _print) -> dict[str, Any]:
  """Test (and transfer) metrics of each model re-ranking BM25's top `depth`.

  Every trained head gets the same `config` and the same `sweep` of its settings; each keeps
  the setting with the best dev nDCG@10 of the first seed (`select_on_dev`), then trains the
  other seeds with it.
  """
  sweep = dict(sweep or {})
  out: dict[str, Any] = {"bm25": {data.name: head_eval.evaluate(
      data.qrels(data.test_split), data.bm25(data.test_split, depth))}}
  for t in transfer:
    out["bm25"][t.name] = head_eval.evaluate(t.qrels(t.test_split), t.bm25(t.test_split, depth))
  for name, head in models.items():
    cfg = dataclasses.replace(config, objective="group", temperature=temperatures[name])
    table: list[dict[str, Any]] = []
    if head.kind != "maxsim":
      cfg, table = select_on_dev(data, name, head, cfg, sweep, seeds[0], log=log)
      log(f"{name}: chosen on dev {swept_values(cfg, sweep)}")
    runs = []
    for seed in (seeds if head.kind != "maxsim" else seeds[:1]):
      module, params, history = train_or_load(data, name, head, cfg, seed, log=log)
      entry = {"seed": seed, "training": _summary(history)}
      entry[data.name] = rerank_metrics(data, data.test_split, module, head, params, depth=depth)
      for t in transfer:
        entry[t.name] = rerank_metrics(t, t.test_split, module, head, params, depth=depth)
      log(head_eval.score_log(f"{name} seed {seed} {data.name}", entry[data.name]))
      runs.append(entry)
    names = [data.name] + [t.name for t in transfer]
    out[name] = {"head": dataclasses.asdict(head), "temperature": temperatures[name],
                 "sweep": table,
                 "chosen": swept_values(cfg, sweep) if table else None,
                 "seeds": runs,
                 "summary": {ds: {m: mean_std([r[ds][m] for r in runs])
                                  for m in head_eval.REPORTED} for ds in names},
                 "dev_ndcg@10": mean_std([r["training"].get("dev_ndcg@10", np.nan)
                                          for r in runs]) if head.kind != "maxsim" else None}
  return out


# ------------------------------------------------------------------------------------------
# R5: distillation into a dual encoder.


def pooled_store(corpus: TokenStore) -> TokenStore:
  """Each document as one token, the mean of its cached token vectors: the dual encoder's
  mean pooling gives the same vector, at a fraction of the cost of padding 256 tokens."""
  sums = np.add.reduceat(corpus.dequantize(), corpus.offsets[:-1], axis=0)
  means = sums / np.maximum(corpus.lengths, 1)[:, None]
  return from_padded(corpus.doc_ids, means[:, None, :], np.ones((corpus.num_docs, 1), bool))


def teacher_scores(module: Any, head: heads.HeadConfig, params: Any, queries: QueryBatch,
                   corpus: TokenStore, examples: batches_lib.Examples, candidates: np.ndarray,
                   *, doc_length: int, batch_size: int = 8) -> np.ndarray:
  """[Q, K] teacher scores of the candidate lists (0 on padding)."""
  score = jax.jit(lambda p, q, qm, d, dm: heads.pair_scores(module, head, p, q, qm, d, dm))
  out = []
  for batch in batches_lib.fixed_batches(examples, queries, corpus, candidates,
                                         batch_size=batch_size, doc_length=doc_length,
                                         drop_last=False):
    s = score(params, *(jnp.asarray(batch[k]) for k in ("query", "query_mask", "docs",
                                                         "doc_mask")))
    out.append(np.where(batch["cand_mask"], np.asarray(s), 0.0))
  return np.concatenate(out).astype(np.float32)


def _epochs(make: Callable[[int], Iterator[dict]], seed: int) -> Iterator[dict]:
  for epoch in itertools.count():
    yield from make(seed * 100_003 + epoch)


BatchFn = Callable[[int], Iterator[dict]]  # seed -> endless training batches


def _shared_candidates(data: FrozenData, score_fn: Callable[[np.ndarray], np.ndarray],
                       pooled: TokenStore, config: train_lib.TrainConfig, *,
                       num_candidates: int) -> tuple[Callable[[str], BatchFn], dict[str, Any]]:
  """The "shared" protocol: every loss on the same lists (relevant + best BM25 negatives)."""
  train_ex, _ = data.examples
  queries = data.queries(data.train_split)
  cands = batches_lib.candidate_rows(train_ex, num_candidates=num_candidates)
  scores, mu, sd = distill_protocols.standardise(score_fn(cands), cands >= 0)

  def make_batches(seed: int) -> Iterator[dict]:
    return batches_lib.fixed_batches(train_ex, queries, pooled, cands, teacher=scores,
                                     batch_size=config.batch_size, doc_length=1,
                                     shuffle_seed=seed)

  return (lambda objective: lambda s: _epochs(make_batches, s)), {
      "score_mean": mu, "score_std": sd, "scored_candidates": int((cands >= 0).sum())}


def _bm25_rows(data: FrozenData, examples: batches_lib.Examples, depth: int) -> list[np.ndarray]:
  """Each training query's BM25 top `depth` as corpus rows, best first."""
  run = data.bm25(data.train_split, depth)
  row = {d: i for i, d in enumerate(data.corpus.doc_ids)}
  return [np.array([row[d] for d, _ in runs_lib.ranked(run.get(q, {}))], np.int64)
          for q in examples.query_ids]


def _paper_candidates(data: FrozenData, score_fn: Callable[[np.ndarray], np.ndarray],
                      pooled: TokenStore, config: train_lib.TrainConfig, *,
                      num_candidates: int, pool_depth: int
                      ) -> tuple[Callable[[str], BatchFn], dict[str, Any]]:
  """Menon et al.'s protocol (`distill_protocols`): the teacher's top lists for the list
  losses, fresh triplets for the others."""
  train_ex, _ = data.examples
  queries = data.queries(data.train_split)
  rows, counts = distill_protocols.pool_rows(train_ex, _bm25_rows(data, train_ex, pool_depth),
                                             depth=pool_depth)
  pool = distill_protocols.score_pool(rows, counts, score_fn)
  top_rows, top_scores = distill_protocols.teacher_top(pool, num_candidates)

  def lists(seed: int) -> Iterator[dict]:
    return batches_lib.fixed_batches(train_ex, queries, pooled, top_rows, teacher=top_scores,
                                     batch_size=config.batch_size, doc_length=1,
                                     shuffle_seed=seed)

  def triplets(seed: int) -> Iterator[dict]:
    return distill_protocols.triplet_batches(
        train_ex, queries, pooled, pool, batch_size=config.batch_size,
        negative_depth=config.negative_depth, doc_length=1, seed=seed)

  def for_objective(objective: str) -> BatchFn:
    if objective in distill_protocols.LIST_OBJECTIVES:
      return lambda s: _epochs(lists, s)
    return triplets

  has_relevant = [np.isin(t, r[:c]).any() for t, r, c in zip(top_rows, rows, counts)]
  return for_objective, {
      "score_mean": pool.mean, "score_std": pool.std, "pool_depth": pool_depth,
      "scored_candidates": int((rows >= 0).sum()),
      "top_lists_with_a_relevant_document": float(np.mean(has_relevant))}


def _student(data: FrozenData, name: str, student: heads.HeadConfig,
             cfg: train_lib.TrainConfig, sweep: Mapping[str, Sequence[Any]],
             seeds: Sequence[int], depth: int, pooled: TokenStore,
             train_kw: Mapping[str, Any], log: Log) -> dict[str, Any]:
  """One loss's students: its setting chosen on the first seed's dev, then every seed."""
  cfg, table = select_on_dev(data, f"student-{name}", student, cfg, sweep, seeds[0],
                             **train_kw)
  runs = []
  for seed in seeds:
    module, params, history = train_or_load(data, f"student-{name}", student, cfg, seed,
                                            **train_kw)
    m = rerank_metrics(data, data.test_split, module, student, params, corpus=pooled,
                       depth=depth)
    log(head_eval.score_log(f"student {name} seed {seed}", m))
    runs.append({"seed": seed, "training": _summary(history), data.name: m})
  return {"sweep": table, "chosen": swept_values(cfg, sweep), "seeds": runs,
          "summary": {mm: mean_std([r[data.name][mm] for r in runs])
                      for mm in head_eval.REPORTED}}


def run_distillation(data: FrozenData, *, teacher_name: str, teacher: heads.HeadConfig,
                     teacher_config: train_lib.TrainConfig, student: heads.HeadConfig,
                     config: train_lib.TrainConfig,
                     objectives: Mapping[str, tuple[str, Mapping[str, float]]],
                     seeds: Sequence[int], num_candidates: int = 20, depth: int = 100,
                     sweep: Mapping[str, Sequence[Any]] | None = None,
                     teacher_sweep: Mapping[str, Sequence[Any]] | None = None,
                     protocol: str = "shared", pool_depth: int = 100,
                     log: Log = _print) -> dict[str, Any]:
  """Students distilled with each objective from the teacher (trained with seed 0).

  The teacher's setting is chosen on dev over `teacher_sweep` (R4's sweep: its heads are read
  back from the store); each objective's student setting over `sweep`, on the first seed's dev
  nDCG@10 (`select_on_dev`), the other seeds then trained with it. `protocol` says which
  candidates each loss trains on (`distill_protocols`; "paper" scores each training query's
  relevant documents and BM25 top `pool_depth` with the teacher).
  """
  if protocol not in distill_protocols.PROTOCOLS:
    raise ValueError(f"protocol must be one of {distill_protocols.PROTOCOLS}, got {protocol!r}")
  sweep, teacher_sweep = dict(sweep or {}), dict(teacher_sweep or {})
  teacher_config, _ = select_on_dev(data, teacher_name, teacher, teacher_config, teacher_sweep,
                                    0, log=log)
  t_module, t_params, t_history = train_or_load(data, teacher_name, teacher, teacher_config, 0,
                                                log=log)
  train_ex, _ = data.examples
  queries = data.queries(data.train_split)
  score_fn = lambda rows: teacher_scores(  # noqa: E731
      t_module, teacher, t_params, queries, data.corpus, train_ex, rows,
      doc_length=data.doc_length)
  pooled = pooled_store(data.corpus)
  t0 = time.time()
  if protocol == "shared":
    batch_fn, info = _shared_candidates(data, score_fn, pooled, config,
                                        num_candidates=num_candidates)
    extra = (teacher_name, t_history.get("key"), num_candidates)
  else:
    batch_fn, info = _paper_candidates(data, score_fn, pooled, config,
                                       num_candidates=num_candidates, pool_depth=pool_depth)
    extra = (teacher_name, t_history.get("key"), num_candidates, protocol, pool_depth)
  log(f"teacher scores of {info['scored_candidates']} candidates in {time.time() - t0:.0f}s")
  out: dict[str, Any] = {
      "teacher": {"name": teacher_name, "head": dataclasses.asdict(teacher),
                  "training": _summary(t_history),
                  "chosen": swept_values(teacher_config, teacher_sweep),
                  data.name: rerank_metrics(data, data.test_split, t_module, teacher, t_params,
                                            depth=depth), **info},
      "bm25": head_eval.evaluate(data.qrels(data.test_split), data.bm25(data.test_split, depth)),
      "protocol": protocol, "students": {}}
  for name, (objective, hparams) in objectives.items():
    cfg = dataclasses.replace(config, objective=objective,
                              loss_hparams=tuple(sorted(dict(hparams).items())))
    train_kw = dict(batches=batch_fn(objective), dev_corpus=pooled, extra_key=extra, log=log)
    out["students"][name] = {"objective": objective, "hparams": dict(hparams),
                             **_student(data, name, student, cfg, sweep, seeds, depth, pooled,
                                        train_kw, log)}
  return out
