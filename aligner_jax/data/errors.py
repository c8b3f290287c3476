"""Problems found in user data, collected and raised together as one `DataError`.

Every reader reports what is wrong as `file:line: problem` (line numbers start at 1; a problem
about a whole file has no line). Readers keep going after a problem so one run shows many of
them, up to `max_problems` listed; the rest are only counted. Nothing built from data with
problems is ever returned: `ProblemLog.raise_if_any()` runs before a reader returns.

Warnings are kept apart from problems: they name something legal but worth knowing, such as a
document with neither title nor text (kept, and encoded as its framing tokens only), and travel
with the collection (`Collection.warnings`) instead of stopping the read. Strict mode turns
those into problems: a reader's `strict` argument, or when it is None the environment variable
`ALIGNER_STRICT_DATA` (1/true/yes/on; unset or 0/false/no/off leaves it off).
"""

import dataclasses
import os
from typing import Iterable

DEFAULT_MAX_PROBLEMS = 20
ENV_STRICT = "ALIGNER_STRICT_DATA"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: the file, the 1-based line (None for the whole file) and what is wrong."""
  path: str
  line: int | None
  message: str

  def __str__(self) -> str:
    if self.line is None:
      return f"{self.path}: {self.message}"
    return f"{self.path}:{self.line}: {self.message}"


class DataError(ValueError):
  """Raised when data has problems; `problems` lists them and `total` counts all of them."""

  def __init__(self, problems: Iterable[Problem], total: int | None = None):
    self.problems = tuple(problems)
    self.total = len(self.problems) if total is None else total
    lines = [str(p) for p in self.problems]
    if self.total > len(self.problems):
      lines.append(f"... and {self.total - len(self.problems)} more problem(s) not listed")
    noun = "problem" if self.total == 1 else "problems"
    super().__init__(f"{self.total} {noun} in the data:\n" + "\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Warnings:
  """Warnings found while reading: the first few listed, all of them counted in `total`."""
  problems: tuple[Problem, ...] = ()
  total: int = 0

  def __bool__(self) -> bool:
    return self.total > 0

  def __str__(self) -> str:
    noun = "warning" if self.total == 1 else "warnings"
    lines = [f"{self.total} {noun} in the data:"] + [str(p) for p in self.problems]
    if self.total > len(self.problems):
      lines.append(f"... and {self.total - len(self.problems)} more warning(s) not listed")
    return "\n".join(lines)


def strict_mode(strict: bool | None = None) -> bool:
  """`strict` itself, or when it is None the `ALIGNER_STRICT_DATA` environment variable."""
  if strict is not None:
    return bool(strict)
  value = os.environ.get(ENV_STRICT, "").strip().lower()
  if value in _TRUE:
    return True
  if value in _FALSE:
    return False
  raise ValueError(f"{ENV_STRICT}={value!r}: expected one of {', '.join(_TRUE)} (strict) or "
                   f"{', '.join(f for f in _FALSE if f)} (not strict)")


class ProblemLog:
  """Collects problems and warnings while reading; lists the first `max_problems` of each,
  counts all."""

  def __init__(self, max_problems: int = DEFAULT_MAX_PROBLEMS):
    if max_problems < 1:
      raise ValueError(f"max_problems must be at least 1, got {max_problems}")
    self.max_problems = max_problems
    self.problems: list[Problem] = []
    self.total = 0
    self._warnings: list[Problem] = []
    self._warning_total = 0

  def add(self, path: str, line: int | None, message: str) -> None:
    self.total += 1
    if len(self.problems) < self.max_problems:
      self.problems.append(Problem(str(path), line, message))

  def add_warning(self, path: str, line: int | None, message: str) -> None:
    """Records something legal but worth reporting; it never makes `raise_if_any` raise."""
    self._warning_total += 1
    if len(self._warnings) < self.max_problems:
      self._warnings.append(Problem(str(path), line, message))

  def warnings(self) -> Warnings:
    return Warnings(tuple(self._warnings), self._warning_total)

  def __bool__(self) -> bool:
    return self.total > 0

  def error(self) -> DataError:
    return DataError(self.problems, self.total)

  def raise_if_any(self) -> None:
    if self.total:
      raise self.error()


def fail(path: str, line: int | None, message: str) -> DataError:
  """A `DataError` with a single problem, for callers that cannot continue."""
  return DataError([Problem(str(path), line, message)])
