"""Token framing of late-interaction (ColBERT-style) models: marker tokens, query expansion and
skipped tokens, applied inside the model to padded id arrays.

The vocabularies frame every text the same way (`[CLS] text [SEP]`, `text </s>`: vocab.py).
ColBERT models, as PyLate and sentence-transformers store them, see a little more:
  * a marker token (PyLate's `[Q] ` for queries, `[D] ` for documents) inserted after the
    first token; at most `max_length` tokens are kept and, when the text is cut, its last real
    token (`[SEP]`) stays last -- the same as truncating the text one token shorter first;
  * queries padded to exactly `max_length` with an expansion token (`[MASK]`): ColBERT's query
    augmentation. Expansion positions are encoded and kept (they get vectors); unless
    `attend_to_expansion`, no position attends to them (their attention-mask entry is 0, as in
    PyLate and the original ColBERT; their own states still attend to the real tokens);
  * skip-list tokens (PyLate: punctuation of documents) are encoded and attended to, but their
    vectors are not kept.

`frame` returns the encoder's ids, its attention mask and the mask of kept positions. It is
written against the array namespace `xp`: `jnp` inside the model, `np` on the host, where the
encoding loop needs each text's number of kept vectors before encoding it.
"""

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Framing:
  """How one side's (queries' or documents') token ids reach the encoder.

  Attributes:
    max_length: tokens per text after framing (PyLate's query_length / document_length).
    marker_id: token inserted after the first one (None: none).
    expansion_id: pad every text to `max_length` with this id, kept (None: no expansion).
    attend_to_expansion: whether positions attend to the expansion tokens.
    skip_ids: ids whose vectors are dropped after encoding.
  """
  max_length: int
  marker_id: int | None = None
  expansion_id: int | None = None
  attend_to_expansion: bool = False
  skip_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if self.max_length < 1 + (self.marker_id is not None):
      raise ValueError(f"max_length {self.max_length} leaves no room for the first token and "
                       "the marker")
    if not isinstance(self.skip_ids, tuple):
      raise TypeError(f"skip_ids must be a tuple of ints (hashable), got "
                      f"{type(self.skip_ids).__name__}")


class Framed(NamedTuple):
  """Framed ids [B, W'] int32, attention mask [B, W'] bool, kept positions [B, W'] bool."""
  ids: Any
  attention: Any
  keep: Any


def framed_width(framing: Framing, width: int) -> int:
  """W': the framed width of an input of `width` positions."""
  if framing.expansion_id is not None:
    return framing.max_length
  return min(width + (framing.marker_id is not None), framing.max_length)


def frame(framing: Framing, ids: Any, mask: Any, *, xp: Any = jnp) -> Framed:
  """Frames padded ids for the encoder (see the module docstring).

  Args:
    ids: [B, W] int token ids, each row's real tokens a prefix (as the vocabularies give).
    mask: [B, W] bool, True on real tokens. A row without real tokens stays empty.
    xp: `jnp` (inside a model) or `np` (host).
  Returns:
    `Framed` with arrays [B, W'], W' = `framed_width(framing, W)`.
  """
  marker = int(framing.marker_id is not None)
  width = framed_width(framing, ids.shape[1])
  n = xp.sum(mask.astype(xp.int32), axis=-1, keepdims=True)  # [B, 1]
  real = xp.where(n > 0, xp.minimum(n + marker, framing.max_length), 0)  # [B, 1]
  t = xp.arange(width)[None, :]  # [1, W']
  src = xp.where(t == 0, 0, t - marker)
  # A cut text keeps its last real token (the closing [SEP] / </s>) in the last position.
  src = xp.where((n + marker > framing.max_length) & (t == real - 1), n - 1, src)
  src = xp.clip(src, 0, ids.shape[1] - 1)
  out = xp.take_along_axis(ids, src, axis=1)  # [B, W']
  if marker:
    out = xp.where(t == 1, framing.marker_id, out)
  in_text = t < real
  keep = in_text
  if framing.skip_ids:
    keep = keep & ~xp.isin(out, xp.asarray(framing.skip_ids))
  attention = in_text
  if framing.expansion_id is not None:
    expansion = (t >= real) & (n > 0)
    out = xp.where(expansion, framing.expansion_id, out)
    keep = keep | expansion
    if framing.attend_to_expansion:
      attention = attention | expansion
  out = xp.where(in_text | keep, out, 0).astype(xp.int32)
  return Framed(ids=out, attention=attention, keep=keep)


def kept_lengths(framing: Framing | None, token_lists: Any, max_length: int, *,
                 chunk: int = 4096) -> np.ndarray:
  """Vectors kept per text: [N] int64, from token id lists framed to at most `max_length`
  (what `Encoder.encode` feeds the model); without framing, their lengths."""
  lengths = np.array([min(len(t), max_length) for t in token_lists], np.int64)
  if framing is None or not len(lengths):
    return lengths
  out = np.zeros(len(lengths), np.int64)
  for start in range(0, len(lengths), chunk):
    rows = token_lists[start:start + chunk]
    width = max(1, int(lengths[start:start + chunk].max()))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), bool)
    for r, tokens in enumerate(rows):
      tokens = list(tokens)[:width]
      ids[r, :len(tokens)] = tokens
      mask[r, :len(tokens)] = True
    out[start:start + len(rows)] = frame(framing, ids, mask, xp=np).keep.sum(axis=-1)
  return out
