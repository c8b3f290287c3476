"""Evaluating heads over cached vectors: re-ranking a first-stage run, and retrieval through
the project's token index with salience pruning.

Re-ranking (`rerank_with_head`): each query's top documents of a run (BM25 by default) are
scored by `heads.pair_scores` on the cached vectors, in fixed shapes (candidates padded to the
depth, documents to the cache's token limit) so one compilation serves every query.

Pruned re-ranking (`pruned_rerank`): the same, scoring with only the tokens that survive β^d /
β^q pruning by salience, every setting from one pass of the heads.

Token-index retrieval (`head_store`, `head_queries`, `PruningEvaluator`): the heads map the
cached corpus and queries to their token vectors and saliences; documents are pruned to β^d
in the exact index and queries to β^q for the search (ALIGNER §3.2), K′ neighbours per
searched query token (the "scann" backend instead of exact search is a setting). As in the
paper, refinement uses the full model with all token vectors
(`refine_tokens="all"`), so a (query, document) pair always gets the same refined score: it
is computed once, over the union of every setting's candidates, and each (β^d, β^q) setting
keeps the best of its own candidate set -- the ranking the token-index path returns, without
refining the same pairs eight times. `refine_tokens="kept"` (the storage variant) refines
with the top-β^d tokens only, once per β^d.
"""

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aligner_jax.eval import ir_metrics as metrics_lib
from aligner_jax.index import IndexConfig
from aligner_jax.index import build_token_index
from aligner_jax.index.token_store import TokenStore
from aligner_jax.index.token_store import from_padded
from aligner_jax.retrieval import BM25
from aligner_jax.retrieval import QueryBatch
from aligner_jax.retrieval import candidate_documents
from aligner_jax.retrieval import refine
from aligner_jax.retrieval import rerank
from aligner_jax.retrieval import runs as runs_lib
from aligner_jax.retrieval import to_run
from aligner_jax.retrieval.token_retrieval import Candidates
from aligner_jax.retrieval.token_retrieval import top_documents
from aligner_jax.scoring import align_scores_candidates
from aligner_jax.scoring import prune_tokens
from repro.frozen import heads

Run = runs_lib.Run
REPORTED = ("ndcg@10", "mrr@10", "recall@100")


def bm25_run(collection, query_ids: Sequence[str], *, top_n: int = 100) -> Run:
  """BM25 (the project's baseline settings) top `top_n` of each query."""
  corpus = collection.corpus
  bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
  texts = [collection.queries.text(collection.queries.index[q]) for q in query_ids]
  results = bm25.search(texts, top_n=top_n)
  return to_run(list(query_ids), corpus.ids, results)


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Run,
             query_ids: Sequence[str] | None = None) -> dict[str, float]:
  """Mean BEIR metrics (REPORTED) of `run` over `query_ids` (default: all judged queries)."""
  if query_ids is not None:
    qrels = {q: qrels[q] for q in query_ids}
  mean, _ = metrics_lib.evaluate(qrels, run, metrics=REPORTED)
  return mean


def rerank_with_head(module: Any, config: heads.HeadConfig, params: Any, queries: QueryBatch,
                     corpus: TokenStore, first_stage: Run, *, depth: int = 100,
                     doc_length: int = 256) -> Run:
  """`first_stage`'s top-`depth` documents of each query re-scored by the head."""
  row_of_query = {q: i for i, q in enumerate(queries.ids)}
  row_of_doc = {d: i for i, d in enumerate(corpus.doc_ids)}
  score = jax.jit(lambda p, q, qm, d, dm: heads.pair_scores(module, config, p, q, qm, d, dm))

  def score_fn(qid: str, doc_ids: Sequence[str]) -> np.ndarray:
    b = row_of_query[qid]
    rows = np.full(depth, -1, np.int64)
    rows[:len(doc_ids)] = [row_of_doc[d] for d in doc_ids]
    g = corpus.gather_padded(rows, doc_length)
    out = score(params, jnp.asarray(queries.vectors[b:b + 1]),
                jnp.asarray(queries.mask[b:b + 1]), jnp.asarray(g["vectors"][None]),
                jnp.asarray(g["mask"][None]))
    return np.asarray(out)[0, :len(doc_ids)]

  run = {q: first_stage.get(q, {}) for q in queries.ids}
  return rerank(run, score_fn, depth=depth)


def pruned_rerank(module: Any, config: heads.HeadConfig, params: Any, queries: QueryBatch,
                  corpus: TokenStore, first_stage: Run, *,
                  ratios: Sequence[tuple[float, float]], depth: int = 100,
                  doc_length: int = 256) -> dict[tuple[float, float], Run]:
  """`first_stage`'s top-`depth` re-scored by an ALIGNER head with only the kept tokens, for
  every (β^d, β^q) in `ratios`: the ⌈β^d · m⌉ most salient document tokens and ⌈β^q · n⌉ query
  tokens (`scoring.prune_tokens`, ALIGNER §3.2) are the only ones aligned and scored -- the
  pruned tokens are not stored at all. The heads run once per query for all settings."""
  if config.kind != "aligner":
    raise ValueError(f"pruning needs saliences: an aligner head, not {config.kind!r}")
  row_of_query = {q: i for i, q in enumerate(queries.ids)}
  row_of_doc = {d: i for i, d in enumerate(corpus.doc_ids)}
  ratios = [tuple(map(float, r)) for r in ratios]

  def fn(mdl, q, q_mask, d, d_mask):
    b, k, m, h = d.shape
    qe = mdl.encode_hidden("query", q, q_mask)
    de = mdl.encode_hidden("doc", d.reshape(b * k, m, h), d_mask.reshape(b * k, m))
    out = []
    for doc_ratio, query_ratio in ratios:
      keep_q = prune_tokens(qe.mask, qe.salience, query_ratio)
      keep_d = prune_tokens(de.mask, de.salience, doc_ratio).reshape(b, k, m)
      out.append(align_scores_candidates(
          qe.vectors, keep_q, de.vectors.reshape(b, k, m, -1), keep_d, heads.MAXSIM,
          q_salience=qe.salience, d_salience=de.salience.reshape(b, k, m)))
    return jnp.stack(out)  # [R, B, K]

  score = jax.jit(lambda p, *xs: module.apply({"params": p}, *xs, method=fn))
  runs: dict[tuple[float, float], Run] = {r: {} for r in ratios}
  for qid in queries.ids:
    docs = [d for d, _ in runs_lib.ranked(first_stage.get(qid, {}))[:depth]]
    if not docs:
      for r in ratios:
        runs[r][qid] = {}
      continue
    b = row_of_query[qid]
    rows = np.full(depth, -1, np.int64)
    rows[:len(docs)] = [row_of_doc[d] for d in docs]
    g = corpus.gather_padded(rows, doc_length)
    out = np.asarray(score(params, jnp.asarray(queries.vectors[b:b + 1]),
                           jnp.asarray(queries.mask[b:b + 1]), jnp.asarray(g["vectors"][None]),
                           jnp.asarray(g["mask"][None])))[:, 0, :len(docs)]
    for r, values in zip(ratios, out):
      runs[r][qid] = {d: float(v) for d, v in zip(docs, values)}
  return runs


def head_store(module: Any, params: Any, corpus: TokenStore, *, batch_size: int = 64,
               doc_length: int = 256, vector_dtype: str = "float16") -> TokenStore:
  """The cached corpus mapped through the document heads: a store of head token vectors
  (with saliences when the head has them) and pooled vectors."""
  fn = jax.jit(lambda p, h, m: heads.encode_side(module, p, "doc", h, m))
  parts = {"vectors": [], "mask": [], "salience": [], "pooled": []}
  for start in range(0, corpus.num_docs, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < corpus.num_docs, rows, -1)
    g = corpus.gather_padded(rows, doc_length)
    out = fn(params, jnp.asarray(g["vectors"]), jnp.asarray(g["mask"]))
    keep = rows >= 0
    parts["mask"].append(g["mask"][keep])
    for name in ("vectors", "salience", "pooled"):
      if name in out:
        parts[name].append(np.asarray(out[name], np.float32)[keep])
  cat = lambda name: np.concatenate(parts[name]) if parts[name] else None  # noqa: E731
  return from_padded(corpus.doc_ids, cat("vectors"), cat("mask"), salience=cat("salience"),
                     pooled=cat("pooled"), vector_dtype=vector_dtype)


def head_queries(module: Any, params: Any, queries: QueryBatch) -> QueryBatch:
  """The cached queries mapped through the query heads (vectors, saliences, pooled)."""
  out = jax.jit(lambda p, h, m: heads.encode_side(module, p, "query", h, m))(
      params, jnp.asarray(queries.vectors), jnp.asarray(queries.mask))
  sal = out.get("salience")
  return QueryBatch(list(queries.ids), np.asarray(out["vectors"]), queries.mask,
                    None if sal is None else np.asarray(sal), queries.token_ids,
                    np.asarray(out["pooled"]))


Setting = tuple[float, float]  # (β^d, β^q)


def _union(candidate_sets: Sequence[Candidates]) -> Candidates:
  """Per query, the union of the documents of several candidate sets of the same queries."""
  first = candidate_sets[0]
  docs = [np.unique(np.concatenate(rows)) for rows in zip(*(c.docs for c in candidate_sets))]
  return Candidates(list(first.query_ids), docs, first.num_neighbors, first.prune_query_ratio)


def _refined_scores(index: Any, queries: QueryBatch, union: Candidates,
                    alignment: str) -> list[dict[int, float]]:
  """Per query, {document number: refined score} of every document of `union`."""
  top_n = int(max(union.sizes().max(initial=0), 1))
  results = refine(index, queries, union, alignment, top_n=top_n)
  return [dict(zip(docs.tolist(), s.tolist())) for docs, s in results]


@dataclasses.dataclass
class PruningEvaluator:
  """Runs of one trained ALIGNER head through the exact token index, for several pruning
  ratios (see the module docstring).

  Attributes:
    store: the head's corpus store (vectors + saliences), from `head_store`.
    queries: the head's queries (vectors + saliences), from `head_queries`.
    num_neighbors: K′ nearest stored tokens per searched query token.
    top_n: documents kept per query.
    refine_tokens: "all" (refinement scores every document token, ALIGNER §3.2) or "kept"
      (only the top-β^d tokens are stored and scored: the storage variant).
    backend: the index's MIPS backend, "exact" or "scann" (approximate, far cheaper to
      search on a CPU; its settings scale with the index size).
  """
  store: TokenStore
  queries: QueryBatch
  num_neighbors: int
  top_n: int = 1000
  alignment: str = heads.MAXSIM
  refine_tokens: str = "all"
  backend: str = "exact"

  def _index(self, doc_ratio: float) -> Any:
    return build_token_index(self.store, IndexConfig(
        backend=self.backend, prune_doc_ratio=doc_ratio, refine_tokens=self.refine_tokens))

  def runs(self, settings: Sequence[Setting]) -> dict[Setting, tuple[Run, dict[str, Any]]]:
    """{(β^d, β^q): (run, search statistics)}. One index per β^d, searched for each of its
    β^q; a (query, document) pair is refined once for all settings that share its scores
    (all of them with refine_tokens "all", those of one β^d with "kept")."""
    cands: dict[Setting, Candidates] = {}
    stats: dict[Setting, dict[str, Any]] = {}
    scores: dict[Setting, list[dict[int, float]]] = {}
    index = None
    for bd in dict.fromkeys(bd for bd, _ in settings):
      index = self._index(bd)
      mine = [(bd, bq) for b, bq in settings if b == bd]
      for key in mine:
        cands[key] = candidate_documents(index, self.queries, num_neighbors=self.num_neighbors,
                                         prune_query_ratio=key[1])
        stats[key] = {"indexed_tokens": int(index.num_ann_tokens),
                      "original_tokens": int(index.num_original_tokens),
                      "mean_candidates": float(cands[key].sizes().mean())}
      if self.refine_tokens == "kept":
        refined = _refined_scores(index, self.queries, _union([cands[k] for k in mine]),
                                  self.alignment)
        scores.update({k: refined for k in mine})
    if self.refine_tokens == "all":  # every index stores every token: one refinement
      refined = _refined_scores(index, self.queries, _union(list(cands.values())),
                                self.alignment)
      scores = {k: refined for k in cands}
    return {k: (self._run(cands[k], scores[k], index.doc_ids), stats[k]) for k in settings}

  def _run(self, cands: Candidates, scores: list[dict[int, float]],
           doc_ids: Sequence[str]) -> Run:
    results = []
    for docs, table in zip(cands.docs, scores):
      values = np.array([table[int(d)] for d in docs], np.float32)
      results.append(top_documents(np.asarray(docs, np.int64), values, self.top_n))
    return to_run(self.queries.ids, doc_ids, results)


def score_log(name: str, values: Mapping[str, float]) -> str:
  return f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items())


