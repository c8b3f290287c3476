"""Reader for MS MARCO passage ranking files.

Layout of an MS MARCO directory (the official file names):
  collection.tsv           `pid<TAB>passage`
  queries.<split>.tsv      `qid<TAB>query` for split train, dev (and e.g. dev.small)
  qrels.<split>.tsv        TREC qrels `qid 0 pid relevance` (tabs or spaces)
Training files, named explicitly or found under these names:
  triples by id            qidpidtriples.train.full.2.tsv, triples.train.ids.tsv
  teacher-score triples    bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv,
                           teacher_triples.train.tsv
  hard-negative JSONL      hard_negatives.train.jsonl
(see `training_files.py` for their formats).

Queries of all splits go into one table (MS MARCO's query ids are unique across splits; a
repeated id is reported). Checks: invalid UTF-8, wrong column count, empty id, empty query,
duplicate ids, non-integer relevance, judgements and training rows naming unknown ids. A
passage with empty text is legal and kept with a warning, unless strict mode refuses it (as
for BEIR: `strict`, or `ALIGNER_STRICT_DATA` when that is None).
"""

import dataclasses
import os
import pathlib
from typing import Sequence

from aligner_jax.data import lines
from aligner_jax.data import training_files
from aligner_jax.data.beir import add_judgement
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import Qrels
from aligner_jax.data.collection import Table
from aligner_jax.data.collection import admit_empty_document
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries
from aligner_jax.data.errors import DEFAULT_MAX_PROBLEMS
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import fail
from aligner_jax.data.errors import strict_mode

TRIPLES_NAMES = ("qidpidtriples.train.full.2.tsv", "triples.train.ids.tsv")
TEACHER_TRIPLES_NAMES = ("bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
                         "teacher_triples.train.tsv")
HARD_NEGATIVES_NAMES = ("hard_negatives.train.jsonl",)
TRAINING_FORMATS = ("triples", "teacher_triples", "hard_negatives", "hard_negatives_scored")


def read_id_text_tsv(path: str | os.PathLike, log: ProblemLog, table: Table, what: str,
                     first_seen: dict[str, tuple[str, int]], *, strict: bool = False) -> None:
  """Adds `id<TAB>text` rows to `table` (documents or queries). An empty query is a problem;
  an empty passage (`table` a corpus) is kept with a warning, or refused when `strict`."""
  path = os.fspath(path)
  for number, (id_, text) in lines.read_tsv(path, log, columns=2):
    id_ = id_.strip()
    if not id_:
      log.add(path, number, f"empty {what} id")
      continue
    if id_ in table.index:
      first_path, first_number = first_seen[id_]
      where = f"line {first_number}" if first_path == path else f"{first_path}:{first_number}"
      log.add(path, number, f"duplicate {what} id {id_!r} (first at {where})")
      continue
    if not text.strip() and not _admit_empty(log, path, number, table, what, id_, strict):
      table.refuse(id_, path, number)
      continue
    first_seen[id_] = (path, number)
    table.add(id_, text)


def _admit_empty(log: ProblemLog, path: str, number: int, table: Table, what: str, id_: str,
                 strict: bool) -> bool:
  """An empty passage is kept with a warning (refused when strict); an empty query never."""
  if table.titles is not None:  # a corpus
    return admit_empty_document(log, path, number, id_, strict=strict)
  log.add(path, number, f"empty text ({what} {id_!r})")
  return False


def read_trec_qrels(path: str | os.PathLike, log: ProblemLog, *, queries: Table | None,
                    corpus: Table | None) -> Qrels:
  """TREC qrels: `qid iteration docid relevance`, separated by tabs or spaces."""
  path = os.fspath(path)
  qrels: Qrels = {}
  for number, text in lines.read_lines(path, log):
    fields = text.split()
    if not fields:
      log.add(path, number, "blank line")
      continue
    if len(fields) != 4:
      log.add(path, number, f"wrong column count: expected 4 columns (qid 0 docid relevance), "
              f"got {len(fields)}")
      continue
    add_judgement(path, number, fields[0], fields[2], fields[3], qrels, log, queries=queries,
                  corpus=corpus)
  return qrels


@dataclasses.dataclass(frozen=True)
class TrainingFile:
  """A training file and its format (one of `TRAINING_FORMATS`)."""
  path: str
  format: str


def find_training_files(root: str | os.PathLike) -> list[TrainingFile]:
  """Training files present under their usual names."""
  root = pathlib.Path(root)
  found = []
  for names, fmt in ((TRIPLES_NAMES, "triples"), (TEACHER_TRIPLES_NAMES, "teacher_triples"),
                     (HARD_NEGATIVES_NAMES, "hard_negatives")):
    for name in names:
      if (root / name).is_file():
        found.append(TrainingFile(str(root / name), fmt))
  return found


def default_training_file(root: str | os.PathLike, fmt: str) -> str:
  """The first existing file with a usual name for `fmt`; raises DataError when none."""
  names = {"triples": TRIPLES_NAMES, "teacher_triples": TEACHER_TRIPLES_NAMES,
           "hard_negatives": HARD_NEGATIVES_NAMES,
           "hard_negatives_scored": HARD_NEGATIVES_NAMES}[fmt]
  for name in names:
    if (pathlib.Path(root) / name).is_file():
      return str(pathlib.Path(root) / name)
  raise fail(str(pathlib.Path(root) / names[0]), None,
             f"file not found (no {fmt} training file: looked for {', '.join(names)})")


def read_training_file(training: TrainingFile, collection: Collection, log: ProblemLog):
  if training.format == "triples":
    return training_files.read_id_triples(training.path, collection, log)
  if training.format == "teacher_triples":
    return training_files.read_teacher_triples(training.path, collection, log)
  if training.format in ("hard_negatives", "hard_negatives_scored"):
    return training_files.read_hard_negatives_jsonl(
        training.path, collection, log, teacher_scores=training.format == "hard_negatives_scored")
  raise ValueError(f"unknown training format {training.format!r}; expected {TRAINING_FORMATS}")


def available_splits(root: str | os.PathLike) -> list[str]:
  """Splits with a queries.<split>.tsv file, sorted."""
  return sorted(p.name[len("queries."):-len(".tsv")]
                for p in pathlib.Path(root).glob("queries.*.tsv"))


def read_msmarco(path: str | os.PathLike, *, splits: Sequence[str] | None = None,
                 training: Sequence[TrainingFile] = (), name: str = "msmarco_passage",
                 max_problems: int = DEFAULT_MAX_PROBLEMS,
                 strict: bool | None = None) -> Collection:
  """Reads and checks an MS MARCO directory; raises `DataError` listing every problem.

  Args:
    path: the directory holding collection.tsv, queries.<split>.tsv, qrels.<split>.tsv.
    splits: the splits whose queries (and qrels, when present) are read; None: all present.
    training: training files to read into `collection.training`, keyed by format.
    name: the collection's name.
    max_problems: how many problems (and warnings) are listed.
    strict: refuse passages with empty text instead of keeping them with a warning; None: the
      `ALIGNER_STRICT_DATA` environment variable decides.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise fail(str(root), None, "MS MARCO directory not found (expected collection.tsv, "
               "queries.<split>.tsv and qrels.<split>.tsv inside)")
  found = available_splits(root)
  if splits is None:
    splits = found
  for split in splits:
    if split not in found:
      raise fail(str(root / f"queries.{split}.tsv"), None,
                 f"file not found (splits with queries here: {', '.join(found) or 'none'})")
  log = ProblemLog(max_problems)
  corpus, queries = new_corpus(), new_queries()
  read_id_text_tsv(root / "collection.tsv", log, corpus, "passage", {},
                   strict=strict_mode(strict))
  seen: dict[str, tuple[str, int]] = {}
  for split in splits:
    read_id_text_tsv(root / f"queries.{split}.tsv", log, queries, "query", seen)
  collection = Collection(name=name, corpus=corpus, queries=queries)
  for split in splits:
    qrels_path = root / f"qrels.{split}.tsv"
    if qrels_path.is_file():
      collection.qrels[split] = read_trec_qrels(qrels_path, log, queries=queries, corpus=corpus)
  # Training files are checked even when the files above had problems, so one run lists
  # everything (a row naming a refused passage says so).
  for item in training:
    groups = read_training_file(item, collection, log)
    if groups is not None:
      collection.training[item.format] = groups
  log.raise_if_any()
  collection.warnings = log.warnings()
  return collection
