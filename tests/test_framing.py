"""ColBERT framing (models/framing.py) against a plain per-row reference, in the model and on
the host, and the encoding loop's vectors per text under a framed DualEncoder."""

import functools

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from model_test_utils import random_params
import numpy as np
import pytest

from aligner_jax import models
from aligner_jax.models import framing as framing_lib
from aligner_jax.retrieval import encoding

CLS, SEP, MARKER, EXPANSION, SKIP = 2, 3, 4, 5, 6


def reference(framing: framing_lib.Framing, tokens: list[int]):
  """(ids, attention, keep) of one text, written the obvious way."""
  if not tokens:
    return [], [], []
  ids = tokens[:1] + ([framing.marker_id] if framing.marker_id is not None else []) + tokens[1:]
  if len(ids) > framing.max_length:
    ids = ids[:framing.max_length - 1] + tokens[-1:]
  attention = [True] * len(ids)
  keep = [i not in framing.skip_ids for i in ids]
  if framing.expansion_id is not None:
    extra = framing.max_length - len(ids)
    ids += [framing.expansion_id] * extra
    attention += [framing.attend_to_expansion] * extra
    keep += [True] * extra
  return ids, attention, keep


def _rows(rng, rows: int, width: int):
  lengths = rng.integers(0, width + 1, rows)
  lists = []
  for n in lengths:
    body = list(rng.choice([SKIP, 7, 8, 9, 10], size=max(0, n - 2)))
    lists.append([] if n == 0 else ([CLS] + body + [SEP])[:n])
  ids = np.zeros((rows, width), np.int32)
  mask = np.zeros((rows, width), bool)
  for r, t in enumerate(lists):
    ids[r, :len(t)] = t
    mask[r, :len(t)] = True
  return lists, ids, mask


FRAMINGS = [
    framing_lib.Framing(6, marker_id=MARKER, expansion_id=EXPANSION),
    framing_lib.Framing(9, marker_id=MARKER, expansion_id=EXPANSION, attend_to_expansion=True),
    framing_lib.Framing(7, marker_id=MARKER, skip_ids=(SKIP,)),
    framing_lib.Framing(12, marker_id=MARKER, skip_ids=(SKIP, 9)),
    framing_lib.Framing(5),
    framing_lib.Framing(8, expansion_id=EXPANSION),
]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(FRAMINGS), st.sampled_from([1, 4, 7, 11]), st.integers(0, 2**31 - 1))
def test_frame_matches_reference(framing, width, seed):
  lists, ids, mask = _rows(np.random.default_rng(seed), 5, width)
  for xp in (np, jnp):
    out = framing_lib.frame(framing, xp.asarray(ids), xp.asarray(mask), xp=xp)
    assert out.ids.shape[1] == framing_lib.framed_width(framing, width)
    for r, tokens in enumerate(lists):
      want_ids, want_attention, want_keep = reference(framing, tokens)
      n = len(want_ids)
      assert np.asarray(out.ids[r, :n]).tolist() == want_ids, (xp.__name__, tokens)
      assert np.asarray(out.attention[r]).tolist() == want_attention + [False] * (
          out.ids.shape[1] - n)
      assert np.asarray(out.keep[r]).tolist() == want_keep + [False] * (out.ids.shape[1] - n)
  lengths = framing_lib.kept_lengths(framing, lists, width, chunk=2)
  assert lengths.tolist() == [sum(reference(framing, t)[2]) for t in lists]


def test_framing_settings_are_checked():
  with pytest.raises(ValueError, match="no room"):
    framing_lib.Framing(1, marker_id=MARKER)
  with pytest.raises(TypeError, match="tuple"):
    framing_lib.Framing(8, skip_ids=[SKIP])


def test_encoder_keeps_what_the_framing_keeps():
  """The encoding loop returns, per text, exactly the model's kept vectors and framed ids,
  and a corpus store's offsets match them (documents lose skip-list tokens, gain a marker;
  queries are expanded to the framing's length)."""
  config = models.bert_config("tiny", vocab_size=32, max_position_embeddings=32,
                              dropout_rate=0.0, attention_dropout_rate=0.0)
  module = models.DualEncoder(
      config, projection_dim=8, projection_bias=True, projection_activation="tanh",
      query_framing=framing_lib.Framing(10, marker_id=MARKER, expansion_id=EXPANSION),
      doc_framing=framing_lib.Framing(9, marker_id=MARKER, skip_ids=(SKIP,)))
  q = jnp.ones((1, 4), jnp.int32)
  params = random_params(module, q, q.astype(bool), q, q.astype(bool))
  lists, _, _ = _rows(np.random.default_rng(0), 7, 12)
  lists = [t for t in lists if t]
  for side, method in (("doc", "encode_documents"), ("query", "encode_queries")):
    enc = encoding.Encoder(encoding.make_encode_fn(module, side), params, batch_size=8,
                           length_bucket=4)
    got = enc.encode(lists, 12)
    # The reference: every text in one batch padded to 12 (the loop pads to buckets of 4).
    ids = np.zeros((len(lists), 12), np.int32)
    for r, tokens in enumerate(lists):
      ids[r, :len(tokens)] = tokens
    batch = jax.jit(functools.partial(module.apply, method=method))({"params": params}, ids,
                                                                     ids != 0)
    for r, (tokens, item) in enumerate(zip(lists, got)):
      keep = np.asarray(batch.mask[r])
      np.testing.assert_allclose(item["vectors"], np.asarray(batch.vectors[r])[keep],
                                 atol=1e-5)
      assert item["token_ids"].tolist() == np.asarray(batch.token_ids[r])[keep].tolist()
      want = reference(module.framing(side), tokens)
      assert item["token_ids"].tolist() == [i for i, k in zip(want[0], want[2]) if k]
    assert enc.output_lengths(lists, 12).tolist() == [len(g["vectors"]) for g in got]
  doc_enc = encoding.Encoder(encoding.make_encode_fn(module, "doc"), params, batch_size=4)

  class Vocab:  # ids given directly: token i is the text "i"
    def encode_batch(self, texts):
      return [[int(x) for x in t.split()] for t in texts]

  texts = [" ".join(map(str, t)) for t in lists]
  store = encoding.encode_corpus(doc_enc, Vocab(), [str(i) for i in range(len(texts))], texts,
                                 max_length=12, vector_dtype="float32")
  assert np.diff(store.offsets).tolist() == doc_enc.output_lengths(lists, 12).tolist()
