"""Documents handed to `Searcher.add`: BEIR-style dicts or (id, text) pairs, checked.

A BEIR dict is `{"_id": ..., "title": ..., "text": ..., "metadata": {...}}` ("title" and
"metadata" optional), the format of a BEIR `corpus.jsonl` line; its text as the encoder reads it
is `data.collection.document_text(title, text)`, as at index build. A pair is `(id, text)`.
"""

import dataclasses
from typing import Any, Iterable

from aligner_jax.data.collection import document_text


@dataclasses.dataclass
class NewDocuments:
  """Documents to encode: ids, texts as the encoder reads them, and metadata (one dict each)."""
  ids: list[str] = dataclasses.field(default_factory=list)
  texts: list[str] = dataclasses.field(default_factory=list)
  metadata: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.ids)

  def append(self, doc_id: str, text: str, metadata: dict[str, Any] | None = None) -> None:
    self.ids.append(doc_id)
    self.texts.append(text)
    self.metadata.append(dict(metadata or {}))


def _string(value: Any, what: str, position: int, *, allow_empty: bool = True) -> str:
  if not isinstance(value, str) or (not allow_empty and not value):
    raise ValueError(f"document {position}: {what} must be a{'' if allow_empty else ' non-empty'}"
                     f" string, got {value!r}")
  return value


def _from_dict(obj: dict[str, Any], position: int) -> tuple[str, str, dict[str, Any]]:
  if "_id" not in obj or "text" not in obj:
    raise ValueError(f"document {position}: a BEIR document needs '_id' and 'text', got keys "
                     f"{sorted(obj)}")
  doc_id = _string(obj["_id"], "'_id'", position, allow_empty=False)
  text = _string(obj["text"], "'text'", position)
  title = _string(obj.get("title") or "", "'title'", position)
  metadata = obj.get("metadata") or {}
  if not isinstance(metadata, dict):
    raise ValueError(f"document {position} ({doc_id!r}): 'metadata' must be an object, got "
                     f"{type(metadata).__name__}")
  return doc_id, document_text(title, text), metadata


def parse_documents(documents: Iterable[Any]) -> NewDocuments:
  """`documents` (BEIR dicts or (id, text) pairs) as `NewDocuments`.

  Raises:
    ValueError: naming the document's position (and id), for a malformed document or an id
      given twice.
  """
  if isinstance(documents, (str, bytes, dict)):
    raise TypeError("documents must be a list of BEIR dicts or (id, text) pairs, got a single "
                    f"{type(documents).__name__}")
  out = NewDocuments()
  first: dict[str, int] = {}
  for position, doc in enumerate(documents):
    if isinstance(doc, dict):
      doc_id, text, metadata = _from_dict(doc, position)
    elif isinstance(doc, (tuple, list)) and len(doc) == 2:
      doc_id = _string(doc[0], "the id", position, allow_empty=False)
      text, metadata = _string(doc[1], "the text", position), {}
    else:
      raise ValueError(f"document {position}: expected a BEIR dict or an (id, text) pair, got "
                       f"{type(doc).__name__}")
    if doc_id in first:
      raise ValueError(f"document {position}: id {doc_id!r} given twice (first as document "
                       f"{first[doc_id]})")
    first[doc_id] = position
    out.append(doc_id, text, metadata)
  if not out:
    raise ValueError("no documents to add")
  return out
