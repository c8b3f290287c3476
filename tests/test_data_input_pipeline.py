"""The input pipeline: deterministic order, exact resume, host sharding, negatives, padding."""

import json

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from aligner_jax.data import features as features_lib
from aligner_jax.data import input_pipeline as pipeline_lib
from aligner_jax.data import seqio_tasks
from aligner_jax.data import sources
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.data.collection import Collection
from aligner_jax.data.collection import GroupBuilder
from aligner_jax.data.collection import new_corpus
from aligner_jax.data.collection import new_queries

NUM_DOCS, NUM_QUERIES, POOL = 40, 30, 5
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _collection(teacher: bool = False, pool: int = POOL) -> Collection:
  corpus, queries = new_corpus(), new_queries()
  for d in range(NUM_DOCS):
    corpus.add(f"d{d}", f"document {d} is about {WORDS[d % 12]} and {WORDS[(d * 7) % 12]}",
               title=f"Title {d}")
  for q in range(NUM_QUERIES):
    queries.add(f"q{q}", f"what about {WORDS[q % 12]} {q}")
  builder = GroupBuilder(with_teacher_scores=teacher)
  for q in range(NUM_QUERIES):
    negatives = [(q + k) % NUM_DOCS for k in range(1, pool + 1)]
    if teacher:
      # Teacher score of a document = its row, so alignment with doc ids is checkable.
      builder.add(q, q, negatives, float(q), [float(r) for r in negatives])
    else:
      builder.add(q, q, negatives)
  c = Collection(name="synthetic", corpus=corpus, queries=queries)
  c.qrels["test"] = {f"q{q}": {f"d{q}": 1} for q in range(0, NUM_QUERIES, 3)}
  c.training["train"] = builder.build()
  return c


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.get_vocabulary("minilm")


def _featurizer(vocab, negatives=2, query=16, doc=24):
  return features_lib.Featurizer(vocab, features_lib.FeatureLengths(query, doc, negatives))


def _train_pipeline(vocab, *, collection=None, negatives=2, **kwargs):
  collection = collection or _collection()
  source = sources.TrainSource(collection, collection.training["train"])
  kwargs.setdefault("batch_size", 8)
  return pipeline_lib.Pipeline(source, _featurizer(vocab, negatives), **kwargs)


def _take(p, n):
  return [next(p) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_have_documented_shapes_and_framing(vocab):
  p = _train_pipeline(vocab, prefetch=0)
  batch = next(p)
  assert set(batch) == {"query_tokens", "doc_tokens"}
  assert batch["query_tokens"].shape == (8, 16) and batch["query_tokens"].dtype == np.int32
  assert batch["doc_tokens"].shape == (8, 3, 24) and batch["doc_tokens"].dtype == np.int32
  # Row 0 of doc_tokens is the positive; the query is framed [CLS] ... [SEP] and padded.
  first = int(p.host_indices(0, 0)[0])
  query = vocab.encode_with_special_tokens(f"what about {WORDS[first % 12]} {first}", 16)
  np.testing.assert_array_equal(batch["query_tokens"][0, :len(query)], query)
  assert (batch["query_tokens"][0, len(query):] == vocab.pad_id).all()
  positive = vocab.encode_with_special_tokens(_collection().corpus.text(first), 24)
  np.testing.assert_array_equal(batch["doc_tokens"][0, 0, :len(positive)], positive)


def test_same_seed_same_batches_other_seed_other_order(vocab):
  a = _take(_train_pipeline(vocab, seed=3), 6)
  b = _take(_train_pipeline(vocab, seed=3, prefetch=0), 6)
  _assert_batches_equal(a, b)
  c = _take(_train_pipeline(vocab, seed=4), 6)
  assert not all(np.array_equal(x["query_tokens"], y["query_tokens"]) for x, y in zip(a, c))


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])  # 3 steps per epoch: crosses epochs
def test_restore_reproduces_the_next_batches(vocab, stop_after):
  p = _train_pipeline(vocab, seed=11)
  _take(p, stop_after)
  state = json.loads(json.dumps(p.state()))  # what the trainer stores with a checkpoint
  expected = _take(p, 4)
  fresh = _train_pipeline(vocab, seed=11)
  fresh.restore(state)
  _assert_batches_equal(_take(fresh, 4), expected)
  # Restoring the same pipeline object rewinds it (prefetched batches are discarded).
  p.restore(state)
  _assert_batches_equal(_take(p, 4), expected)


def test_state_counts_batches_handed_out(vocab):
  p = _train_pipeline(vocab, batch_size=8)  # 30 examples: 3 full batches per epoch
  assert p.steps_per_epoch == 3
  _take(p, 4)
  state = p.state()
  assert (state["epoch"], state["step"]) == (1, 1)
  assert state == json.loads(json.dumps(state))


@pytest.mark.parametrize("num_shards", [2, 4])
def test_hosts_split_the_global_batch(vocab, num_shards):
  whole = _take(_train_pipeline(vocab, seed=5, batch_size=8), 5)
  hosts = [_take(_train_pipeline(vocab, seed=5, batch_size=8, shard_id=h,
                                 num_shards=num_shards), 5) for h in range(num_shards)]
  for step in range(5):
    for key in whole[step]:
      joined = np.concatenate([hosts[h][step][key] for h in range(num_shards)])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_resume_on_another_number_of_hosts(vocab):
  single = _train_pipeline(vocab, seed=2, batch_size=8)
  _take(single, 2)
  state = single.state()
  expected = next(single)
  halves = []
  for h in range(2):
    host = _train_pipeline(vocab, seed=2, batch_size=8, shard_id=h, num_shards=2)
    host.restore(state)
    halves.append(next(host))
  np.testing.assert_array_equal(
      np.concatenate([h["doc_tokens"] for h in halves]), expected["doc_tokens"])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(n=st.integers(1, 60), per_host=st.integers(1, 6),
                  hosts=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**31),
                  drop=st.booleans(), epoch=st.integers(0, 3))
def test_an_epoch_visits_every_example_once(n, per_host, hosts, seed, drop, epoch):
  batch = per_host * hosts
  hypothesis.assume(not drop or n >= batch)

  class Source:
    kind = "queries"

    def __len__(self):
      return n

  featurizer = features_lib.Featurizer(vocab_lib.get_vocabulary("minilm"),
                                       features_lib.FeatureLengths())
  pipes = [pipeline_lib.Pipeline(Source(), featurizer, batch_size=batch, seed=seed, shard_id=h,
                                 num_shards=hosts, drop_remainder=drop) for h in range(hosts)]
  seen = np.concatenate([p.host_indices(epoch, s) for s in range(pipes[0].steps_per_epoch)
                         for p in pipes])
  real = seen[seen >= 0]
  assert len(set(real.tolist())) == len(real)  # no example twice
  if drop:
    assert len(real) == (n // batch) * batch and (seen >= 0).all()
  else:
    assert sorted(real.tolist()) == list(range(n))
    assert len(seen) % batch == 0 and len(seen) - n < batch


def test_negatives_are_redrawn_each_epoch_and_follow_the_seed(vocab):
  c = _collection(pool=POOL)
  source = sources.TrainSource(c, c.training["train"])
  draws = {e: [tuple(source.example(i, 2, seqio_tasks.example_rng(0, e, i))["doc_ids"])
               for i in range(NUM_QUERIES)] for e in (0, 1)}
  assert draws[0] != draws[1]
  again = [tuple(source.example(i, 2, seqio_tasks.example_rng(0, 0, i))["doc_ids"])
           for i in range(NUM_QUERIES)]
  assert again == draws[0]
  for i, ids in enumerate(draws[0]):
    pool = {f"d{(i + k) % NUM_DOCS}" for k in range(1, POOL + 1)}
    assert ids[0] == f"d{i}" and set(ids[1:]) <= pool and len(set(ids[1:])) == 2
  # Without a generator: the top of the pool.
  assert source.example(4, 2)["doc_ids"] == ["d4", "d5", "d6"]


def test_teacher_scores_follow_their_documents(vocab):
  c = _collection(teacher=True)
  source = sources.TrainSource(c, c.training["train"])
  for i in range(NUM_QUERIES):
    ex = source.example(i, 3, seqio_tasks.example_rng(1, 2, i))
    assert ex["teacher_scores"] == [float(d[1:]) for d in ex["doc_ids"]]
  p = pipeline_lib.Pipeline(source, _featurizer(vocab, negatives=3), batch_size=6, seed=1)
  batch = next(p)
  assert batch["teacher_scores"].shape == (6, 4) and batch["teacher_scores"].dtype == np.float32


def test_small_pools_are_topped_up_with_random_non_relevant_documents(vocab):
  c = _collection(pool=1)
  source = sources.TrainSource(c, c.training["train"])
  for i in range(NUM_QUERIES):
    ids = source.example(i, 6, seqio_tasks.example_rng(0, 0, i))["doc_ids"]
    assert ids[0] == f"d{i}" and ids[1] == f"d{(i + 1) % NUM_DOCS}"
    assert f"d{i}" not in ids[1:] and len(set(ids)) == 7


def test_teacher_scores_forbid_more_negatives_than_the_pool(vocab):
  c = _collection(teacher=True, pool=2)
  source = sources.TrainSource(c, c.training["train"])
  with pytest.raises(ValueError, match="smallest negative pool with teacher scores has 2"):
    pipeline_lib.Pipeline(source, _featurizer(vocab, negatives=3), batch_size=4)


def test_inference_pads_the_last_batch_and_marks_it(vocab):
  c = _collection()
  source = sources.QuerySource(c, "test")  # 10 judged queries
  p = pipeline_lib.Pipeline(source, _featurizer(vocab), batch_size=4, shuffle=False,
                            num_epochs=1, drop_remainder=False)
  batches = list(p)
  assert len(batches) == 3
  ids = [i for b in batches for i, v in zip(b["query_id"], b["valid"]) if v]
  assert ids == [f"q{q}" for q in range(0, NUM_QUERIES, 3)]
  last = batches[-1]
  np.testing.assert_array_equal(last["valid"], [True, True, False, False])
  assert list(last["query_id"][2:]) == ["", ""]
  assert (last["query_tokens"][2:] == vocab.pad_id).all()
  corpus = pipeline_lib.Pipeline(sources.CorpusSource(c), _featurizer(vocab), batch_size=16,
                                 shuffle=False, num_epochs=1, drop_remainder=False)
  docs = [i for b in corpus for i, v in zip(b["doc_id"], b["valid"]) if v]
  assert docs == [f"d{d}" for d in range(NUM_DOCS)]


def test_restore_rejects_a_state_from_other_data(vocab):
  p = _train_pipeline(vocab, seed=1)
  state = p.state()
  for key, value in (("seed", 2), ("batch_size", 16), ("num_examples", 31), ("shuffle", False)):
    with pytest.raises(ValueError, match=f"{key}="):
      _train_pipeline(vocab, seed=1).restore({**state, key: value})
  with pytest.raises(ValueError, match="outside"):
    p.restore({**state, "step": 99})
  with pytest.raises(ValueError, match="version"):
    p.restore({**state, "version": 0})


def test_bad_settings_are_rejected(vocab):
  with pytest.raises(ValueError, match="multiple of num_shards"):
    _train_pipeline(vocab, batch_size=6, num_shards=4)
  with pytest.raises(ValueError, match="shard_id 2 outside"):
    _train_pipeline(vocab, batch_size=8, shard_id=2, num_shards=2)
  with pytest.raises(ValueError, match="cannot fill one batch"):
    _train_pipeline(vocab, batch_size=64)


def test_feature_lengths():
  parse = features_lib.FeatureLengths.parse
  assert parse(None) == features_lib.FeatureLengths(64, 256, 1)
  assert parse({"query_tokens": 32, "doc_tokens": 128}) == features_lib.FeatureLengths(32, 128, 1)
  assert parse({"doc_tokens": (8, 180)}) == features_lib.FeatureLengths(64, 180, 7)
  assert parse({"doc_tokens": (8, 180)}).as_dict() == {"query_tokens": 64, "doc_tokens": (8, 180)}
  with pytest.raises(ValueError, match="unknown feature length key"):
    parse({"inputs": 32})
  with pytest.raises(ValueError, match="int or"):
    parse({"doc_tokens": (1, 2, 3)})
  with pytest.raises(ValueError, match="positive"):
    parse({"query_tokens": 0})


def test_token_cache_does_not_change_results(vocab):
  c = _collection()
  source = sources.TrainSource(c, c.training["train"])
  lengths = features_lib.FeatureLengths(16, 24, 3)
  uncached = features_lib.Featurizer(vocab, lengths, cache_size=0)
  tiny = features_lib.Featurizer(vocab, lengths, cache_size=5)  # constant eviction
  for epoch in range(2):
    examples = [source.example(i, 3, seqio_tasks.example_rng(0, epoch, i)) for i in range(12)]
    want = uncached("train", examples)
    for _ in range(2):
      got = tiny("train", examples)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  assert len(tiny._cache) == 5 and not uncached._cache
