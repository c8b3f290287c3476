"""Reader for Natural Questions in DPR's formats.

Layout of an NQ directory (DPR's file names):
  biencoder-nq-<split>.json  a JSON array (or JSON lines) of questions:
                             {"question", "answers": [...], "positive_ctxs": [ctx],
                              "negative_ctxs": [ctx], "hard_negative_ctxs": [ctx]},
                             ctx = {"title", "text", "passage_id", ...}
  nq-<split>.qa.csv or nq-<split>.csv
                             `question<TAB>["answer", ...]` (DPR's retrieval test questions)
  psgs_w100.tsv              optional; header `id<TAB>text<TAB>title`, csv-quoted fields

Collection built from it:
  * corpus: psgs_w100.tsv when present (every ctx's passage_id must then be in it), otherwise
    the union of the contexts in the JSON files (a passage_id given two different texts is
    reported); a passage of psgs_w100.tsv with neither title nor text is kept with a warning,
    or refused in strict mode (`strict`, or `ALIGNER_STRICT_DATA` when that is None);
  * queries: id `<split>-<index in file>`, text the question, metadata {"answers": [...]};
  * qrels (JSON splits): every positive ctx is relevant;
  * training groups (`collection.training[split]`): one per question with a positive -- DPR's
    recipe: the first positive ctx, and as negative pool the hard negatives (BM25) or, when a
    question has none, the other negatives. Questions without a positive cannot train and are
    counted (`counts()["nq/<split>"]["without_positive"]`), not reported as problems.

The JSON is parsed incrementally so files of several GB need not fit in memory twice, and
each problem names the line where the question starts.
"""

import ast
import codecs
import csv
import json
import os
import pathlib
import re
from typing import Any, Iterator, Sequence

from aligner_jax.data import lines
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import GroupBuilder
from aligner_jax.data.collection import Table
from aligner_jax.data.collection import admit_empty_document
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries
from aligner_jax.data.errors import DEFAULT_MAX_PROBLEMS
from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import fail
from aligner_jax.data.errors import strict_mode

PASSAGES = "psgs_w100.tsv"
PASSAGES_HEADER = ("id", "text", "title")
_CHUNK = 1 << 20
_MAX_ELEMENT = 1 << 26  # a question larger than 64 MB is certainly broken JSON
_JSON_NAME = re.compile(r"^biencoder-nq-(.+)\.jsonl?$")
_QA_NAME = re.compile(r"^nq-(.+?)(\.qa)?\.csv$")


def _decoded_chunks(path: str, log: ProblemLog) -> Iterator[str]:
  """The file as text chunks ending at line ends; invalid UTF-8 lines are reported."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  line = 1
  with open(path, "rb") as f:
    while True:
      raw = f.read(_CHUNK)
      if not raw:
        break
      raw += f.readline()
      try:
        text = decoder.decode(raw)
      except UnicodeDecodeError:
        decoder.reset()
        parts = []
        for offset, piece in enumerate(raw.split(b"\n")):
          try:
            parts.append(piece.decode("utf-8"))
          except UnicodeDecodeError as e:
            log.add(path, line + offset, f"invalid UTF-8 (byte {e.start} of the line)")
            parts.append(piece.decode("utf-8", errors="replace"))
        text = "\n".join(parts)
      line += raw.count(b"\n")
      yield text


def iter_json_array(path: str | os.PathLike, log: ProblemLog
                    ) -> Iterator[tuple[int, Any]]:
  """Yields `(line where the element starts, element)` of a top-level JSON array.

  Stops at the first broken element (the rest cannot be resynchronised) after reporting it.
  """
  path = lines.check_file(path)
  decoder = json.JSONDecoder()
  chunks = _decoded_chunks(path, log)
  buf, pos, line = "", 0, 1  # `line` is the line number of buf[pos]
  exhausted = False
  started = False

  def more() -> bool:
    nonlocal buf, pos, exhausted
    chunk = next(chunks, None)
    if chunk is None:
      exhausted = True
      return False
    buf = buf[pos:] + chunk
    pos = 0
    return True

  def skip_space():
    nonlocal pos, line
    while True:
      while pos < len(buf) and buf[pos] in " \t\r\n":
        if buf[pos] == "\n":
          line += 1
        pos += 1
      if pos < len(buf) or exhausted or not more():
        return

  skip_space()
  if pos >= len(buf) or buf[pos] != "[":
    log.add(path, line, "broken JSON: expected a JSON array of questions ('[' first)")
    return
  pos += 1
  started = True
  first = True
  while started:
    skip_space()
    if pos >= len(buf):
      log.add(path, line, "broken JSON: the array is not closed with ']'")
      return
    if buf[pos] == "]":
      return
    if not first:
      if buf[pos] != ",":
        log.add(path, line, f"broken JSON: expected ',' or ']' between questions, got {buf[pos]!r}")
        return
      pos += 1
      skip_space()
    first = False
    while True:
      try:
        value, end = decoder.raw_decode(buf, pos)
        break
      except json.JSONDecodeError as e:
        if exhausted or len(buf) - pos > _MAX_ELEMENT or not more():
          log.add(path, line + buf.count("\n", pos, e.pos), f"broken JSON: {e.msg}")
          return
    yield line, value
    line += buf.count("\n", pos, end)
    pos = end


def iter_questions(path: str | os.PathLike, log: ProblemLog) -> Iterator[tuple[int, Any]]:
  """DPR questions from a JSON array or, for `.jsonl` files, JSON lines."""
  if os.fspath(path).endswith(".jsonl"):
    yield from lines.read_jsonl(path, log)
  else:
    yield from iter_json_array(path, log)


def read_passages(path: str | os.PathLike, log: ProblemLog, corpus: Table, *,
                  strict: bool = False) -> None:
  """psgs_w100.tsv rows `id text title` (csv-quoted) into `corpus`; a passage with neither
  title nor text is kept with a warning, or refused when `strict`."""
  path = os.fspath(path)
  first: dict[str, int] = {}
  for number, text in lines.read_lines(path, log):
    try:
      fields = next(csv.reader([text], delimiter="\t"))
    except csv.Error as e:
      log.add(path, number, f"malformed quoting: {e}")
      continue
    if number == 1:
      if tuple(fields) != PASSAGES_HEADER:
        log.add(path, number, f"expected the header 'id<TAB>text<TAB>title', got {text!r}")
      continue
    if len(fields) != 3:
      log.add(path, number, f"wrong column count: expected 3 tab-separated columns, "
              f"got {len(fields)}")
      continue
    pid, body, title = (f.strip() for f in fields)
    if not pid:
      log.add(path, number, "empty passage id")
    elif pid in first:
      log.add(path, number, f"duplicate passage id {pid!r} (first at line {first[pid]})")
    elif body or title or admit_empty_document(log, path, number, pid, strict=strict):
      first[pid] = number
      corpus.add(pid, body, title=title)
    else:
      corpus.refuse(pid, path, number)


def _contexts(path, number, question: dict, key: str, log: ProblemLog) -> list[dict] | None:
  value = question.get(key, [])
  if not isinstance(value, list):
    log.add(path, number, f"`{key}` must be a list of contexts")
    return None
  out = []
  for j, ctx in enumerate(value):
    where = f"{key}[{j}]"
    if not isinstance(ctx, dict):
      log.add(path, number, f"`{where}` must be a JSON object")
      return None
    pid = lines.get_string(path, number, ctx, "passage_id", log, is_id=True,
                           what=f"`{where}.passage_id`")
    text = lines.get_string(path, number, ctx, "text", log, what=f"`{where}.text`")
    title = lines.get_string(path, number, ctx, "title", log, required=False, allow_empty=True,
                             what=f"`{where}.title`")
    if pid is None or text is None:
      return None
    out.append({"passage_id": pid, "text": text, "title": title or ""})
  return out


def available_splits(root: str | os.PathLike) -> dict[str, str]:
  """Split -> question file (DPR JSON preferred over the answers-only csv)."""
  found: dict[str, str] = {}
  for p in sorted(pathlib.Path(root).iterdir()):
    m = _QA_NAME.match(p.name)
    if m and p.is_file():
      found.setdefault(m.group(1), str(p))
  for p in sorted(pathlib.Path(root).iterdir()):
    m = _JSON_NAME.match(p.name)
    if m and p.is_file():
      found[m.group(1)] = str(p)
  return found


def _read_qa_csv(path: str, split: str, log: ProblemLog, queries: Table) -> None:
  """DPR's `question<TAB>answers` rows; answers are a Python or JSON list literal."""
  for number, text in lines.read_lines(path, log):
    try:
      fields = next(csv.reader([text], delimiter="\t"))
    except csv.Error as e:
      log.add(path, number, f"malformed quoting: {e}")
      continue
    if len(fields) != 2:
      log.add(path, number, f"wrong column count: expected 2 tab-separated columns "
              f"(question, answers), got {len(fields)}")
      continue
    question, answers_text = fields
    if not question.strip():
      log.add(path, number, "empty question")
      continue
    try:
      answers = ast.literal_eval(answers_text.strip())
    except (ValueError, SyntaxError):
      log.add(path, number, f"answers must be a list literal like ['a', 'b'], got "
              f"{answers_text[:40]!r}")
      continue
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
      log.add(path, number, "answers must be a list of strings")
      continue
    queries.add(f"{split}-{number - 1}", question, metadata={"answers": answers})


def read_nq(path: str | os.PathLike, *, splits: Sequence[str] | None = None,
            name: str = "nq", max_problems: int = DEFAULT_MAX_PROBLEMS,
            strict: bool | None = None) -> Collection:
  """Reads and checks an NQ directory in DPR's formats; raises `DataError` on problems.

  Args:
    path: the directory (see the module docstring for the files).
    splits: the splits to read (None: all present).
    name: the collection's name.
    max_problems: how many problems (and warnings) are listed.
    strict: refuse passages with neither title nor text instead of keeping them with a
      warning; None: the `ALIGNER_STRICT_DATA` environment variable decides.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise fail(str(root), None, "NQ directory not found (expected biencoder-nq-<split>.json, "
               "nq-<split>.qa.csv and optionally psgs_w100.tsv inside)")
  found = available_splits(root)
  splits = sorted(found) if splits is None else list(splits)
  for split in splits:
    if split not in found:
      raise fail(str(root / f"biencoder-nq-{split}.json"), None,
                 f"file not found (splits here: {', '.join(sorted(found)) or 'none'})")
  log = ProblemLog(max_problems)
  corpus, queries = new_corpus(), new_queries()
  fixed_corpus = (root / PASSAGES).is_file()
  if fixed_corpus:
    read_passages(root / PASSAGES, log, corpus, strict=strict_mode(strict))
  collection = Collection(name=name, corpus=corpus, queries=queries)
  ctx_first: dict[str, tuple[str, int]] = {}
  for split in splits:
    file = found[split]
    if file.endswith(".csv"):
      _read_qa_csv(file, split, log, queries)
      continue
    qrels: dict[str, dict[str, int]] = {}
    builder = GroupBuilder(with_teacher_scores=False)
    without_positive = 0
    for index, (number, question) in enumerate(iter_questions(file, log)):
      if not isinstance(question, dict):
        log.add(file, number, "expected a JSON object per question")
        continue
      text = lines.get_string(file, number, question, "question", log)
      answers = question.get("answers", [])
      if not isinstance(answers, list):
        log.add(file, number, "`answers` must be a list")
        continue
      ctxs = {k: _contexts(file, number, question, k, log)
              for k in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs")}
      if text is None or any(v is None for v in ctxs.values()):
        continue
      rows: dict[str, list[int]] = {}
      ok = True
      for key, items in ctxs.items():
        rows[key] = []
        for ctx in items:
          row = _context_row(file, number, ctx, corpus, fixed_corpus, ctx_first, log)
          if row is None:
            ok = False
          else:
            rows[key].append(row)
      if not ok:
        continue
      qid = f"{split}-{index}"
      q = queries.add(qid, text, metadata={"answers": [str(a) for a in answers]})
      positives = rows["positive_ctxs"]
      if positives:
        qrels[qid] = {corpus.ids[r]: 1 for r in positives}
        pool = [r for r in (rows["hard_negative_ctxs"] or rows["negative_ctxs"])
                if r not in positives]
        builder.add(q, positives[0], list(dict.fromkeys(pool)))
      else:
        without_positive += 1
    collection.qrels[split] = qrels
    if len(builder):
      collection.training[split] = builder.build()
    collection.extra_counts[f"nq/{split}"] = {"without_positive": without_positive}
  log.raise_if_any()
  collection.warnings = log.warnings()
  return collection


def _context_row(path, number, ctx, corpus: Table, fixed_corpus: bool,
                 ctx_first: dict[str, tuple[str, int]], log: ProblemLog) -> int | None:
  pid = ctx["passage_id"]
  row = corpus.index.get(pid)
  if fixed_corpus:
    if row is None:
      log.add(path, number, corpus.why_missing(pid, "passage", PASSAGES))
    return row
  if row is None:
    ctx_first[pid] = (path, number)
    return corpus.add(pid, ctx["text"], title=ctx["title"])
  if corpus.texts[row] != ctx["text"] or corpus.titles[row] != ctx["title"]:
    first_path, first_number = ctx_first[pid]
    where = f"line {first_number}" if first_path == path else f"{first_path}:{first_number}"
    log.add(path, number, f"passage {pid!r} has a different title or text than at {where}")
    return None
  return row
