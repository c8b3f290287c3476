"""The in-memory form every reader produces: a corpus, queries, relevance judgements and
training groups.

Conventions:
  * Ids are strings, as in the files (`"31715818"`, not an integer), and unique per table.
  * A document's text as the encoders see it is `document_text(title, text)`: the title, a
    space and the body (the body alone when there is no title) -- the usual BEIR convention.
  * A document with neither title nor text is legal (real collections hold such records): its
    text is "", it is encoded as the model's framing tokens only, and BM25 never retrieves it.
    Readers keep it with a warning (`admit_empty_document`); strict mode refuses it.
  * `Qrels` maps query id -> {document id -> integer relevance}; relevance > 0 means relevant,
    0 (or less) is an explicit non-relevant judgement.
  * A `TrainingGroup` is one training instance: a query, one positive document and a pool of
    negative documents (indices into the corpus) from which each epoch draws its negatives,
    with optional teacher scores for the positive and for each pool entry.
"""

import dataclasses
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import Warnings

Qrels = dict[str, dict[str, int]]


def document_text(title: str, text: str) -> str:
  """The text a document is encoded as: `title + " " + text`, or the part that is present."""
  title, text = title.strip(), text.strip()
  if title and text:
    return f"{title} {text}"
  return title or text


def admit_empty_document(log: ProblemLog, path: str | os.PathLike, line: int | None,
                         doc_id: str, *, strict: bool) -> bool:
  """Reports a document with neither title nor text; True when it is kept (not `strict`)."""
  if strict:
    log.add(os.fspath(path), line, f"empty text (document {doc_id!r} has neither title nor "
            "text; refused in strict mode)")
    return False
  log.add_warning(os.fspath(path), line, f"empty document {doc_id!r} (neither title nor "
                  "text): kept, encoded as its framing tokens only")
  return True


@dataclasses.dataclass
class Table:
  """Ids with texts (and, for queries, optional metadata), plus an id -> row index map.

  `refused` maps the id of a row a reader refused (e.g. an empty document in strict mode) to
  where it was (`file:line`), so a judgement naming it says so instead of calling the id
  unknown; a table returned by a reader never has any, since refusing is a problem.
  """
  ids: list[str] = dataclasses.field(default_factory=list)
  texts: list[str] = dataclasses.field(default_factory=list)
  titles: list[str] | None = None  # documents only
  metadata: list[dict[str, Any]] | None = None  # queries only
  # documents: row -> metadata, only for rows that have some (most corpora have none)
  document_metadata: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
  index: dict[str, int] = dataclasses.field(default_factory=dict)
  refused: dict[str, str] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.ids)

  def add(self, id_: str, text: str, *, title: str | None = None,
          metadata: dict[str, Any] | None = None) -> int:
    row = len(self.ids)
    self.ids.append(id_)
    self.texts.append(text)
    if self.titles is not None:
      self.titles.append(title or "")
    if self.metadata is not None:
      self.metadata.append(metadata or {})
    elif metadata:
      self.document_metadata[row] = metadata
    self.index[id_] = row
    return row

  def text(self, row: int) -> str:
    """What the encoder reads for this row (title and body for documents)."""
    if self.titles is not None:
      return document_text(self.titles[row], self.texts[row])
    return self.texts[row]

  def refuse(self, id_: str, path: str | os.PathLike, line: int) -> None:
    """Remembers that the row with this id was refused at line `line` of `path` (see
    `refused`; the file is named by its base name, the judgement's own file is beside it)."""
    if id_ not in self.index:
      self.refused.setdefault(id_, f"{os.path.basename(os.fspath(path))}:{line}")

  def why_missing(self, id_: str, what: str, where: str) -> str:
    """Why `id_` (a `what`, e.g. "document") has no row: refused while reading, or unknown
    (absent from `where`, e.g. "the corpus")."""
    if id_ in self.refused:
      return (f"{what} id {id_!r} names a {what} refused at {self.refused[id_]} (see the "
              "problem reported there)")
    return f"unknown {what} id {id_!r} (not in {where})"

  def num_empty(self) -> int:
    """How many rows have no text at all (documents: neither title nor text)."""
    return sum(1 for row in range(len(self)) if not self.text(row))

  def metadata_of(self, row: int) -> dict[str, Any]:
    """The row's metadata object ({} when it has none)."""
    if self.metadata is not None:
      return self.metadata[row]
    return self.document_metadata.get(row, {})

  def read_rows(self, rows: range, *, with_metadata: bool = False
                ) -> tuple[list[str], list[str]] | tuple[list[str], list[str], list[dict]]:
    """(ids, texts as the encoders read them) of `rows`, and with `with_metadata` their
    metadata; the in-memory twin of `beir.CorpusFile.read_rows`."""
    ids, texts = [self.ids[r] for r in rows], [self.text(r) for r in rows]
    if with_metadata:
      return ids, texts, [self.metadata_of(r) for r in rows]
    return ids, texts


def new_corpus() -> Table:
  return Table(titles=[])


def new_queries() -> Table:
  return Table(metadata=[])


@dataclasses.dataclass
class TrainingGroups:
  """Training instances as parallel arrays (compact enough for millions of rows).

  `negatives[offsets[g]:offsets[g + 1]]` is the negative pool of group g (corpus rows, best
  first); `teacher_negative[...]` holds their teacher scores when `teacher_positive` is set.
  """
  query: np.ndarray  # [G] int64, row in the query table
  positive: np.ndarray  # [G] int64, row in the corpus
  offsets: np.ndarray  # [G + 1] int64
  negatives: np.ndarray  # [offsets[-1]] int64, rows in the corpus
  teacher_positive: np.ndarray | None = None  # [G] float32
  teacher_negative: np.ndarray | None = None  # [offsets[-1]] float32

  def __len__(self) -> int:
    return len(self.query)

  @property
  def has_teacher_scores(self) -> bool:
    return self.teacher_positive is not None

  def pool(self, group: int) -> np.ndarray:
    return self.negatives[self.offsets[group]:self.offsets[group + 1]]

  def pool_scores(self, group: int) -> np.ndarray:
    assert self.teacher_negative is not None
    return self.teacher_negative[self.offsets[group]:self.offsets[group + 1]]


class GroupBuilder:
  """Accumulates `(query, positive, pool[, scores])` rows into `TrainingGroups`."""

  def __init__(self, with_teacher_scores: bool):
    self.with_teacher_scores = with_teacher_scores
    self._query: list[int] = []
    self._positive: list[int] = []
    self._lengths: list[int] = []
    self._negatives: list[int] = []
    self._teacher_positive: list[float] = []
    self._teacher_negative: list[float] = []

  def __len__(self) -> int:
    return len(self._query)

  def add(self, query: int, positive: int, negatives: Sequence[int],
          teacher_positive: float | None = None,
          teacher_negatives: Sequence[float] | None = None) -> None:
    self._query.append(query)
    self._positive.append(positive)
    self._lengths.append(len(negatives))
    self._negatives.extend(negatives)
    if self.with_teacher_scores:
      assert teacher_positive is not None and teacher_negatives is not None
      assert len(teacher_negatives) == len(negatives)
      self._teacher_positive.append(teacher_positive)
      self._teacher_negative.extend(teacher_negatives)

  def build(self) -> TrainingGroups:
    offsets = np.zeros(len(self._lengths) + 1, np.int64)
    np.cumsum(np.asarray(self._lengths, np.int64), out=offsets[1:])
    teacher = self.with_teacher_scores
    return TrainingGroups(
        query=np.asarray(self._query, np.int64),
        positive=np.asarray(self._positive, np.int64),
        offsets=offsets,
        negatives=np.asarray(self._negatives, np.int64),
        teacher_positive=np.asarray(self._teacher_positive, np.float32) if teacher else None,
        teacher_negative=np.asarray(self._teacher_negative, np.float32) if teacher else None)


@dataclasses.dataclass
class Collection:
  """A retrieval collection: corpus, queries, qrels per split and optional training groups."""
  name: str
  corpus: Table
  queries: Table
  qrels: dict[str, Qrels] = dataclasses.field(default_factory=dict)
  training: dict[str, TrainingGroups] = dataclasses.field(default_factory=dict)
  extra_counts: dict[str, Any] = dataclasses.field(default_factory=dict)  # format-specific
  warnings: Warnings = dataclasses.field(default_factory=Warnings)

  def split_queries(self, split: str) -> list[str]:
    """Ids of the queries judged in `split`, in the order of the query file."""
    judged = self.qrels[split]
    return [q for q in self.queries.ids if q in judged]

  def counts(self) -> dict[str, Any]:
    """Counts for reports: documents (and empty ones, when any), queries, and per split
    judged queries and pairs."""
    result: dict[str, Any] = {"documents": len(self.corpus)}
    empty = self.corpus.num_empty()
    if empty:
      result["empty_documents"] = empty
    result["queries"] = len(self.queries)
    for split, qrels in sorted(self.qrels.items()):
      result[f"qrels/{split}"] = {
          "queries": len(qrels),
          "pairs": sum(len(d) for d in qrels.values()),
          "relevant_pairs": sum(1 for d in qrels.values() for r in d.values() if r > 0),
      }
    for name, groups in sorted(self.training.items()):
      result[f"training/{name}"] = {
          "groups": len(groups),
          "negatives": int(groups.offsets[-1]),
          "teacher_scores": groups.has_teacher_scores,
      }
    result.update(self.extra_counts)
    return result


def relevant(qrels: Mapping[str, Mapping[str, int]]) -> Iterator[tuple[str, str]]:
  """All (query id, document id) pairs with relevance > 0, in file order."""
  for qid, docs in qrels.items():
    for did, rel in docs.items():
      if rel > 0:
        yield qid, did
