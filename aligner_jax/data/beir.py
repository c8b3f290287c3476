"""Reader for collections in BEIR layout, with the checks training and evaluation rely on.

Layout of a BEIR directory:
  corpus.jsonl       {"_id": str, "title": str (optional), "text": str, "metadata": {...}
                     (optional, kept per document: filtered search reads it)}
  queries.jsonl      {"_id": str, "text": str, "metadata": {...} (optional)}
  qrels/<split>.tsv  header `query-id<TAB>corpus-id<TAB>score`, then one judgement per row
                     (integer score; > 0 relevant)

Checks (each reported as `file:line: problem`): invalid UTF-8, broken JSON, missing `_id` or
`text`, an empty query, duplicate ids, wrong column count or header in qrels, a non-integer
score, a duplicate judgement, and judgements that name an unknown query or document. All
problems of all files are collected before raising one `DataError`.

A document whose title and text are both empty is legal (BEIR's own loader keeps such records):
it is kept and reported as a warning (`Collection.warnings`), unless strict mode refuses it
(`strict=True`, or `ALIGNER_STRICT_DATA=1` when `strict` is None). A judgement naming a refused
row says that row was refused, never that its id is unknown.

Corpora larger than memory: `CorpusFile` reads a range of documents at a time (the encode
job), and `read_split_queries` reads one split's queries without the corpus.
"""

import array
import hashlib
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from aligner_jax.data import lines
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import Qrels
from aligner_jax.data.collection import Table
from aligner_jax.data.collection import admit_empty_document
from aligner_jax.data.collection import document_text
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries
from aligner_jax.data.errors import DEFAULT_MAX_PROBLEMS
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import fail
from aligner_jax.data.errors import strict_mode

QRELS_HEADER = ("query-id", "corpus-id", "score")


def _metadata(path: str, number: int, obj: dict[str, Any], log: ProblemLog
              ) -> dict[str, Any] | None:
  """A line's optional `metadata` object ({} when absent); None (a problem) when it is not one."""
  metadata = obj.get("metadata") or {}
  if not isinstance(metadata, dict):
    log.add(path, number, f"`metadata` must be a JSON object, got {type(metadata).__name__}")
    return None
  return metadata


def _document(path: str, number: int, obj: dict[str, Any], log: ProblemLog, *,
              strict: bool) -> tuple[str | None, tuple[str, str, dict[str, Any]] | None]:
  """(id or None, (title, text, metadata) or None when the line is refused) of one corpus
  line's object; every problem or warning is reported to `log`."""
  doc_id = lines.get_string(path, number, obj, "_id", log, is_id=True)
  text = lines.get_string(path, number, obj, "text", log, allow_empty=True)
  title = lines.get_string(path, number, obj, "title", log, required=False, allow_empty=True)
  metadata = _metadata(path, number, obj, log)
  if doc_id is None or text is None or metadata is None:
    return doc_id, None
  empty = not text.strip() and not (title or "").strip()
  if empty and not admit_empty_document(log, path, number, doc_id, strict=strict):
    return doc_id, None
  return doc_id, (title or "", text, metadata)


def read_corpus_jsonl(path: str | os.PathLike, log: ProblemLog, *,
                      strict: bool | None = None) -> Table:
  """Documents of a BEIR `corpus.jsonl`; one with neither title nor text is kept with a
  warning, or refused in strict mode (see the module docstring)."""
  path = os.fspath(path)
  strict = strict_mode(strict)
  corpus = new_corpus()
  first_line: dict[str, int] = {}
  for number, obj in lines.read_jsonl(path, log):
    doc_id, entry = _document(path, number, obj, log, strict=strict)
    if doc_id is None:
      continue
    if doc_id in first_line:
      log.add(path, number,
              f"duplicate document id {doc_id!r} (first at line {first_line[doc_id]})")
      continue
    if entry is None:
      corpus.refuse(doc_id, path, number)
      continue
    first_line[doc_id] = number
    title, text, metadata = entry
    corpus.add(doc_id, text, title=title, metadata=metadata)
  return corpus


def _id_digest(doc_id: str) -> int:
  return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


class CorpusFile:
  """A BEIR `corpus.jsonl` read a range of documents at a time, never whole.

  Opening it reads the file once with every check of `read_corpus_jsonl` and keeps, per
  document, only where its line starts and a 64-bit digest of its id (16 bytes a document, for
  the duplicate check); `read_rows(rows)` seeks to the first of `rows` and parses just those
  lines. Rows count documents in file order, as `read_corpus_jsonl` numbers them. Documents
  with neither title nor text are kept with a warning (`warnings`) or, in strict mode, refused
  as `read_corpus_jsonl` does.
  """

  def __init__(self, path: str | os.PathLike, *, max_problems: int = DEFAULT_MAX_PROBLEMS,
               strict: bool | None = None):
    self.path = lines.check_file(path)
    self.strict = strict_mode(strict)
    log = ProblemLog(max_problems)
    starts, digests = array.array("q"), array.array("Q")
    with open(self.path, "rb") as f:
      position = 0
      for number, raw in enumerate(f, start=1):
        start, position = position, position + len(raw)
        entry = self._parse(number, raw, log)
        if entry is not None:
          starts.append(start)
          digests.append(_id_digest(entry[0]))
    self.starts = np.frombuffer(starts, np.int64) if starts else np.zeros(0, np.int64)
    self.warnings = log.warnings()
    log.raise_if_any()
    sorted_digests = np.sort(np.frombuffer(digests, np.uint64)) if digests else None
    if sorted_digests is not None and np.any(sorted_digests[1:] == sorted_digests[:-1]):
      # Rare: name each duplicate with its lines (the full reader); equal digests of distinct
      # ids find nothing there and are fine.
      read_corpus_jsonl(self.path, log, strict=self.strict)
      log.raise_if_any()

  def _parse(self, number: int, raw: bytes, log: ProblemLog
             ) -> tuple[str, str, str, dict[str, Any]] | None:
    text = lines.decode_line(self.path, number, raw, log)
    obj = None if text is None else lines.parse_json_object(self.path, number, text, log)
    if obj is None:
      return None
    doc_id, entry = _document(self.path, number, obj, log, strict=self.strict)
    return None if doc_id is None or entry is None else (doc_id, *entry)

  def __len__(self) -> int:
    return len(self.starts)

  def read_rows(self, rows: range, *, with_metadata: bool = False
                ) -> tuple[list[str], list[str]] | tuple[list[str], list[str], list[dict]]:
    """(ids, texts as the encoders read them) of documents `rows` (a step-1 range), and with
    `with_metadata` their metadata objects ({} when a line has none)."""
    if rows.step != 1 or rows.start < 0 or rows.stop > len(self):
      raise IndexError(f"rows {rows} are not a step-1 range within {len(self)} documents")
    ids, texts, metadata = [], [], []
    if not rows:
      return (ids, texts, metadata) if with_metadata else (ids, texts)
    log = ProblemLog()
    with open(self.path, "rb") as f:
      f.seek(int(self.starts[rows.start]))
      while len(ids) < len(rows):
        raw = f.readline()
        if not raw:
          raise fail(self.path, None, "the file became shorter after it was opened")
        entry = self._parse(0, raw, log)
        if log:
          raise fail(self.path, None, "the file changed after it was opened")
        if entry is not None:
          ids.append(entry[0])
          texts.append(document_text(entry[1], entry[2]))
          metadata.append(entry[3])
    return (ids, texts, metadata) if with_metadata else (ids, texts)


def read_queries_jsonl(path: str | os.PathLike, log: ProblemLog) -> Table:
  """Queries of a BEIR `queries.jsonl` (metadata kept, e.g. the demo's query family)."""
  path = os.fspath(path)
  queries = new_queries()
  first_line: dict[str, int] = {}
  for number, obj in lines.read_jsonl(path, log):
    query_id = lines.get_string(path, number, obj, "_id", log, is_id=True)
    text = lines.get_string(path, number, obj, "text", log, what="`text` (query)")
    metadata = obj.get("metadata") or {}
    bad_metadata = not isinstance(metadata, dict)
    if bad_metadata:
      log.add(path, number, f"`metadata` must be a JSON object, got {type(metadata).__name__}")
    if query_id is None:
      continue
    if text is None or bad_metadata:
      queries.refuse(query_id, path, number)
      continue
    if query_id in first_line:
      log.add(path, number,
              f"duplicate query id {query_id!r} (first at line {first_line[query_id]})")
      continue
    first_line[query_id] = number
    queries.add(query_id, text, metadata=metadata)
  return queries


def read_qrels_tsv(path: str | os.PathLike, log: ProblemLog, *, queries: Table | None,
                   corpus: Table | None) -> Qrels:
  """BEIR qrels (with header); ids are checked against `queries`/`corpus` when given."""
  path = os.fspath(path)
  qrels: Qrels = {}
  rows = lines.read_tsv(path, log, columns=3, header=QRELS_HEADER)
  for number, (qid, did, score_text) in rows:
    add_judgement(path, number, qid, did, score_text, qrels, log, queries=queries, corpus=corpus)
  return qrels


def add_judgement(path: str, number: int, qid: str, did: str, score_text: str, qrels: Qrels,
                  log: ProblemLog, *, queries: Table | None, corpus: Table | None) -> None:
  """Checks one judgement and adds it to `qrels` (shared by BEIR and TREC-style qrels)."""
  score = lines.parse_int(path, number, score_text.strip(), "relevance score", log)
  if score is None:
    return
  ok = True
  if not qid:
    log.add(path, number, "empty query id")
    ok = False
  elif queries is not None and qid not in queries.index:
    log.add(path, number, queries.why_missing(qid, "query", "the queries file"))
    ok = False
  if not did:
    log.add(path, number, "empty document id")
    ok = False
  elif corpus is not None and did not in corpus.index:
    log.add(path, number, corpus.why_missing(did, "document", "the corpus"))
    ok = False
  if not ok:
    return
  docs = qrels.setdefault(qid, {})
  if did in docs:
    log.add(path, number, f"duplicate judgement for query {qid!r} and document {did!r}")
    return
  docs[did] = score


def available_splits(path: str | os.PathLike) -> list[str]:
  """Split names with a `qrels/<split>.tsv` file, sorted."""
  qrels_dir = pathlib.Path(path) / "qrels"
  if not qrels_dir.is_dir():
    return []
  return sorted(p.stem for p in qrels_dir.glob("*.tsv"))


def _check_splits(root: pathlib.Path, splits: Sequence[str]) -> None:
  if not root.is_dir():
    raise fail(str(root), None, "BEIR directory not found (expected corpus.jsonl, "
               "queries.jsonl and qrels/<split>.tsv inside)")
  found = available_splits(root)
  missing = [s for s in splits if s not in found]
  if missing:
    raise fail(str(root / "qrels" / f"{missing[0]}.tsv"), None,
               f"file not found (splits with qrels here: {', '.join(found) or 'none'})")

def read_beir(path: str | os.PathLike, *, splits: Sequence[str] | None = None,
              name: str | None = None, max_problems: int = DEFAULT_MAX_PROBLEMS,
              strict: bool | None = None) -> Collection:
  """Reads and checks a BEIR directory; raises `DataError` listing every problem found.

  Args:
    path: the directory holding corpus.jsonl, queries.jsonl and qrels/.
    splits: the qrels splits to read; None reads every `qrels/*.tsv`.
    name: the collection's name (default: the directory name).
    max_problems: how many problems (and warnings) are listed (all are counted).
    strict: refuse documents with neither title nor text instead of keeping them with a
      warning; None: the `ALIGNER_STRICT_DATA` environment variable decides.
  """
  root = pathlib.Path(path)
  splits = available_splits(root) if splits is None else splits
  _check_splits(root, splits)
  log = ProblemLog(max_problems)
  found = available_splits(root)
  if splits is None:
    splits = found
  missing = [s for s in splits if s not in found]
  if missing:
    raise fail(str(root / "qrels" / f"{missing[0]}.tsv"), None,
               f"file not found (splits with qrels here: {', '.join(found) or 'none'})")
  corpus = read_corpus_jsonl(root / "corpus.jsonl", log, strict=strict)
  queries = read_queries_jsonl(root / "queries.jsonl", log)
  qrels = {s: read_qrels_tsv(root / "qrels" / f"{s}.tsv", log, queries=queries, corpus=corpus)
           for s in splits}
  log.raise_if_any()
  return Collection(name=name or root.name, corpus=corpus, queries=queries, qrels=qrels,
                    warnings=log.warnings())
  return Collection(name=name or root.name, corpus=corpus, queries=queries, qrels=qrels)


def read_split_queries(path: str | os.PathLike, split: str, *,
                       max_problems: int = DEFAULT_MAX_PROBLEMS) -> Table:
  """The queries judged in `split`, in the order of the query file, without reading the corpus
  (the judgements' document ids are therefore not checked here)."""
  root = pathlib.Path(path)
  _check_splits(root, [split])
  log = ProblemLog(max_problems)
  queries = read_queries_jsonl(root / "queries.jsonl", log)
  qrels = read_qrels_tsv(root / "qrels" / f"{split}.tsv", log, queries=queries, corpus=None)
  log.raise_if_any()
  judged = new_queries()
  for row, query_id in enumerate(queries.ids):
    if query_id in qrels:
      judged.add(query_id, queries.texts[row], metadata=queries.metadata[row])
  return judged
