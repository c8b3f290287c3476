"""Feature names, feature lengths and the conversion of raw examples to padded NumPy arrays.

Three kinds of examples (the `kind` of a source) and the features each becomes:

  "train"    query_tokens   [Lq]          int32  the query, framed (see vocab.py) and padded
             doc_tokens     [1 + N, Ld]   int32  row 0 the positive document, rows 1.. negatives
             teacher_scores [1 + N]       float32  only when the data has teacher scores
  "corpus"   doc_id         []            str    the document id
             doc_tokens     [Ld]          int32
  "queries"  query_id       []            str
             query_tokens   [Lq]          int32

Batches add a leading batch axis; inference batches (one padded pass, see pipeline.py) also carry
`valid` [b] bool. Padding uses the vocabulary's `pad_id` (0 for T5 and BERT), so the attention
mask is `tokens != pad_id`. Ids are Python `str` in NumPy object arrays (pipeline)
or `tf.string` (seqio datasets).

Lengths come as a T5X-style `TASK_FEATURE_LENGTHS` dict: `{"query_tokens": 64, "doc_tokens": 256}`
with defaults 64 / 256, where `doc_tokens` may also be `(1 + N, 256)` to choose the number N of
negatives per query (default 1). The pipeline accepts either form for every task; seqio's own
`get_dataset` trims by what it is given, so there a corpus task needs the int form.
"""

import collections
import dataclasses
import threading
from typing import Any, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from aligner_jax.data import vocab as vocab_lib

QUERY_TOKENS = "query_tokens"
DOC_TOKENS = "doc_tokens"
TEACHER_SCORES = "teacher_scores"
QUERY_ID = "query_id"
DOC_ID = "doc_id"

DEFAULT_QUERY_LENGTH = 64
DEFAULT_DOC_LENGTH = 256
DEFAULT_NUM_NEGATIVES = 1

KINDS = ("train", "corpus", "queries")


@dataclasses.dataclass(frozen=True)
class FeatureLengths:
  """Token lengths of queries and documents and the number of negatives per training query."""
  query: int = DEFAULT_QUERY_LENGTH
  doc: int = DEFAULT_DOC_LENGTH
  negatives: int = DEFAULT_NUM_NEGATIVES

  def __post_init__(self):
    if self.query < 1 or self.doc < 1 or self.negatives < 0:
      raise ValueError(f"feature lengths must be positive (negatives >= 0): {self}")

  @classmethod
  def parse(cls, mapping: Mapping[str, Any] | None) -> "FeatureLengths":
    """From a TASK_FEATURE_LENGTHS dict; unknown keys are an error (they are usually typos)."""
    if mapping is None:
      return cls()
    if isinstance(mapping, FeatureLengths):
      return mapping
    known = {QUERY_TOKENS, DOC_TOKENS, TEACHER_SCORES, QUERY_ID, DOC_ID}
    unknown = sorted(set(mapping) - known)
    if unknown:
      raise ValueError(f"unknown feature length key(s) {unknown}; expected "
                       f"{QUERY_TOKENS!r} and {DOC_TOKENS!r}")
    query = mapping.get(QUERY_TOKENS, DEFAULT_QUERY_LENGTH)
    doc = mapping.get(DOC_TOKENS, DEFAULT_DOC_LENGTH)
    negatives = DEFAULT_NUM_NEGATIVES
    if isinstance(doc, (tuple, list)):
      if len(doc) != 2:
        raise ValueError(f"{DOC_TOKENS!r} length must be an int or (1 + negatives, length), "
                         f"got {doc!r}")
      negatives, doc = int(doc[0]) - 1, doc[1]
    return cls(query=int(query), doc=int(doc), negatives=int(negatives))

  def as_dict(self, doc_rank: int = 2) -> dict[str, Any]:
    """The seqio `sequence_length` dict. seqio trims every axis it is given a length for, so
    training tasks (doc_tokens [1 + N, Ld]) take `(1 + N, Ld)` and corpus tasks (doc_tokens
    [Ld]) the int `Ld` -- pass ints when calling `get_dataset` of a corpus or query task."""
    doc = (1 + self.negatives, self.doc) if doc_rank == 2 else self.doc
    return {QUERY_TOKENS: self.query, DOC_TOKENS: doc}


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
  """[n, length] int32, each row left-aligned and padded with pad_id (rows already fit)."""
  out = np.full((len(rows), length), pad_id, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


class Featurizer:
  """Tokenises raw examples of one kind into the padded arrays described above.

  Documents recur (every epoch, and as negatives of many queries), so the framed ids of the
  last `cache_size` distinct texts per length are kept (int32, at most cache_size * length * 4
  bytes); results are identical with or without the cache.
  """

  def __init__(self, vocabulary: seqio.Vocabulary, lengths: FeatureLengths, *,
               cache_size: int = 32768):
    self.vocabulary = vocabulary
    self.lengths = lengths
    self.prefix, self.suffix = vocab_lib.special_tokens(vocabulary)
    self.cache_size = cache_size
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def tokens(self, texts: Sequence[str], length: int) -> np.ndarray:
    """[len(texts), length] int32: framed, truncated and padded token ids."""
    room = length - len(self.prefix) - len(self.suffix)
    if room < 0:
      raise ValueError(f"length {length} leaves no room for the special tokens")
    rows: list[np.ndarray | None] = [None] * len(texts)
    with self._lock:
      for i, text in enumerate(texts):
        found = self._cache.get((length, text))
        if found is not None:
          self._cache.move_to_end((length, text))
          rows[i] = found
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
      encoded = vocab_lib.encode_batch(self.vocabulary, [texts[i] for i in missing])
      with self._lock:
        for i, ids in zip(missing, encoded):
          row = np.asarray([*self.prefix, *ids[:room], *self.suffix], np.int32)
          rows[i] = row
          if self.cache_size:
            self._cache[(length, texts[i])] = row
        while len(self._cache) > self.cache_size:
          self._cache.popitem(last=False)
    return pad_rows(rows, length, self.vocabulary.pad_id)

  def __call__(self, kind: str, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """A batch dict from raw examples of `kind` (see `sources.py` for the raw fields)."""
    if kind == "train":
      return self._train(examples)
    if kind == "corpus":
      return {DOC_ID: _object_array([e["doc_id"] for e in examples]),
              DOC_TOKENS: self.tokens([e["doc"] for e in examples], self.lengths.doc)}
    if kind == "queries":
      return {QUERY_ID: _object_array([e["query_id"] for e in examples]),
              QUERY_TOKENS: self.tokens([e["query"] for e in examples], self.lengths.query)}
    raise ValueError(f"unknown example kind {kind!r}; expected one of {KINDS}")

  def _train(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    per_example = 1 + self.lengths.negatives
    docs = [d for e in examples for d in e["docs"]]
    if len(docs) != per_example * len(examples):
      raise ValueError(f"every training example needs {per_example} documents")
    out = {
        QUERY_TOKENS: self.tokens([e["query"] for e in examples], self.lengths.query),
        DOC_TOKENS: self.tokens(docs, self.lengths.doc).reshape(
            len(examples), per_example, self.lengths.doc),
    }
    with_scores = [TEACHER_SCORES in e for e in examples]
    if any(with_scores):
      if not all(with_scores):
        raise ValueError("some training examples have teacher scores and some do not")
      out[TEACHER_SCORES] = np.asarray([e[TEACHER_SCORES] for e in examples], np.float32)
    return out


def _object_array(values: Sequence[str]) -> np.ndarray:
  out = np.empty(len(values), dtype=object)
  out[:] = list(values)
  return out


def _id_feature() -> seqio.Feature:
  return seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.string,
                       rank=0)


def output_features(kind: str, vocabulary: seqio.Vocabulary, *,
                    teacher_scores: bool = False) -> dict[str, seqio.Feature]:
  """The seqio output features of a task of `kind` (EOS/CLS framing is added by `Featurizer`,
  so `add_eos` is False: seqio must not append a second EOS)."""
  tokens = lambda rank: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32, rank=rank)
  if kind == "train":
    features = {QUERY_TOKENS: tokens(1), DOC_TOKENS: tokens(2)}
    if teacher_scores:
      features[TEACHER_SCORES] = seqio.ContinuousFeature(dtype=tf.float32, rank=1)
    return features
  if kind == "corpus":
    return {DOC_ID: _id_feature(), DOC_TOKENS: tokens(1)}
  if kind == "queries":
    return {QUERY_ID: _id_feature(), QUERY_TOKENS: tokens(1)}
  raise ValueError(f"unknown example kind {kind!r}; expected one of {KINDS}")
