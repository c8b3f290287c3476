"""Which documents a search may return: `filter=` values, and the command line's `--filter`.

In Python, `filter` is None (every live document), a collection of document ids (set, frozenset,
list or tuple of str; unknown ids are ignored), or a predicate over a document's metadata dict
(the BEIR `metadata` object stored with it, {} when it has none). It becomes the `allowed`
[N] bool mask of the index's documents that candidate selection searches within
(`TokenIndex.document_mask`, `TokenIndex.metadata_mask`), so a selective filter still returns
k results when k documents pass it.

On the command line, `--filter` may be given several times; a document must pass all of them:
  ids:FILE     the document ids listed in FILE, one per line (blank lines and lines starting
               with '#' skipped)
  KEY=VALUE    documents whose metadata KEY equals VALUE (compared as text: 2020 matches "2020";
               a list value matches when VALUE is one of its items)
"""

import pathlib
from typing import Any, Callable, Collection, Sequence

import numpy as np

from aligner_jax.data.lines import read_id_lines

Filter = Collection[str] | Callable[[dict[str, Any]], bool] | None
_ID_COLLECTIONS = (set, frozenset, list, tuple)


class FilterError(ValueError):
  """A filter that cannot be applied: wrong type, bad syntax, unreadable id file."""


def allowed_mask(index: Any, filter: Filter) -> np.ndarray | None:  # noqa: A002 (the API's name)
  """[N] bool: the documents of `index` that `filter` admits; None when it admits every one."""
  if filter is None:
    return None
  if isinstance(filter, _IdsAndMetadata):
    return filter.mask(index)
  if callable(filter):
    return index.metadata_mask(filter)
  if isinstance(filter, _ID_COLLECTIONS):
    bad = [x for x in filter if not isinstance(x, str)]
    if bad:
      raise FilterError(f"a filter of document ids holds non-string items, e.g. {bad[:3]}")
    return index.document_mask(filter)
  raise FilterError(f"filter must be None, a set / list of document ids or a predicate over "
                    f"the metadata dict, got {type(filter).__name__} (a single id? use {{id}})")


def _text(value: Any) -> str:
  return value if isinstance(value, str) else str(value)


def _equals(key: str, value: str) -> Callable[[dict[str, Any]], bool]:
  def admits(metadata: dict[str, Any]) -> bool:
    if key not in metadata:
      return False
    found = metadata[key]
    if isinstance(found, list):
      return any(_text(item) == value for item in found)
    return _text(found) == value
  return admits


def _read_ids(path: pathlib.Path) -> set[str]:
  """The ids of an `ids:FILE` filter: one a line, `#` lines are comments."""
  try:
    lines = read_id_lines(path)
  except ValueError as e:
    raise FilterError(str(e)) from None
  return {line for line in lines if not line.startswith("#")}


def parse_filters(specs: Sequence[str]) -> Filter:
  """The `filter=` value of the command line's `--filter` specs (see the module docstring)."""
  if not specs:
    return None
  id_sets: list[set[str]] = []
  predicates: list[Callable[[dict[str, Any]], bool]] = []
  for spec in specs:
    if spec.startswith("ids:"):
      id_sets.append(_read_ids(pathlib.Path(spec[len("ids:"):])))
    elif "=" in spec and spec.split("=", 1)[0].strip():
      key, value = spec.split("=", 1)
      predicates.append(_equals(key.strip(), value))
    else:
      raise FilterError(f"--filter {spec!r}: expected ids:FILE or KEY=VALUE")
  ids = set.intersection(*id_sets) if id_sets else None
  if not predicates:
    return ids
  if ids is None:
    return lambda metadata: all(p(metadata) for p in predicates)
  # Both kinds: the ids narrow the metadata test, which then sees only those documents.
  return _IdsAndMetadata(ids, predicates)


class _IdsAndMetadata:  # noqa: B903 (a mask, not a record)
  """Listed ids whose metadata also passes every predicate (the command line's conjunction)."""

  def __init__(self, ids: set[str], predicates: list[Callable[[dict[str, Any]], bool]]):
    self.ids, self.predicates = ids, predicates

  def mask(self, index: Any) -> np.ndarray:
    return index.document_mask(self.ids) & index.metadata_mask(
        lambda metadata: all(p(metadata) for p in self.predicates))
