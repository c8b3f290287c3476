"""The training objectives against NumPy references computed from the model's own scores."""

import flax.linen as nn
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aligner_jax import losses
from aligner_jax import models
from aligner_jax.scoring import LiteScorer
from aligner_jax.scoring import align_scores_candidates
from aligner_jax.train import model_fns

B, K, N_Q, N_D = 4, 3, 6, 10


def _batch(seed=0, teacher=True):
  rng = np.random.default_rng(seed)
  q = rng.integers(2, 50, (B, N_Q)).astype(np.int32)
  d = rng.integers(2, 50, (B, K, N_D)).astype(np.int32)
  q[:, -2:] = 0  # padding
  d[:, :, -3:] = 0
  d[1, 2] = d[0, 0]  # query 0's positive is also query 1's last negative
  d[3, 2] = 0  # an empty (padding) candidate
  batch = {"query_tokens": q, "doc_tokens": d}
  if teacher:
    batch["teacher_scores"] = rng.normal(size=(B, K)).astype(np.float32)
  return batch


def _module(**kw):
  return models.DualEncoder(models.t5_config("tiny", dropout_rate=0.0, vocab_size=64),
                            projection_dim=8, **kw)


def _encode(model, params, batch):
  q, d, valid = jax.jit(lambda p, b: model._encode(p, b, rng=None, train=False))(params, batch)
  return jax.device_get((q, d, valid))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("alignment", [None, "top_k:1"])
def test_in_batch_softmax_ce_matches_numpy(alignment):
  model = model_fns.RetrievalModel(_module(), alignment=alignment, loss="softmax_ce",
                                   temperature=0.1)
  batch = _batch(teacher=False)
  params = nn.unbox(model.init_params(jax.random.key(0), batch))
  loss, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, rng=None, train=False))(params, batch)
  q, d, valid = _encode(model, params, batch)
  if alignment is None:
    scores = np.einsum("bh,ch->bc", q.pooled, d.pooled.reshape(B * K, -1))
  else:
    scores = np.asarray(align_scores_candidates(
        q.vectors, q.mask, np.broadcast_to(d.vectors.reshape(1, B * K, N_D, -1),
                                           (B, B * K, N_D, d.vectors.shape[-1])),
        np.broadcast_to(d.mask.reshape(1, B * K, N_D), (B, B * K, N_D)), alignment))
  mask = np.broadcast_to(valid.reshape(1, -1), (B, B * K)).copy()
  mask[1, 2 * 0 + 0] &= True
  mask[0, 1 * K + 2] = False  # the copy of query 0's positive is not its negative
  ref, ranks = [], []
  for i in range(B):
    logits = np.where(mask[i], scores[i] / 0.1, -np.inf)
    ref.append(-_log_softmax(logits[mask[i]])[list(np.flatnonzero(mask[i])).index(i * K)])
    pos = scores[i, i * K]
    ranks.append(1 + np.sum((scores[i] >= pos) & mask[i] & (np.arange(B * K) != i * K)))
  np.testing.assert_allclose(float(loss), np.mean(ref), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["mrr"]), np.mean(1.0 / np.array(ranks)), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(np.array(ranks) == 1))


def test_distillation_on_own_candidates():
  model = model_fns.RetrievalModel(_module(normalize_pooled=False), alignment=None,
                                   loss="m3se", score_scale=2.0)
  batch = _batch()
  params = nn.unbox(model.init_params(jax.random.key(1), batch))
  loss, _ = jax.jit(lambda p, b: model.loss_fn(p, b, rng=None, train=False))(params, batch)
  q, d, valid = _encode(model, params, batch)
  assert not valid[3, 2] and valid.sum() == B * K - 1
  student = 2.0 * np.einsum("bh,bkh->bk", q.pooled, d.pooled)
  labels = np.zeros((B, K), np.float32)
  labels[:, 0] = 1
  want = losses.m3se(batch["teacher_scores"], student, labels, mask=valid)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  # Every other loss name goes through the same candidate path.
  for name in ("margin_mse", "kl_distill", "mse", "softmax_ce_distill", "one_hot_ce"):
    other = model_fns.RetrievalModel(model.module, alignment=None, loss=name)
    got, metrics = other._distill(jnp.asarray(student), batch, jnp.asarray(valid))
    teacher = np.zeros_like(student) if name == "one_hot_ce" else batch["teacher_scores"]
    want = losses.get_loss(name)(teacher, student, labels, mask=valid)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5, err_msg=name)
    assert 0.0 < float(metrics["mrr"]) <= 1.0


@pytest.mark.slow
def test_lite_model_scores_with_its_lite_head():
  module = _module(lite_scorer=LiteScorer(query_len=N_Q, doc_len=N_D, row_width=8,
                                          col_width=4))
  model = model_fns.LiteModel(module, loss="kl_distill")
  batch = _batch()
  params = nn.unbox(model.init_params(jax.random.key(2), batch))
  loss, _ = jax.jit(lambda p, b: model.loss_fn(p, b, rng=None, train=False))(params, batch)
  q, d, valid = _encode(model, params, batch)
  student = module.apply({"params": params}, q, d, method=models.DualEncoder.lite_scores)
  labels = np.zeros((B, K), np.float32)
  labels[:, 0] = 1
  want = losses.kl_distill(batch["teacher_scores"], np.asarray(student), labels, mask=valid)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_distillation_without_teacher_scores_is_a_clear_error():
  model = model_fns.RetrievalModel(_module(), alignment=None, loss="m3se")
  batch = _batch(teacher=False)
  params = nn.unbox(model.init_params(jax.random.key(0), batch))
  with pytest.raises(ValueError, match="no 'teacher_scores' feature"):
    model.loss_fn(params, batch, rng=None, train=False)


def test_bad_configurations_fail_at_construction():
  with pytest.raises(ValueError, match="unknown loss 'nope'"):
    model_fns.RetrievalModel(_module(), alignment=None, loss="nope")
  with pytest.raises(ValueError, match="needs a DualEncoder with a lite_scorer"):
    model_fns.LiteModel(_module(), loss="kl_distill")


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.integers(-3, 3), min_size=5, max_size=5),
       pos=st.integers(0, 4), valid=st.lists(st.booleans(), min_size=5, max_size=5))
def test_rank_metrics_match_numpy(scores, pos, valid):
  scores, valid = np.array([scores], np.float32), np.array([valid])
  valid[0, pos] = True
  labels = np.zeros_like(scores)
  labels[0, pos] = 1
  got = jax.device_get(model_fns.rank_metrics(scores, labels, valid))
  others = valid[0] & (np.arange(5) != pos)
  rank = 1 + np.sum(scores[0][others] >= scores[0, pos])  # ties rank the positive last
  assert got["mrr"] == pytest.approx(1.0 / rank)
  assert got["accuracy"] == float(rank == 1)


def test_token_hash_identifies_equal_sequences():
  ids = jnp.array([[1, 2, 3, 0], [1, 2, 3, 0], [3, 2, 1, 0], [1, 2, 3, 4]], jnp.int32)
  h = np.asarray(model_fns.token_hash(ids))
  assert h[0] == h[1] and len(set(h[[0, 2, 3]])) == 3


def test_models_meet_the_trainer_contract_and_others_are_refused():
  from aligner_jax.train import contracts
  lite = _module(lite_scorer=LiteScorer(query_len=N_Q, doc_len=N_D, row_width=8, col_width=4))
  for model in (model_fns.RetrievalModel(_module(), alignment="top_k:1", loss="softmax_ce"),
                model_fns.LiteModel(lite, loss="kl_distill")):
    assert isinstance(model, contracts.TrainableModel)
    assert contracts.check_model(model) is model

  class NoLoss:
    def init_params(self, rng, batch):
      return {}

  with pytest.raises(TypeError, match="NoLoss is not a TrainableModel: it has no loss_fn, "
                                      "load_initial_params"):
    contracts.check_model(NoLoss())
  with pytest.raises(TypeError, match="dataset_fn make returned a list, not an InputPipeline"):
    def make():
      return []
    contracts.check_pipeline(make(), make)


def test_several_alignments_train_on_the_mean_of_their_losses():
  batch = _batch(teacher=False)
  both = model_fns.RetrievalModel(_module(), alignment=["top_k:1", "top_k:2"],
                                  loss="softmax_ce", temperature=0.1)
  params = nn.unbox(both.init_params(jax.random.key(0), batch))

  def loss_of(model):
    return float(model.loss_fn(params, batch, rng=None, train=False)[0])

  singles = [loss_of(model_fns.RetrievalModel(_module(), alignment=a, loss="softmax_ce",
                                              temperature=0.1)) for a in ("top_k:1", "top_k:2")]
  assert singles[0] != pytest.approx(singles[1])
  assert loss_of(both) == pytest.approx(np.mean(singles), rel=1e-5)
  with pytest.raises(ValueError, match="non-empty list"):
    model_fns.RetrievalModel(_module(), alignment=[], loss="softmax_ce")
