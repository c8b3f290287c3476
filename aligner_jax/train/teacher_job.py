"""Teacher scores: a cross-encoder scores each judged query's candidates
(`gin/runs/score_candidates.gin`), for distillation and for re-ranking evaluation.

Candidates: BM25's top `depth` (`retrieval.bm25`, over the texts the encoders read: the BM25 of
the evaluation jobs) or a TREC run file (another retriever's run), cut at `depth`. With
`include_positives` (teacher scores for training) the documents judged relevant for the query
are scored too, so every training example has a scored positive; without (evaluation) the
candidates are re-ranked as they are.

Outputs in OUTPUT_DIR, each written atomically once complete (a rerun computes the same; the
scores of every finished chunk of pairs are kept in OUTPUT_DIR/partial/, keyed by the teacher's
params, the settings and the pairs, so a killed job resumes where it was):
  teacher_scores.jsonl  one line per query, {"qid", "pos", "neg", "scores"}: the hard-negative
                        JSONL of aligner_jax/data/training_files.py, which the tasks
                        `beir_<name>_train_teacher` read (data key "teacher/<name>")
  run.trec              the candidates ranked by the teacher
  metrics.json          that run judged against the split (without `include_positives` only)

The teacher is a `CrossEncoder` with the params of a trainer checkpoint (MODEL_DIR, e.g.
gin/experiments/scifact_cross_encoder.gin) or of a Hugging Face BertForSequenceClassification
directory (`checkpoint_path`). Pairs are packed as in training (`cross_encoder.candidate_scores`).
"""

import hashlib
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np

from aligner_jax.data import features as features_lib
from aligner_jax.data import loaders
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.data.collection import Collection
from aligner_jax.eval import inputs as inputs_lib
from aligner_jax.eval import retrieval_jobs
from aligner_jax.eval.results import write_results
from aligner_jax.io import atomic_write
from aligner_jax.io import write_json
from aligner_jax.retrieval import runs as runs_lib
from aligner_jax.retrieval.bm25 import BM25
from aligner_jax.retrieval.corpus_shards import params_fingerprint
from aligner_jax.retrieval.encoding import tokenize
from aligner_jax.train import cross_encoder

TEACHER_FILE = loaders.TEACHER_FILE  # what the beir_<name>_train_teacher tasks read


class PairScorer:
  """Scores (query, document) text pairs with a CrossEncoder in fixed-shape batches.

  Args:
    module, params: the CrossEncoder.
    vocabulary: a vocabulary name or path (`get_vocabulary`).
    query_length, doc_length: each side is framed and cut to this many tokens, then packed.
    skip_doc_prefix: document framing tokens dropped when packing (BERT 1, T5 0).
    batch_size: pairs per call (the last batch is padded).
  """

  def __init__(self, module: Any, params: Any, vocabulary: str, *, query_length: int,
               doc_length: int, skip_doc_prefix: int = 1, batch_size: int = 32):
    self.vocab = vocab_lib.get_vocabulary(vocabulary)
    self.lengths = (query_length, doc_length)
    self.batch_size = batch_size
    self.params = jax.device_put(params)
    max_length = query_length + doc_length - skip_doc_prefix

    def score(p, q, d):  # q [P, n], d [P, m] -> [P]
      return cross_encoder.candidate_scores(module, p, q, d[:, None], max_length=max_length,
                                            skip_doc_prefix=skip_doc_prefix,
                                            pad_id=self.vocab.pad_id)[:, 0]

    self._score = jax.jit(score)

  def _tokens(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [U, length] of the distinct texts, index [len(texts)] into them)."""
    distinct, index = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    rows = tokenize(self.vocab, list(distinct), length)
    return features_lib.pad_rows(rows, length, self.vocab.pad_id), index

  def score(self, queries: Sequence[str], documents: Sequence[str], *,
            log=None) -> np.ndarray:
    """[P] float32: the score of queries[i] with documents[i]."""
    q_ids, q_index = self._tokens(queries, self.lengths[0])
    d_ids, d_index = self._tokens(documents, self.lengths[1])
    out = np.zeros(len(queries), np.float32)
    start_time, b = time.time(), self.batch_size
    for start in range(0, len(queries), b):
      rows = np.arange(start, min(start + b, len(queries)))
      take = np.resize(rows, b)  # the last batch repeats its rows to keep one shape
      out[rows] = np.asarray(self._score(self.params, q_ids[q_index[take]],
                                         d_ids[d_index[take]]))[:len(rows)]
      done = rows[-1] + 1
      if log is not None and (done == len(queries) or (start // b) % 50 == 49):
        rate = done / max(time.time() - start_time, 1e-9)
        log(f"scored {done}/{len(queries)} pairs ({rate:.1f}/s)")
    return out


def bm25_candidates(collection: Collection, query_ids: Sequence[str], depth: int
                    ) -> dict[str, list[str]]:
  """Each query's top `depth` BM25 documents, best first."""
  corpus, queries = collection.corpus, collection.queries
  bm25 = BM25(corpus.ids, [corpus.text(i) for i in range(len(corpus))])
  texts = [queries.text(queries.index[q]) for q in query_ids]
  return {q: [corpus.ids[r] for r in rows.tolist()]
          for q, (rows, _) in zip(query_ids, bm25.search(texts, depth))}


def run_candidates(path: str, query_ids: Sequence[str], depth: int,
                   collection: Collection) -> dict[str, list[str]]:
  """Each query's top `depth` documents of a TREC run file (queries it lacks get none)."""
  run = runs_lib.read_trec_run(path)
  unknown = sorted({d for docs in run.values() for d in docs} - set(collection.corpus.index))
  if unknown:
    raise ValueError(f"{path}: document {unknown[0]!r} is not in the corpus of "
                     f"{collection.name} ({len(unknown)} unknown)")
  return {q: [d for d, _ in runs_lib.ranked(run.get(q, {}))[:depth]] for q in query_ids}


def candidate_lists(collection: Collection, split: str, *, candidates: str, depth: int,
                    include_positives: bool) -> dict[str, list[str]]:
  """Query id -> the documents to score (candidates, then any relevant ones not among them)."""
  query_ids = collection.split_queries(split)
  if candidates == "bm25":
    lists = bm25_candidates(collection, query_ids, depth)
  else:
    lists = run_candidates(candidates, query_ids, depth, collection)
  if include_positives:
    judged = collection.qrels[split]
    for q in query_ids:
      lists[q] = lists[q] + [d for d, r in judged[q].items() if r > 0 and d not in lists[q]]
  return lists


def teacher_lines(collection: Collection, split: str, lists: dict[str, list[str]],
                  scores: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
  """The teacher-score JSONL lines: queries with a relevant document and a candidate."""
  judged = collection.qrels[split]
  out = []
  for q, docs in lists.items():
    pos = [d for d in docs if judged[q].get(d, 0) > 0]
    neg = [d for d in docs if judged[q].get(d, 0) <= 0]
    if pos and neg:
      out.append({"qid": q, "pos": pos, "neg": neg, "scores": scores[q]})
  return out


def load_cross_encoder(module: Any, *, model_dir: str | None = None,
                       checkpoint_path: str | None = None) -> tuple[Any, Any]:
  """(CrossEncoder, params): a trainer checkpoint under `model_dir`, else a Hugging Face
  cross-encoder directory (`checkpoint_path`, whose own module replaces `module`)."""
  if model_dir:
    return module, retrieval_jobs.restore_trained_params(model_dir)
  if not checkpoint_path:
    raise ValueError("no teacher: set MODEL_DIR (a trained cross-encoder) or CHECKPOINT_PATH "
                     "(a Hugging Face BertForSequenceClassification directory)")
  from aligner_jax.models import cross_encoder_from_pretrained  # pylint: disable=g-import-not-at-top
  return cross_encoder_from_pretrained(checkpoint_path)


def _write(out: pathlib.Path, collection: Collection, split: str, lists, scores, *,
           include_positives: bool, setup: dict[str, Any], seconds: float) -> dict[str, Any]:
  lines = teacher_lines(collection, split, lists, scores)
  atomic_write(out / TEACHER_FILE, "".join(json.dumps(line, sort_keys=True) + "\n"
                                           for line in lines))
  inputs_lib.print_log(f"{out / TEACHER_FILE}: {len(lines)} queries")
  if include_positives:  # relevant documents were added: the run is not an evaluation
    runs_lib.write_trec_run(out / "run.trec", scores, run_name="teacher")
    return {"queries": len(lines)}
  return write_results(out, collection, split, {"teacher": scores}, timings={"score_s": seconds},
                       setup=setup, run_name="teacher", log=inputs_lib.print_log)


def _chunk_key(fingerprint: str, settings: dict[str, Any], pairs: Sequence[tuple[str, str]]
               ) -> str:
  """What a chunk's scores depend on: the teacher's params, the settings, the pairs."""
  digest = hashlib.sha256(json.dumps([fingerprint, settings, list(pairs)],
                                     sort_keys=True).encode())
  return digest.hexdigest()


def chunked_scores(scorer: PairScorer, collection: Collection, pairs: list[tuple[str, str]],
                   partial_dir: pathlib.Path, key_of, *, chunk: int = 2048) -> list[float]:
  """Scores of `pairs`, `chunk` pairs at a time; each chunk's scores are kept in `partial_dir`
  (atomically) with the key of what made them, so a killed job resumes with the chunks it had
  finished, and a changed teacher, setting or candidate list never reuses them."""
  queries, corpus = collection.queries, collection.corpus
  out: list[float] = []
  for i, start in enumerate(range(0, len(pairs), chunk)):
    part = pairs[start:start + chunk]
    key, path = key_of(part), partial_dir / f"chunk-{i:05d}.json"
    if path.is_file():
      saved = json.loads(path.read_text(encoding="utf-8"))
      if saved.get("key") == key:
        out.extend(saved["scores"])
        continue
    values = scorer.score([queries.text(queries.index[q]) for q, _ in part],
                          [corpus.text(corpus.index[d]) for _, d in part])
    write_json(path, {"key": key, "scores": values.tolist()})
    out.extend(values.tolist())
    inputs_lib.print_log(f"scored {start + len(part)}/{len(pairs)} pairs")
  return out


def score_candidates(*, beir_dir: str, split: str, output_dir: str, model: tuple[Any, Any],
                     vocabulary: str, candidates: str = "bm25", depth: int = 100,
                     include_positives: bool = False, query_length: int = 32,
                     doc_length: int = 128, skip_doc_prefix: int = 1, batch_size: int = 32,
                     strict_data: bool | None = None) -> dict[str, Any]:
  """The job (see the module docstring); returns metrics.json's content, or the number of
  queries written when `include_positives`."""
  collection = inputs_lib.load_split(beir_dir, split, strict=strict_data)
  lists = candidate_lists(collection, split, candidates=candidates, depth=depth,
                          include_positives=include_positives)
  pairs = [(q, d) for q, docs in lists.items() for d in docs]
  inputs_lib.print_log(f"{collection.name}/{split}: {len(lists)} queries, {len(pairs)} pairs "
                       f"({candidates} top {depth}{' + positives' if include_positives else ''})")
  module, params = model
  scorer = PairScorer(module, params, vocabulary, query_length=query_length,
                      doc_length=doc_length, skip_doc_prefix=skip_doc_prefix,
                      batch_size=batch_size)
  setup = {"candidates": candidates, "depth": depth, "query_length": query_length,
           "doc_length": doc_length}
  fingerprint = params_fingerprint(params)
  settings = {**setup, "skip_doc_prefix": skip_doc_prefix, "vocabulary": vocabulary,
              "module": repr(module)}
  out = pathlib.Path(output_dir)
  t = time.time()
  values = chunked_scores(scorer, collection, pairs, out / "partial",
                          lambda part: _chunk_key(fingerprint, settings, part))
  scores: dict[str, dict[str, float]] = {q: {} for q in lists}
  for (q, d), s in zip(pairs, values):
    scores[q][d] = s
  return _write(out, collection, split, lists, scores, include_positives=include_positives,
                setup=setup, seconds=time.time() - t)
