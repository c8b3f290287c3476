"""Line readers for TSV and JSONL files that report problems as `file:line: problem`.

Conventions: files are UTF-8; a line that is not valid UTF-8 is reported and skipped; line
numbers are 1-based; blank lines (only whitespace) are skipped silently in JSONL files, since
editors and `cat` leave them at the end; in TSV files they are reported (a blank row is never
intended there). Every reader yields `(line_number, value)` and records problems in the given
`ProblemLog` instead of raising, so a caller can gather many problems before failing.
"""

import json
import os
from typing import Any, Iterator, Sequence

from aligner_jax.data.errors import ProblemLog
from aligner_jax.data.errors import fail


def check_file(path: str | os.PathLike) -> str:
  """The path as a string; raises `DataError` when it is missing or not a regular file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise fail(path, None, "file not found")
  if not os.path.isfile(path):
    raise fail(path, None, "not a regular file")
  return path


def decode_line(path: str, number: int, raw: bytes, log: ProblemLog) -> str | None:
  """One raw line without its ending as text, or None after reporting invalid UTF-8."""
  if raw.endswith(b"\n"):
    raw = raw[:-1]
  if raw.endswith(b"\r"):
    raw = raw[:-1]
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    log.add(path, number,
            f"invalid UTF-8 (byte {e.start} of the line: {raw[e.start:e.start + 1]!r})")
    return None


def read_lines(path: str | os.PathLike, log: ProblemLog) -> Iterator[tuple[int, str]]:
  """Yields `(line_number, text)` without the line ending; reports invalid UTF-8."""
  path = check_file(path)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      text = decode_line(path, number, raw, log)
      if text is not None:
        yield number, text


def parse_json_object(path: str, number: int, text: str,
                      log: ProblemLog) -> dict[str, Any] | None:
  """The JSON object on one line; None for a blank line or after reporting a problem."""
  if not text.strip():
    return None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    log.add(path, number, f"broken JSON: {e.msg} (column {e.colno})")
    return None
  if not isinstance(value, dict):
    log.add(path, number, f"expected a JSON object, got {type(value).__name__}")
    return None
  return value


def read_jsonl(path: str | os.PathLike, log: ProblemLog) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields `(line_number, object)` for each line holding a JSON object."""
  path = os.fspath(path)
  for number, text in read_lines(path, log):
    value = parse_json_object(path, number, text, log)
    if value is not None:
      yield number, value


def read_tsv(path: str | os.PathLike, log: ProblemLog, *, columns: int | Sequence[int],
             header: Sequence[str] | None = None) -> Iterator[tuple[int, list[str]]]:
  """Yields `(line_number, fields)` for rows with an allowed number of tab-separated columns.

  Args:
    path: the file.
    log: where problems go.
    columns: the allowed column count(s).
    header: when given, the first line must be exactly these column names (it is not yielded).
  """
  path = os.fspath(path)
  allowed = (columns,) if isinstance(columns, int) else tuple(columns)
  expected = " or ".join(str(c) for c in allowed)
  for number, text in read_lines(path, log):
    fields = text.split("\t")
    if header is not None and number == 1:
      if fields != list(header):
        log.add(path, number, f"expected the header {chr(9).join(header)!r}, got {text!r}")
      continue
    if not text.strip():
      log.add(path, number, "blank line")
      continue
    if len(fields) not in allowed:
      log.add(path, number, f"wrong column count: expected {expected} tab-separated columns, "
              f"got {len(fields)}")
      continue
    yield number, fields


def parse_int(path: str, number: int, value: str, what: str, log: ProblemLog) -> int | None:
  """`int(value)` or None after reporting `what` is not an integer."""
  try:
    return int(value)
  except ValueError:
    log.add(path, number, f"{what} must be an integer, got {value!r}")
    return None


def parse_float(path: str, number: int, value: str, what: str, log: ProblemLog) -> float | None:
  """`float(value)` (finite) or None after reporting `what` is not a number."""
  try:
    result = float(value)
  except ValueError:
    log.add(path, number, f"{what} must be a number, got {value!r}")
    return None
  if result != result or result in (float("inf"), float("-inf")):
    log.add(path, number, f"{what} must be finite, got {value!r}")
    return None
  return result


def get_string(path: str, number: int, obj: dict[str, Any], key: str, log: ProblemLog, *,
               required: bool = True, allow_empty: bool = False, is_id: bool = False,
               what: str = "") -> str | None:
  """`obj[key]` as a string, reporting a missing key, a wrong type or (unless allowed) emptiness.

  With `is_id`, integers are accepted and converted, since some exports write numeric ids.
  """
  what = what or f"`{key}`"
  if key not in obj or obj[key] is None:
    if required:
      log.add(path, number, f"missing {what}")
    return None
  value = obj[key]
  allowed = (str, int) if is_id else (str,)
  if isinstance(value, bool) or not isinstance(value, allowed):
    log.add(path, number, f"{what} must be a string, got {type(value).__name__}")
    return None
  value = str(value)
  if not allow_empty and not value.strip():
    log.add(path, number, f"empty {what}")
    return None
  return value


def read_id_lines(path: str | os.PathLike) -> list[str]:
  """The lines of a file of ids, one a line: surrounding white space and blank lines dropped.

  Raises:
    ValueError: naming the file (and the line, for text that is not UTF-8) when it cannot be
      read.
  """
  try:
    text = open(path, "rb").read().decode("utf-8")
  except OSError as e:
    raise ValueError(f"{path}: cannot read the ids file ({e.strerror})") from None
  except UnicodeDecodeError as e:
    line = e.object[:e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not valid UTF-8") from None
  return [line.strip() for line in text.splitlines() if line.strip()]
