"""The bridge from random-access sources to seqio: a data source, a preprocessor, `register`.

A task registered with `register(...)` has a `RetrievalDataSource` that yields example indices
(shuffled by its own seeded permutation, sharded by index) and one preprocessor that turns an
index into the features of `features.py` with the same `Featurizer` the NumPy pipeline uses --
so `task.get_dataset(...)` and `pipeline.get_pipeline(task_name, ...)` give identical
examples. Nothing is read until a dataset is requested: `loader(split)` runs on first use and
its result is kept.

Through seqio the negatives of a training example are drawn as in epoch 0 of seed 0 of the
pipeline (seqio repeats an epoch unchanged); the pipeline draws new ones every epoch.
"""

import functools
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from aligner_jax.data import features as features_lib
from aligner_jax.data import loaders

Loader = Callable[[str], Any]  # split -> a source of `sources.py`

_INDEX = "_example_index"
_SPLIT = "_example_split"


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The generator that draws example `index`'s negatives in `epoch` (pipeline and seqio)."""
  return np.random.default_rng([seed, epoch, index])


class RetrievalDataSource(seqio.DataSource):
  """A seqio data source over a random-access example source of one kind."""

  def __init__(self, *, kind: str, loader: Loader, splits: Sequence[str],
               teacher_scores: bool = False, description: str = ""):
    if kind not in features_lib.KINDS:
      raise ValueError(f"unknown kind {kind!r}")
    self.kind = kind
    self.teacher_scores = teacher_scores
    self.description = description
    self._loader = loader
    self._loaded: dict[str, Any] = {}
    self._lock = threading.Lock()
    super().__init__(splits=splits, caching_permitted=False, performs_internal_shuffling=True)

  def example_source(self, split: str):
    """The random-access source of `split`; raises `DataError` on bad data.

    Loaded once per data configuration (`loaders.config_key()`: data directory overrides and
    ALIGNER_* variables), so pointing a task at other data takes effect; files edited in
    place are not re-read by a source already loaded.
    """
    if split not in self.splits:
      raise ValueError(f"split {split!r} not available (have {list(self.splits)})")
    key = (split, loaders.config_key())
    with self._lock:
      if key not in self._loaded:
        source = self._loader(split)
        if source.kind != self.kind:
          raise TypeError(f"loader gave a {source.kind!r} source for a {self.kind!r} task")
        if self.kind == "train" and source.has_teacher_scores != self.teacher_scores:
          raise ValueError("the training data " + ("lacks" if self.teacher_scores else "has")
                           + " teacher scores, unlike what the task declares")
        self._loaded[key] = source
      return self._loaded[key]

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> int:
    return len(self.example_source(split))

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    n = len(self.example_source(split))
    order = np.arange(n, dtype=np.int64)
    if shuffle:
      order = np.random.default_rng(0 if seed is None else int(seed)).permutation(n)
    if shard_info is not None:
      order = order[shard_info.index::shard_info.num_shards]
    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
    return ds.map(lambda i: {_INDEX: i, _SPLIT: tf.constant(split)})


def _feature_specs(kind: str, lengths: features_lib.FeatureLengths,
                   teacher_scores: bool) -> dict[str, tuple[tf.DType, list[int]]]:
  f = features_lib
  if kind == "train":
    specs = {f.QUERY_TOKENS: (tf.int32, [lengths.query]),
             f.DOC_TOKENS: (tf.int32, [1 + lengths.negatives, lengths.doc])}
    if teacher_scores:
      specs[f.TEACHER_SCORES] = (tf.float32, [1 + lengths.negatives])
    return specs
  if kind == "corpus":
    return {f.DOC_ID: (tf.string, []), f.DOC_TOKENS: (tf.int32, [lengths.doc])}
  return {f.QUERY_ID: (tf.string, []), f.QUERY_TOKENS: (tf.int32, [lengths.query])}


def featurize(dataset: tf.data.Dataset, sequence_length: Mapping[str, Any] | None = None,
              output_features: Mapping[str, seqio.Feature] | None = None, *,
              data_source: RetrievalDataSource) -> tf.data.Dataset:
  """seqio preprocessor: example index -> tokenised features (lengths from sequence_length)."""
  lengths = features_lib.FeatureLengths.parse(sequence_length)
  token_key = next(k for k in output_features if k.endswith("_tokens"))
  featurizer = features_lib.Featurizer(output_features[token_key].vocabulary, lengths)
  specs = _feature_specs(data_source.kind, lengths, data_source.teacher_scores)
  keys = list(specs)

  def build(index, split):
    source = data_source.example_source(split.numpy().decode("utf-8"))
    i = int(index.numpy())
    if data_source.kind == "train":
      source.check_negatives(lengths.negatives)
    raw = source.example(i, lengths.negatives, example_rng(0, 0, i))
    batch = featurizer(data_source.kind, [raw])
    return [batch[k][0] if specs[k][0] != tf.string else batch[k][0].encode("utf-8")
            for k in keys]

  def to_features(example):
    values = tf.py_function(build, [example[_INDEX], example[_SPLIT]],
                            [specs[k][0] for k in keys])
    out = {}
    for k, v in zip(keys, values):
      v.set_shape(specs[k][1])
      out[k] = v
    return out

  return dataset.map(to_features, num_parallel_calls=1, deterministic=True)


def register(name: str, *, kind: str, loader: Loader, splits: Sequence[str],
             vocabulary: seqio.Vocabulary, teacher_scores: bool = False,
             description: str = "") -> seqio.Task:
  """Registers (or re-registers) a task of `kind` whose examples come from `loader(split)`."""
  source = RetrievalDataSource(kind=kind, loader=loader, splits=splits,
                               teacher_scores=teacher_scores, description=description)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[functools.partial(featurize, data_source=source)],
      output_features=features_lib.output_features(kind, vocabulary,
                                                    teacher_scores=teacher_scores),
      shuffle_buffer_size=None)


def get_collection(task_name: str, split: str):
  """The `Collection` behind a registered task (corpus, queries and qrels for evaluation)."""
  source = retrieval_source(seqio.get_mixture_or_task(task_name))
  if source is None:
    raise ValueError(f"{task_name} is not a task of aligner_jax.data.seqio_tasks.register")
  return source.example_source(split).collection


def retrieval_source(task: seqio.Task) -> RetrievalDataSource | None:
  """The task's `RetrievalDataSource`, or None for other seqio tasks."""
  source = getattr(task, "source", None)
  return source if isinstance(source, RetrievalDataSource) else None


def default_vocabulary() -> seqio.Vocabulary:
  """The vocabulary tasks are registered with: $ALIGNER_VOCABULARY (a name or path accepted
  by `vocab.get_vocabulary`, default "t5_1_1"), resolved lazily on first use."""
  import os  # pylint: disable=g-import-not-at-top

  from aligner_jax.data import vocab  # pylint: disable=g-import-not-at-top
  return vocab.LazyVocabulary(os.environ.get("ALIGNER_VOCABULARY", "t5_1_1"))
