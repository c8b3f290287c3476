"""Readers for training files that name queries and documents by id.

Formats (ids are matched against the collection's queries and corpus):
  triples by id        `qid<TAB>pid_pos<TAB>pid_neg` (MS MARCO qidpidtriples)
  teacher-score triples `score_pos<TAB>score_neg<TAB>qid<TAB>pid_pos<TAB>pid_neg` (the common
                       cross-encoder distillation format)
  hard-negative JSONL  {"qid": id, "pos": [ids], "neg": [ids], "scores": {pid: score}}
                       (`scores` optional; when teacher scores are asked for it must cover every
                       pos and neg of the line)

All become `TrainingGroups`: one group per (query, positive) pair; its pool is the negatives
listed with that pair (triples) or with the query (JSONL), in file order, without duplicates
and without the query's own positives. Rows are held in NumPy arrays, so tens of millions of
triples fit in memory.
"""

import array
import os

import numpy as np

from aligner_jax.data import lines
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import GroupBuilder
from aligner_jax.data.collection import TrainingGroups
from aligner_jax.data.errors import ProblemLog


def _lookup(path, number, collection: Collection, qid: str, pids, log: ProblemLog):
  """Rows of qid and pids, or None after reporting unknown (or refused) ids."""
  ok = True
  q = collection.queries.index.get(qid)
  if q is None:
    log.add(path, number, collection.queries.why_missing(qid, "query", "the queries"))
    ok = False
  rows = []
  for pid in pids:
    r = collection.corpus.index.get(pid)
    if r is None:
      log.add(path, number, collection.corpus.why_missing(pid, "document", "the corpus"))
      ok = False
    rows.append(r)
  return (q, rows) if ok else None


def _groups_from_triples(q: np.ndarray, p: np.ndarray, n: np.ndarray,
                         score_p: np.ndarray | None, score_n: np.ndarray | None
                         ) -> TrainingGroups:
  """Groups (q, p) pairs; pools keep the first-seen order of each pair's negatives."""
  order = np.lexsort((np.arange(len(q)), p, q))  # stable: file order within a pair
  q, p, n = q[order], p[order], n[order]
  if score_p is not None:
    score_p, score_n = score_p[order], score_n[order]
  starts = np.flatnonzero(np.r_[True, (q[1:] != q[:-1]) | (p[1:] != p[:-1])])
  ends = np.r_[starts[1:], len(q)]
  # Groups in order of first appearance in the file, so the pipeline's unshuffled order
  # follows the file.
  first_line = order[starts]
  builder = GroupBuilder(with_teacher_scores=score_p is not None)
  for g in np.argsort(first_line, kind="stable"):
    s, e = starts[g], ends[g]
    seen: dict[int, int] = {}
    for j in range(s, e):
      if int(n[j]) != int(p[s]) and int(n[j]) not in seen:
        seen[int(n[j])] = j
    pool = list(seen)
    if score_p is None:
      builder.add(int(q[s]), int(p[s]), pool)
    else:
      builder.add(int(q[s]), int(p[s]), pool, float(score_p[s]),
                  [float(score_n[j]) for j in seen.values()])
  return builder.build()


def read_id_triples(path: str | os.PathLike, collection: Collection,
                    log: ProblemLog) -> TrainingGroups | None:
  """`qid pid_pos pid_neg` rows (tab-separated)."""
  path = os.fspath(path)
  q, p, n = array.array("q"), array.array("q"), array.array("q")
  for number, fields in lines.read_tsv(path, log, columns=3):
    found = _lookup(path, number, collection, fields[0].strip(),
                    [f.strip() for f in fields[1:]], log)
    if found is not None:
      q.append(found[0])
      p.append(found[1][0])
      n.append(found[1][1])
  if log or not len(q):
    if not log:
      log.add(path, None, "no triples")
    return None
  return _groups_from_triples(np.frombuffer(q, np.int64), np.frombuffer(p, np.int64),
                              np.frombuffer(n, np.int64), None, None)


def read_teacher_triples(path: str | os.PathLike, collection: Collection,
                         log: ProblemLog) -> TrainingGroups | None:
  """`score_pos score_neg qid pid_pos pid_neg` rows (tab-separated)."""
  path = os.fspath(path)
  q, p, n = array.array("q"), array.array("q"), array.array("q")
  sp, sn = array.array("f"), array.array("f")
  for number, fields in lines.read_tsv(path, log, columns=5):
    s_pos = lines.parse_float(path, number, fields[0].strip(), "positive teacher score", log)
    s_neg = lines.parse_float(path, number, fields[1].strip(), "negative teacher score", log)
    found = _lookup(path, number, collection, fields[2].strip(),
                    [f.strip() for f in fields[3:]], log)
    if found is None or s_pos is None or s_neg is None:
      continue
    q.append(found[0])
    p.append(found[1][0])
    n.append(found[1][1])
    sp.append(s_pos)
    sn.append(s_neg)
  if log or not len(q):
    if not log:
      log.add(path, None, "no triples")
    return None
  return _groups_from_triples(np.frombuffer(q, np.int64), np.frombuffer(p, np.int64),
                              np.frombuffer(n, np.int64), np.frombuffer(sp, np.float32),
                              np.frombuffer(sn, np.float32))


def _id_list(path, number, obj, key, log) -> list[str] | None:
  value = obj.get(key)
  if value is None:
    log.add(path, number, f"missing `{key}`")
    return None
  if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (str, int))
                                        for v in value):
    log.add(path, number, f"`{key}` must be a list of ids")
    return None
  return [str(v) for v in value]


def read_hard_negatives_jsonl(path: str | os.PathLike, collection: Collection, log: ProblemLog,
                              *, teacher_scores: bool) -> TrainingGroups | None:
  """`{"qid", "pos", "neg", "scores"}` lines; `teacher_scores` requires and keeps `scores`."""
  path = os.fspath(path)
  builder = GroupBuilder(with_teacher_scores=teacher_scores)
  first_line: dict[str, int] = {}
  for number, obj in lines.read_jsonl(path, log):
    qid = lines.get_string(path, number, obj, "qid", log, is_id=True)
    pos = _id_list(path, number, obj, "pos", log)
    neg = _id_list(path, number, obj, "neg", log)
    if qid is None or pos is None or neg is None:
      continue
    if not pos:
      log.add(path, number, "empty `pos`: a training query needs a positive document")
      continue
    if qid in first_line:
      log.add(path, number, f"duplicate query id {qid!r} (first at line {first_line[qid]})")
      continue
    first_line[qid] = number
    scores = None
    if teacher_scores:
      raw = obj.get("scores")
      if not isinstance(raw, dict):
        log.add(path, number, "missing `scores` (teacher scores are required for this task)")
        continue
      missing = [d for d in pos + neg if d not in raw]
      if missing:
        log.add(path, number, f"`scores` has no score for document {missing[0]!r}")
        continue
      bad = [d for d in pos + neg
             if isinstance(raw[d], bool) or not isinstance(raw[d], (int, float))]
      if bad:
        log.add(path, number, f"score of document {bad[0]!r} is not a number")
        continue
      scores = {d: float(raw[d]) for d in pos + neg}
    found = _lookup(path, number, collection, qid, pos + neg, log)
    if found is None:
      continue
    q, rows = found
    pos_rows, neg_rows = rows[:len(pos)], rows[len(pos):]
    pool: list[int] = []
    pool_ids: list[str] = []
    for r, d in zip(neg_rows, neg):
      if r not in pos_rows and r not in pool:
        pool.append(r)
        pool_ids.append(d)
    for r, d in zip(pos_rows, pos):
      if scores is None:
        builder.add(q, r, pool)
      else:
        builder.add(q, r, pool, scores[d], [scores[x] for x in pool_ids])
  if not log and not first_line:
    log.add(path, None, "no training queries")
  return None if log else builder.build()
