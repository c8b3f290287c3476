"""Multi-vector retrieval through the token index (ALIGNER §2.1, §3.2, §4.1).

For each query: (1) keep its top-β^q tokens by salience (`prune_query_ratio`); (2) find the
K′ nearest stored document tokens of each kept token (`num_neighbors`, 4,000 in the paper,
capped by the index size), all tokens of a group of queries in one search call; (3) the
candidate documents are the union of their documents, or, with `num_refine` = R, the R of them
with the best XTR score computed from the search results alone (`first_stage.py`: sum over
query tokens of the best retrieved score, the token's K′-th score where the document was not
retrieved); (4) refinement scores every candidate with the full alignment scorer over all of
its stored tokens and all (unpruned) query tokens, with saliences when the model has them;
(5) the top
`top_n` (1,000) are returned. Steps 1-3 do not depend on the alignment, so `Candidates` can be
reused to refine with other alignments (few-shot adaptation reruns only step 4).

Refinement calls the all-pairs scorer `align_scores` on blocks of queries against chunks of
their candidates padded to a few bucketed lengths, so that only a handful of shapes are ever
compiled; `refine_many` applies several alignments in the same pass. Results are ordered by
score, then by document number (lower first).
"""

import dataclasses
import functools
import math
import time
from typing import Callable, Sequence

import jax
import numpy as np

from aligner_jax.index import pruning
from aligner_jax.index.token_index import TokenIndex
from aligner_jax.index.token_index import consecutive_groups
from aligner_jax.retrieval import first_stage
from aligner_jax.scoring import Alignment
from aligner_jax.scoring import align_scores

# Floats of candidate document vectors per refinement call ([K, m, h] in float32): ~64 MB.
_CHUNK_FLOATS = 1 << 24
_MAX_CHUNK = 1024
_LENGTH_BUCKET = 32
_QUERY_BUCKET = 8
_QUERY_BLOCK = 32
_SEARCH_CHUNK = 512


@dataclasses.dataclass
class QueryBatch:
  """Encoded queries, padded.

  Attributes:
    ids: B query ids.
    vectors: [B, n, h] float token vectors.
    mask: [B, n] bool, True on valid tokens.
    salience: [B, n] float token saliences u^q, or None.
    token_ids: [B, n] int vocabulary ids, or None.
    pooled: [B, h'] float pooled vectors (dense path), or None.
  """
  ids: list[str]
  vectors: np.ndarray
  mask: np.ndarray
  salience: np.ndarray | None = None
  token_ids: np.ndarray | None = None
  pooled: np.ndarray | None = None

  def __post_init__(self):
    self.vectors = np.asarray(self.vectors, np.float32)
    self.mask = np.asarray(self.mask, bool)
    b = len(self.ids)
    if self.vectors.ndim != 3 or self.vectors.shape[0] != b or self.mask.shape != \
        self.vectors.shape[:2]:
      raise ValueError(f"expected vectors [B, n, h] and mask [B, n] for {b} query ids, got "
                       f"{self.vectors.shape} and {self.mask.shape}")
    for name in ("salience", "token_ids"):
      value = getattr(self, name)
      if value is not None and np.shape(value) != self.mask.shape:
        raise ValueError(f"{name} has shape {np.shape(value)}, expected {self.mask.shape}")

  def __len__(self) -> int:
    return len(self.ids)

  def select(self, rows: Sequence[int] | slice) -> "QueryBatch":
    rows_list = list(range(len(self.ids)))[rows] if isinstance(rows, slice) else list(rows)
    pick = lambda a: None if a is None else np.asarray(a)[rows_list]  # noqa: E731
    return QueryBatch([self.ids[i] for i in rows_list], self.vectors[rows_list],
                      self.mask[rows_list], pick(self.salience), pick(self.token_ids),
                      pick(self.pooled))


@dataclasses.dataclass
class Candidates:
  """Per query, the sorted global document numbers to refine, and how they were found.

  Attributes:
    query_ids: B query ids.
    docs: per query, [C_b] int64 sorted document numbers.
    num_neighbors: K′ used by the token search (capped by the index size).
    prune_query_ratio: β^q used.
    scores: per query, [C_b] float64 first-stage (XTR) scores of `docs` (-inf for every
      allowed document given to a query no search filled, see `min_candidates`), or None
      when every retrieved document is kept (no first-stage ranking).
    num_refine: R, the most documents kept per query by first-stage score, or None (all).
  """
  query_ids: list[str]
  docs: list[np.ndarray]
  num_neighbors: int
  prune_query_ratio: float
  scores: list[np.ndarray] | None = None
  num_refine: int | None = None

  def sizes(self) -> np.ndarray:
    return np.array([len(d) for d in self.docs])


def search_mask(queries: QueryBatch, prune_query_ratio: float) -> np.ndarray:
  """[B, n] bool: the query tokens that are searched (top-β^q by salience; all when β^q = 1)."""
  pruning.check_ratio(prune_query_ratio, "query pruning ratio β^q")
  if prune_query_ratio >= 1.0:
    return queries.mask.copy()
  if queries.salience is None:
    raise ValueError(f"pruning queries to β^q = {prune_query_ratio} needs query token "
                     "saliences, but the model produced none; use a ratio of 1.0")
  return pruning.top_salience_mask(queries.salience, queries.mask, prune_query_ratio)


def _query_groups(tokens_per_query: np.ndarray, chunk: int) -> list[tuple[int, int]]:
  """Consecutive query ranges [lo, hi) with at most `chunk` searched tokens each (a longer
  query is a group alone): each group's tokens are searched in one call."""
  return consecutive_groups(tokens_per_query, chunk)


def _group_candidates(owner: np.ndarray, docs: np.ndarray, scores: np.ndarray,
                      num_queries: int, num_docs: int, num_refine: int | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """One group's (query [C], doc [C], first-stage score [C] or None), sorted by query, doc."""
  if not num_refine:
    query, doc = first_stage.union_pairs(owner, docs, num_docs=num_docs)
    return query, doc, None
  query, doc, score = first_stage.xtr_scores(owner, docs, scores, num_queries=num_queries,
                                             num_docs=num_docs)
  keep = first_stage.top_per_query(query, doc, score, num_queries=num_queries,
                                   keep=num_refine)
  return query[keep], doc[keep], score[keep]


def candidate_documents(index: TokenIndex, queries: QueryBatch, *, num_neighbors: int = 4000,
                        prune_query_ratio: float = 1.0, num_refine: int | None = None,
                        allowed: np.ndarray | None = None, min_candidates: int | None = None,
                        **search_kwargs) -> Candidates:
  """Steps 1-3 of the module docstring, with an optional cheap ranking of the candidates.

  Deleted documents of the index are never candidates. The token search skips them (and those
  `allowed` excludes) inside each shard, so every searched query token still gets its K′
  nearest tokens of documents that may be returned (`index.masked_search`): the candidates
  are those an index built over these documents alone would give (exactly so with the exact
  backend), however many documents are deleted or filtered out.

  Args:
    index: the token index (any number of shards).
    queries: the encoded queries.
    num_neighbors: K′, nearest stored tokens per searched query token.
    prune_query_ratio: β^q, fraction of each query's tokens searched (by salience).
    num_refine: R: keep only the R documents with the best XTR first-stage score per query
      (`first_stage.xtr_scores`); None or 0 keeps every retrieved document.
    allowed: [N] bool, the documents that may be candidates (a filter); None: every live one.
    min_candidates: k: a query left with fewer than min(k, allowed documents) candidates is
      searched again with 4 times K′ until it has them, or is given every allowed document once
      K′ covers all their tokens; when no more than k documents are allowed at all, they are
      every query's candidates without a search (a selective filter). None: no such top-up.
    **search_kwargs: the backend's search effort (ScaNN: leaves_to_search, reorder_factor).
  """
  if num_neighbors < 1:
    raise ValueError(f"num_neighbors K′ must be positive, got {num_neighbors}")
  if num_refine is not None and num_refine < 0:
    raise ValueError(f"num_refine R must be positive (or 0 / None: refine all), got "
                     f"{num_refine}")
  if min_candidates is not None and min_candidates < 1:
    raise ValueError(f"min_candidates must be positive (or None), got {min_candidates}")
  if queries.vectors.shape[-1] != index.dim:
    raise ValueError(f"query vectors have dimension {queries.vectors.shape[-1]} but the index "
                     f"holds {index.dim}-dimensional tokens (encoded by another model?)")
  mask = index.searchable(allowed)
  searchable = index.searchable_tokens(allowed)
  if min_candidates and mask is not None:
    chosen = np.flatnonzero(mask)
    if len(chosen) <= min_candidates:  # scored directly: every allowed document
      return Candidates(list(queries.ids), [chosen] * len(queries),
                        min(num_neighbors, searchable), prune_query_ratio)
  docs, scores = _searched_candidates(index, queries, prune_query_ratio, num_neighbors,
                                      num_refine, mask, search_kwargs)
  if min_candidates:
    want = min_candidates if mask is None else min(min_candidates, int(mask.sum()))
    depth = num_neighbors
    short = [b for b in range(len(queries)) if len(docs[b]) < want]
    while short and depth < searchable:
      depth = min(depth * 4, searchable)
      more_docs, more_scores = _searched_candidates(
          index, queries.select(short), prune_query_ratio, depth, num_refine, mask,
          search_kwargs)
      for i, b in enumerate(short):
        docs[b] = more_docs[i]
        if scores is not None:
          scores[b] = more_scores[i]
      short = [b for b in short if len(docs[b]) < want]
    everything = np.flatnonzero(index.live if mask is None else mask)
    for b in short:  # K′ covers every allowed token: the rest hold none a query token found
      docs[b] = everything
      if scores is not None:
        scores[b] = np.full(len(everything), -np.inf)
  return Candidates(list(queries.ids), docs, min(num_neighbors, searchable), prune_query_ratio,
                    scores, num_refine or None)


def _searched_candidates(index: TokenIndex, queries: QueryBatch, prune_query_ratio: float,
                         num_neighbors: int, num_refine: int | None, mask: np.ndarray | None,
                         search_kwargs: dict) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
  """Per query the candidate documents of one token search, and their first-stage scores
  (None without `num_refine`)."""
  keep = search_mask(queries, prune_query_ratio)
  owner, tok = np.nonzero(keep)  # row-major: each query's tokens are consecutive
  per_query = np.bincount(owner, minlength=len(queries))
  first_row = np.concatenate([[0], np.cumsum(per_query)])
  empty = np.zeros(0, np.int64)
  parts = [(empty, empty, np.zeros(0))]
  for lo, hi in _query_groups(per_query, _SEARCH_CHUNK):
    rows = slice(first_row[lo], first_row[hi])
    if rows.start == rows.stop:
      continue
    docs, scores = index.search_tokens(queries.vectors[owner[rows], tok[rows]], num_neighbors,
                                       allowed=mask, **search_kwargs)
    query, doc, score = _group_candidates(owner[rows] - lo, docs, scores, hi - lo,
                                          index.num_docs, num_refine)
    parts.append((query + lo, doc, score))
  query = np.concatenate([p[0] for p in parts])
  split = lambda i: first_stage.split_by_query(  # noqa: E731
      query, np.concatenate([p[i] for p in parts]), len(queries))
  return split(1), split(2) if num_refine else None


def all_documents(index: TokenIndex, queries: QueryBatch,
                  allowed: np.ndarray | None = None) -> Candidates:
  """Every live document (that `allowed` [N] bool admits) as a candidate of every query
  (exhaustive refinement, the exact upper bound of candidate generation)."""
  mask = index.searchable(allowed)
  every = np.arange(index.num_docs) if mask is None else np.flatnonzero(mask)
  return Candidates(list(queries.ids), [every] * len(queries), index.searchable_tokens(allowed),
                    1.0)


@functools.lru_cache(maxsize=None)
def _scorer(alignments: tuple[Alignment, ...], with_q_sal: bool, with_d_sal: bool,
            with_ids: bool):
  """One jitted all-pairs refinement call scoring a chunk under every alignment at once
  ([A, B, K]): the chunk is gathered, transferred and dispatched once for all of them."""

  def score(q, q_mask, d, d_mask, q_sal, d_sal, q_ids, d_ids):
    # float16 stores arrive as they are: the fast path converts each chunk next to its GEMM
    # (converting the whole chunk of documents first made refinement 3x slower on the CPU).
    return jax.numpy.stack([align_scores(
        q, q_mask, d, d_mask, alignment, q_salience=q_sal if with_q_sal else None,
        d_salience=d_sal if with_d_sal else None,
        q_ids=q_ids if with_ids and alignment.needs_token_ids else None,
        d_ids=d_ids if with_ids and alignment.needs_token_ids else None)
                            for alignment in alignments])

  return jax.jit(score)


def _bucket(length: int) -> int:
  return max(_LENGTH_BUCKET, int(math.ceil(length / _LENGTH_BUCKET)) * _LENGTH_BUCKET)


def _pow2_at_least(x: int) -> int:
  return 1 << int(math.ceil(math.log2(max(x, 1))))


def _chunk_sizes(length: int, dim: int) -> tuple[int, ...]:
  """Documents per refinement call at padded `length`: small, 4·small and big (powers of two,
  big within the memory budget, small = big / 8). Only these shapes are compiled per length;
  a chunk takes the smallest that holds what is left, so padding stays under a quarter of the
  chunk beyond `small`, and a query's few first-stage candidates take one or two calls."""
  budget = max(1, min(_MAX_CHUNK, _CHUNK_FLOATS // (length * dim)))
  big = 1 << int(math.floor(math.log2(budget)))
  small = max(1, big // 8)
  return tuple(sorted({small, min(4 * small, big), big}))


def _next_chunk(lengths: np.ndarray, dim: int) -> tuple[int, int, int]:
  """(documents taken, padded length, chunk size) for documents of `lengths`, longest first.

  The chunk is padded to the first document's bucketed length and takes the documents longer
  than three quarters of it (all of them at the shortest bucket; the first one always), so
  padding adds at most a third to a document, as many as the smallest chunk size that holds
  them allows."""
  length = _bucket(int(lengths[0]))
  floor = min(3 * length // 4, int(lengths[0]) - 1) if length > _LENGTH_BUCKET else -1
  fits = int(np.searchsorted(-lengths, -floor, side="left"))
  sizes = _chunk_sizes(length, dim)
  size = next((z for z in sizes if z >= fits), sizes[-1])
  return min(size, fits), length, size


def _block_work(candidates: Candidates, order: np.ndarray, block: int) -> int:
  """Document scorings done with query blocks of `block`: each block scores the union of its
  queries' candidates for every query of the block."""
  work = 0
  for start in range(0, len(order), block):
    rows = order[start:start + block]
    union = np.unique(np.concatenate([candidates.docs[r] for r in rows] + [np.zeros(0, int)]))
    work += block * len(union)
  return work


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + x.shape[1:], x.dtype)
  out[:len(x)] = x
  return out


def _score_union(fn: Callable[..., jax.Array], index: TokenIndex, union: np.ndarray,
                 query_args: tuple[np.ndarray, ...], num_alignments: int, *, with_sal: bool,
                 with_ids: bool) -> np.ndarray:
  """Scores of a block of queries against the documents `union` under every alignment.

  Args:
    fn: the jitted all-pairs scorer of `_scorer`.
    index: the token index holding the documents.
    union: [U] sorted global document numbers.
    query_args: the block's (vectors [b, n, h], mask [b, n], saliences [b, n], ids [b, n]).
    num_alignments: A, the number of alignments `fn` scores under.

  Returns:
    [A, b, U] float32 scores.
  """
  q, q_mask, q_sal, q_ids = query_args
  scores = np.zeros((num_alignments, len(q), len(union)), np.float32)
  # Longest first; similar lengths share a chunk, so padding stays small.
  order = np.argsort(-index.doc_lengths[union], kind="stable")
  lengths = index.doc_lengths[union[order]]
  pos = 0
  while pos < len(union):
    count, length, size = _next_chunk(lengths[pos:], index.dim)
    take = order[pos:pos + count]
    padded = np.full(size, -1, np.int64)
    padded[:len(take)] = union[take]
    # Stored dtype in an aligned buffer: no NumPy conversion and no host copy to the device.
    g = index.gather_padded(padded, length, native_dtype=True)
    d_sal = g["salience"] if with_sal else g["mask"].astype(np.float32)
    d_ids = g["token_ids"] if with_ids else g["mask"].astype(np.int32)
    out = fn(q, q_mask, g["vectors"], g["mask"], q_sal, d_sal, q_ids, d_ids)
    scores[:, :, take] = np.asarray(out)[:, :, :len(take)]
    pos += len(take)
  return scores


def refine(index: TokenIndex, queries: QueryBatch, candidates: Candidates,
           alignment: Alignment | str, *, top_n: int = 1000, use_salience: bool = True,
           query_block: int | None = None,
           progress: Callable[[str], None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
  """Steps 4-5 with one alignment (see `refine_many`)."""
  alignment = Alignment.parse(alignment)
  return refine_many(index, queries, candidates, [alignment], top_n=top_n,
                     use_salience=use_salience, query_block=query_block,
                     progress=progress)[str(alignment)]


def refine_many(index: TokenIndex, queries: QueryBatch, candidates: Candidates,
                alignments: Sequence[Alignment | str], *, top_n: int = 1000,
                use_salience: bool = True, query_block: int | None = None,
                progress: Callable[[str], None] | None = None
                ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
  """Steps 4-5: scores each query's candidates with every alignment and keeps the top `top_n`.

  All alignments are applied in one pass over the candidates: each chunk of documents is
  gathered once and scored under every alignment in one compiled call, so refining with ten
  strategies (few-shot adaptation) costs far less than ten passes.
  Queries are refined in blocks of similar length (each block cut to its longest query): the
  union of a block's candidates is scored against every query of the block in all-pairs
  calls (`align_scores`), so a document shared by many queries' candidate sets is read once
  per block; each query keeps only its own candidates.
  With query_block = 1 exactly the candidates are scored. The default (None) uses blocks of
  32 unless that scores more than twice as many (query, document) pairs as there are
  candidates (candidate sets that overlap little), else 1.
  Compiled shapes are few and fixed: query widths in multiples of 8, document lengths in
  multiples of 32, and three chunk sizes per length (`_chunk_sizes`).

  Args:
    index: the token index whose stored vectors are scored.
    queries: the encoded queries (all their tokens are used).
    candidates: from `candidate_documents` (same query order; sorted document numbers).
    alignments: `Alignment`s or specs such as "top_k:1" or "top_p:0.015".
    top_n: how many documents to return per query.
    use_salience: pass the stored saliences to the scorer (when both sides have them).
    query_block: queries refined together (see above).
    progress: called with a line (queries done, rate, ETA) about every 10 seconds.

  Returns:
    {str(alignment): per query (global document numbers [≤ top_n] int64, scores [≤ top_n]
    float32), best first}.
  """
  parsed = tuple(dict.fromkeys(Alignment.parse(a) for a in alignments))
  if not parsed:
    raise ValueError("give at least one alignment to refine with")
  if list(candidates.query_ids) != list(queries.ids):
    raise ValueError("candidates were computed for other queries")
  with_ids = any(a.needs_token_ids for a in parsed)
  if with_ids and (queries.token_ids is None or not index.has_token_ids):
    raise ValueError(f"alignments {[str(a) for a in parsed if a.needs_token_ids]} need token "
                     "ids of queries and documents")
  with_sal = use_salience and queries.salience is not None and index.has_salience
  fn = _scorer(parsed, with_sal, with_sal, with_ids)
  num_q = len(queries)
  # Queries of similar length share a block, which is cut to its own longest query.
  q_lengths = queries.mask.sum(axis=1)
  q_order = np.argsort(q_lengths, kind="stable")
  if query_block is None:
    # Blocks read each shared document once but score the whole union for every query; one
    # query at a time scores exactly its candidates with more, smaller calls.
    block_work = _block_work(candidates, q_order, _QUERY_BLOCK)
    query_block = _QUERY_BLOCK if block_work <= 2 * int(candidates.sizes().sum()) else 1
  block = min(query_block, _pow2_at_least(num_q))
  results = {str(a): [None] * num_q for a in parsed}
  eta = _Eta(num_q, progress, f"refining with {len(parsed)} alignment(s)")
  for start in range(0, num_q, block):
    rows = [int(r) for r in q_order[start:start + block]]
    width = min(queries.mask.shape[1], max(
        _QUERY_BUCKET, int(math.ceil(q_lengths[rows].max() / _QUERY_BUCKET)) * _QUERY_BUCKET))
    cut = lambda x: _pad_rows(x[rows][:, :width], block)  # noqa: B023 (used in this iteration)
    q, q_mask = cut(queries.vectors), cut(queries.mask)
    q_sal = cut(queries.salience) if with_sal else q_mask.astype(np.float32)
    q_ids = cut(queries.token_ids) if with_ids else q_mask.astype(np.int32)
    union = np.unique(np.concatenate([candidates.docs[r] for r in rows] + [np.zeros(0, int)]))
    scores = _score_union(fn, index, union, (q, q_mask, q_sal, q_ids), len(parsed),
                          with_sal=with_sal, with_ids=with_ids)
    for i, r in enumerate(rows):
      docs = candidates.docs[r]
      where = np.searchsorted(union, docs)
      for a, alignment in enumerate(parsed):
        results[str(alignment)][r] = top_documents(docs, scores[a, i, where], top_n)
    eta.update(len(rows))
  return results  # type: ignore[return-value]


class _Eta:
  """Progress lines with a rate and an estimated time left, at most every `every` seconds."""

  def __init__(self, total: int, log: Callable[[str], None] | None, what: str,
               every: float = 10.0):
    self.total, self.log, self.what, self.every = total, log, what, every
    self.done = 0
    self.start = self.last = time.monotonic()

  def update(self, n: int) -> None:
    self.done += n
    now = time.monotonic()
    if self.log is None or (now - self.last < self.every and self.done < self.total):
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    left = (self.total - self.done) / max(rate, 1e-9)
    self.log(f"{self.what}: {self.done}/{self.total} queries, {rate:.1f}/s, "
             f"{'done' if self.done >= self.total else f'ETA {left:.0f}s'}")


def top_documents(docs: np.ndarray, scores: np.ndarray,
                  top_n: int) -> tuple[np.ndarray, np.ndarray]:
  """The `top_n` best (score descending, then lower document number) of `docs`."""
  order = np.lexsort((docs, -scores))[:top_n]
  return docs[order].astype(np.int64), scores[order].astype(np.float32)


def to_run(query_ids: Sequence[str], doc_ids: Sequence[str],
           results: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
  """Per-query (document numbers, scores) as a `Run` {query id: {document id: score}}."""
  return {q: {doc_ids[int(d)]: float(s) for d, s in zip(docs, scores)}
          for q, (docs, scores) in zip(query_ids, results)}


def retrieve(index: TokenIndex, queries: QueryBatch, alignment: Alignment | str, *,
             num_neighbors: int = 4000, prune_query_ratio: float = 1.0,
             num_refine: int | None = None, top_n: int = 1000, use_salience: bool = True,
             progress: Callable[[str], None] | None = None, allowed: np.ndarray | None = None,
             min_candidates: int | None = None,
             **search_kwargs) -> tuple[dict[str, dict[str, float]], Candidates]:
  """The whole token-index path; returns the run and the candidate sets (for reuse).
  `allowed`, `min_candidates`: see `candidate_documents`."""
  candidates = candidate_documents(index, queries, num_neighbors=num_neighbors,
                                   prune_query_ratio=prune_query_ratio,
                                   num_refine=num_refine, allowed=allowed,
                                   min_candidates=min_candidates, **search_kwargs)
  if progress is not None:
    sizes = candidates.sizes()
    progress(f"candidates per query: mean {sizes.mean():.0f}, max {sizes.max()}")
  results = refine(index, queries, candidates, alignment, top_n=top_n,
                   use_salience=use_salience)
  return to_run(queries.ids, index.doc_ids, results), candidates
