"""Long documents as overlapping passages: split at encoding, scored back per document.

A document whose text has more tokens than fit in `max_length` (the framing included) is
split into windows of the text's own token ids, each framed like a text of its own
(`[CLS] window [SEP]`), consecutive windows sharing `overlap` tokens; a document that fits is
one passage, framed exactly as without passages. Passage k of document `d` is stored under the
id `d#k` (`passage_id`): the token store and the index built on it keep the passage ->
document map in their ids (`document_of` takes the text before the last `#`).

Retrieval then runs over passages as over documents, and `document_run` turns a passage run
into a run per document: "maxp" scores a document by its best retrieved passage (Dai & Callan's
MaxP), "firstp" by its first passage only (what truncating the document gives), so metrics are
per document.
"""

import dataclasses
from typing import Any, Mapping, Sequence

from aligner_jax.data import vocab as vocab_lib

SCORINGS = ("maxp", "firstp")
SEPARATOR = "#"


@dataclasses.dataclass(frozen=True)
class Passages:
  """How documents are split and scored back.

  Attributes:
    overlap: text tokens shared by consecutive passages (less than a passage's text tokens).
    scoring: "maxp" (best passage) or "firstp" (first passage).
  """
  overlap: int = 32
  scoring: str = "maxp"

  def __post_init__(self):
    if self.scoring not in SCORINGS:
      raise ValueError(f"passage scoring {self.scoring!r} is not one of {SCORINGS}")
    if self.overlap < 0:
      raise ValueError(f"passage overlap must be >= 0, got {self.overlap}")


def passage_id(doc_id: str, k: int) -> str:
  return f"{doc_id}{SEPARATOR}{k}"


def document_of(pid: str) -> tuple[str, int]:
  """(document id, passage number) of a passage id made by `passage_id`."""
  doc_id, k = pid.rsplit(SEPARATOR, 1)
  return doc_id, int(k)


def windows(ids: Sequence[int], room: int, overlap: int) -> list[list[int]]:
  """Windows of at most `room` ids covering `ids`, consecutive ones sharing `overlap`."""
  if overlap >= room:
    raise ValueError(f"passage overlap {overlap} must be smaller than the {room} text tokens "
                     "a passage holds")
  starts = [0]
  while starts[-1] + room < len(ids):
    starts.append(starts[-1] + room - overlap)
  return [list(ids[s:s + room]) for s in starts]


def split_documents(vocabulary: Any, doc_ids: Sequence[str], texts: Sequence[str],
                    max_length: int, overlap: int) -> tuple[list[str], list[list[int]]]:
  """(passage ids, framed token ids of each passage), documents in order."""
  prefix, suffix = vocab_lib.special_tokens(vocabulary)
  room = max_length - len(prefix) - len(suffix)
  if room < 1:
    raise ValueError(f"max_length {max_length} leaves no room for text between the special "
                     "tokens")
  passage_ids, token_lists = [], []
  for doc_id, ids in zip(doc_ids, vocab_lib.encode_batch(vocabulary, list(texts))):
    for k, window in enumerate(windows(ids, room, overlap)):
      passage_ids.append(passage_id(doc_id, k))
      token_lists.append([*prefix, *window, *suffix])
  return passage_ids, token_lists


def document_run(run: Mapping[str, Mapping[str, float]], scoring: str
                 ) -> dict[str, dict[str, float]]:
  """A passage run (query -> passage id -> score) as a run per document (see the module
  docstring); a document none of whose counted passages was retrieved is absent."""
  if scoring not in SCORINGS:
    raise ValueError(f"passage scoring {scoring!r} is not one of {SCORINGS}")
  out: dict[str, dict[str, float]] = {}
  for q, passages in run.items():
    docs: dict[str, float] = {}
    for pid, score in passages.items():
      doc_id, k = document_of(pid)
      if scoring == "firstp" and k:
        continue
      docs[doc_id] = max(score, docs.get(doc_id, -float("inf")))
    out[q] = docs
  return out
