"""Vocabularies: ids equal the reference tokenizers, model framing, tf paths, resolution."""

import functools
import json
import pickle

from conftest import shared_path
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf
import tokenizers

from aligner_jax.data import vocab as vocab_lib


def _scifact_texts(scifact_dir, n_docs=150, n_queries=100):
  texts = []
  with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as f:
    for _, line in zip(range(n_docs), f):
      doc = json.loads(line)
      texts += [doc["title"], doc["text"]]
  with open(scifact_dir / "queries.jsonl", encoding="utf-8") as f:
    for _, line in zip(range(n_queries), f):
      texts.append(json.loads(line)["text"])
  return texts


@pytest.fixture(scope="module")
def t5_vocab():
  return vocab_lib.TokenizersVocabulary(
      shared_path("tokenizers", "t5_v1_1", "tokenizer.json"))


@pytest.fixture(scope="module")
def minilm_vocab():
  return vocab_lib.get_vocabulary("minilm")


@pytest.fixture(scope="module")
def t5_spiece(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "spiece.model"
  vocab_lib.tokenizer_json_to_sentencepiece(
      shared_path("tokenizers", "t5_v1_1", "tokenizer.json"), path)
  return vocab_lib.SentencePieceVocabulary(str(path))


@functools.lru_cache(maxsize=None)
def _reference(path, truncation=None):
  tok = tokenizers.Tokenizer.from_file(str(path))
  tok.no_truncation()
  tok.no_padding()
  if truncation is not None:
    tok.enable_truncation(truncation)
  return tok


def test_t5_ids_equal_tokenizers_reference_on_scifact(t5_vocab, scifact_dir, t5_tokenizer_json):
  texts = _scifact_texts(scifact_dir)
  reference = _reference(t5_tokenizer_json)
  expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
  assert t5_vocab.encode_batch(texts) == expected
  assert [list(t5_vocab.encode(t)) for t in texts[:20]] == expected[:20]
  # The reference's own framing (its post-processor) appends </s>=1.
  framed = [e.ids for e in reference.encode_batch(texts[:50], add_special_tokens=True)]
  assert [t5_vocab.encode_with_special_tokens(t) for t in texts[:50]] == framed


def test_t5_special_ids(t5_vocab):
  assert (t5_vocab.pad_id, t5_vocab.eos_id, t5_vocab.unk_id, t5_vocab.bos_id) == (0, 1, 2, None)
  assert t5_vocab.prefix_ids == () and t5_vocab.suffix_ids == (1,)
  assert t5_vocab.vocab_size == 32100  # 32,000 pieces + 100 sentinels in the JSON


def test_minilm_matches_transformers_with_cls_sep_and_truncation(minilm_vocab, scifact_dir):
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(
      str(vocab_lib.minilm_tokenizer_json()).rsplit("/", 1)[0])
  texts = _scifact_texts(scifact_dir, n_docs=60, n_queries=60)
  for max_length in (16, 64, 256):
    expected = reference(texts, truncation=True, max_length=max_length)["input_ids"]
    got = [minilm_vocab.encode_with_special_tokens(t, max_length) for t in texts]
    assert got == expected
  assert (minilm_vocab.pad_id, minilm_vocab.bos_id, minilm_vocab.eos_id,
          minilm_vocab.unk_id) == (0, 101, 102, 100)
  assert minilm_vocab.vocab_size == 30522
  # The JSON pads to 128 and truncates at 128; the vocabulary must do neither.
  long_text = " ".join(["retrieval"] * 300)
  assert len(minilm_vocab.encode(long_text)) == 300


def test_t5_matches_transformers_with_truncation(t5_vocab, scifact_dir, t5_tokenizer_json):
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(str(t5_tokenizer_json.parent))
  texts = _scifact_texts(scifact_dir, n_docs=40, n_queries=40)
  for max_length in (8, 64):
    expected = reference(texts, truncation=True, max_length=max_length)["input_ids"]
    assert [t5_vocab.encode_with_special_tokens(t, max_length) for t in texts] == expected


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    words=st.lists(st.sampled_from(["cell", "Protein", "x", "naïve", "β-cell", "42", ",", "IL-6"]),
                   max_size=30),
    max_length=st.integers(min_value=2, max_value=24))
def test_framing_truncates_like_the_reference(minilm_vocab, words, max_length):
  text = " ".join(words)
  reference = _reference(minilm_vocab.path, max_length)
  assert minilm_vocab.encode_with_special_tokens(text, max_length) == reference.encode(text).ids


def test_framing_needs_room_for_special_tokens(minilm_vocab):
  with pytest.raises(ValueError, match="no room"):
    minilm_vocab.encode_with_special_tokens("hello", 1)


@pytest.mark.parametrize("which", ["t5", "minilm"])
def test_encode_tf_and_decode_tf_agree_with_python(which, t5_vocab, minilm_vocab):
  vocab = t5_vocab if which == "t5" else minilm_vocab
  texts = ["Mitochondria produce ATP.", "a", "Zürich café, naïve résumé!"]
  for text in texts:
    np.testing.assert_array_equal(vocab.encode_tf(tf.constant(text)).numpy(), vocab.encode(text))
  ragged = vocab.encode_tf(tf.constant(texts))
  assert ragged.to_list() == [list(vocab.encode(t)) for t in texts]
  # Inside tf.data (graph mode), as seqio preprocessors run it.
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocab.encode_tf)
  assert [list(x) for x in ds.as_numpy_iterator()] == [list(vocab.encode(t)) for t in texts]
  ids = vocab.encode(texts[0])
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == vocab.decode(ids)
  batch = vocab.decode_tf(tf.constant([ids, ids])).numpy()
  assert [b.decode() for b in batch] == [vocab.decode(ids)] * 2


def test_decode_stops_at_eos_and_skips_specials(t5_vocab, minilm_vocab):
  ids = t5_vocab.encode("first part")
  assert t5_vocab.decode(list(ids) + [1] + list(t5_vocab.encode("after eos"))) == "first part"
  framed = minilm_vocab.encode_with_special_tokens("hello world") + [0, 0]
  assert minilm_vocab.decode(framed) == "hello world"


def test_sentencepiece_conversion_gives_identical_ids(t5_spiece, t5_vocab, scifact_dir):
  texts = _scifact_texts(scifact_dir, n_docs=100, n_queries=100)
  assert t5_spiece.encode_batch(texts) == t5_vocab.encode_batch(texts)
  assert t5_spiece.prefix_ids == () and t5_spiece.suffix_ids == (1,)
  assert (t5_spiece.pad_id, t5_spiece.eos_id, t5_spiece.unk_id) == (0, 1, 2)
  # seqio's in-graph tf_text tokenizer on the converted model.
  got = t5_spiece.encode_tf(tf.constant(texts[:10])).to_list()
  assert got == t5_vocab.encode_batch(texts[:10])


def test_sentencepiece_conversion_rejects_wordpiece(tmp_path):
  with pytest.raises(ValueError, match="only Unigram"):
    vocab_lib.tokenizer_json_to_sentencepiece(vocab_lib.minilm_tokenizer_json(),
                                              tmp_path / "x.model")
  assert not (tmp_path / "x.model").exists()


def test_get_vocabulary_by_name_and_path(t5_tokenizer_json, monkeypatch, t5_spiece):
  monkeypatch.delenv("ALIGNER_T5_VOCAB", raising=False)
  monkeypatch.setenv("ALIGNER_SHARED_DATA", str(t5_tokenizer_json.parents[2]))
  by_name = vocab_lib.get_vocabulary("t5_1_1")
  assert isinstance(by_name, vocab_lib.TokenizersVocabulary)
  assert by_name is vocab_lib.get_vocabulary(str(t5_tokenizer_json))
  monkeypatch.setenv("ALIGNER_T5_VOCAB", t5_spiece.sentencepiece_model_file)
  assert isinstance(vocab_lib.get_vocabulary("t5_1_1"), vocab_lib.SentencePieceVocabulary)
  assert vocab_lib.get_vocabulary("minilm").prefix_ids == (101,)


def test_get_vocabulary_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="not found"):
    vocab_lib.get_vocabulary(tmp_path / "missing.json")
  other = tmp_path / "vocab.txt"
  other.write_text("a\n")
  with pytest.raises(ValueError, match="tokenizer.json or a SentencePiece"):
    vocab_lib.get_vocabulary(other)
  monkeypatch.delenv("ALIGNER_T5_VOCAB", raising=False)
  monkeypatch.setenv("ALIGNER_SHARED_DATA", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="ALIGNER_T5_VOCAB"):
    vocab_lib.get_vocabulary("t5_1_1")
  broken = tmp_path / "broken.json"
  broken.write_text("{not json")
  with pytest.raises(ValueError, match="not a Hugging Face tokenizers JSON"):
    vocab_lib.TokenizersVocabulary(broken).encode("x")


def test_lazy_vocabulary_touches_nothing_until_used(tmp_path, t5_tokenizer_json):
  lazy = vocab_lib.LazyVocabulary(str(tmp_path / "absent.json"))
  assert "absent.json" in str(lazy)
  with pytest.raises(FileNotFoundError):
    lazy.encode("x")
  present = vocab_lib.LazyVocabulary(str(t5_tokenizer_json))
  assert present.encode("Hello") == vocab_lib.get_vocabulary(t5_tokenizer_json).encode("Hello")
  assert vocab_lib.special_tokens(present) == ((), (1,))


def test_pickle_round_trip(t5_vocab, minilm_vocab):
  for vocab in (t5_vocab, minilm_vocab):
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab
    assert copy.encode("Pickled text") == vocab.encode("Pickled text")
