"""Deterministic, exactly resumable, host-sharded input pipeline producing NumPy batches.

Order. Epoch e visits the examples in the order `permutation_e = default_rng([seed, e])
.permutation(n)` (file order when not shuffling). Global batch s of epoch e holds examples
`permutation_e[s * B:(s + 1) * B]`; host `shard_id` of `num_shards` takes rows
`[shard_id * B / H, (shard_id + 1) * B / H)` of it. So the global batch -- and the training run
-- does not depend on the number of hosts, and each host tokenises only its own rows.
Negatives of example i in epoch e are drawn with `default_rng([seed, e, i])`.

Position. `state()` is a small JSON-serialisable dict `{"epoch", "step", ...}` counting the
batches handed out (not the ones prefetched); `restore(state)` continues with exactly the
batch that would have come next. The state does not depend on `shard_id`/`num_shards`, so a
run may resume on another topology with the same global batch size.

Epoch ends. Training (`drop_remainder=True`) drops the last partial global batch of an epoch.
Inference (`drop_remainder=False`, one epoch) pads the last global batch to full size with
empty examples and adds a boolean feature `valid` [b] marking the real rows, so every host
runs the same number of equally shaped steps.

`get_pipeline(task_name, ...)` builds one for a seqio task. Tasks registered through
`seqio_tasks.register` (all of `tasks/`) take the exact path above; any other seqio task or
mixture falls back to `TfDataPipeline` (seqio's own shuffling and per-host sharding; a
restore replays the epoch up to the saved step).
"""

import queue
import threading
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from aligner_jax.data import features as features_lib
from aligner_jax.data import seqio_tasks

STATE_VERSION = 1
VALID = "valid"


class Pipeline:
  """Batches of a random-access source (see the module docstring for the order)."""

  def __init__(self, source, featurizer: features_lib.Featurizer, *, batch_size: int,
               seed: int = 0, shard_id: int = 0, num_shards: int = 1, shuffle: bool = True,
               num_epochs: int | None = None, drop_remainder: bool = True, prefetch: int = 2):
    """
    Args:
      source: a source of `sources.py` (random access by index).
      featurizer: tokenises raw examples (holds the vocabulary and the feature lengths).
      batch_size: the global batch size, divisible by num_shards.
      seed: decides the order and the negatives.
      shard_id, num_shards: this host's index and the number of hosts.
      shuffle: shuffle every epoch (else file order).
      num_epochs: stop after this many epochs (None: never).
      drop_remainder: drop the last partial batch of an epoch (else pad it, adding `valid`).
      prefetch: batches prepared ahead in a background thread (0: none).
    """
    if batch_size < 1 or batch_size % num_shards:
      raise ValueError(f"batch_size {batch_size} must be a positive multiple of "
                       f"num_shards {num_shards}")
    if not 0 <= shard_id < num_shards:
      raise ValueError(f"shard_id {shard_id} outside [0, {num_shards})")
    self.source = source
    self.featurizer = featurizer
    self.kind = source.kind
    self.batch_size = batch_size
    self.host_batch_size = batch_size // num_shards
    self.seed = int(seed)
    self.shard_id = shard_id
    self.num_shards = num_shards
    self.shuffle = shuffle
    self.num_epochs = num_epochs
    self.drop_remainder = drop_remainder
    self.prefetch = prefetch
    self.num_examples = len(source)
    if drop_remainder:
      self.steps_per_epoch = self.num_examples // batch_size
      if self.steps_per_epoch == 0:
        raise ValueError(f"{self.num_examples} examples cannot fill one batch of {batch_size}; "
                         "lower the batch size")
    else:
      self.steps_per_epoch = -(-self.num_examples // batch_size)
    if self.kind == "train":
      source.check_negatives(featurizer.lengths.negatives)
    self._epoch = 0
    self._step = 0
    self._order_epoch = -1
    self._order: np.ndarray | None = None
    self._order_lock = threading.Lock()
    self._worker: _Prefetcher | None = None

  # -- order and batches as pure functions of the position --------------------------------

  def order(self, epoch: int) -> np.ndarray:
    """[n] example indices in the order epoch `epoch` visits them."""
    with self._order_lock:
      if self._order_epoch != epoch:
        if self.shuffle:
          self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        else:
          self._order = np.arange(self.num_examples)
        self._order_epoch = epoch
      return self._order

  def host_indices(self, epoch: int, step: int) -> np.ndarray:
    """[host batch] example indices of this host in (epoch, step); -1 marks padding rows."""
    order = self.order(epoch)
    start = step * self.batch_size + self.shard_id * self.host_batch_size
    rows = order[start:start + self.host_batch_size]
    if len(rows) < self.host_batch_size:
      rows = np.concatenate([rows, np.full(self.host_batch_size - len(rows), -1, np.int64)])
    return rows

  def batch_at(self, epoch: int, step: int) -> dict[str, np.ndarray]:
    """This host's batch at (epoch, step): feature -> [host batch, ...]."""
    indices = self.host_indices(epoch, step)
    valid = indices >= 0
    negatives = self.featurizer.lengths.negatives
    # Padding rows repeat a real example and are masked by `valid`.
    fill = int(indices[valid][0]) if valid.any() else 0
    examples = [
        self.source.example(int(i) if i >= 0 else fill, negatives,
                            seqio_tasks.example_rng(self.seed, epoch, int(i) if i >= 0 else fill))
        for i in indices
    ]
    batch = self.featurizer(self.kind, examples)
    if not self.drop_remainder:
      pad_id = self.featurizer.vocabulary.pad_id
      for key, value in batch.items():
        if value.dtype == object:
          value[~valid] = ""
        elif key.endswith("_tokens"):
          value[~valid] = pad_id
        else:
          value[~valid] = 0
      batch[VALID] = valid
    return batch

  def _positions(self, epoch: int, step: int) -> Iterator[tuple[int, int]]:
    while self.num_epochs is None or epoch < self.num_epochs:
      yield epoch, step
      step += 1
      if step >= self.steps_per_epoch:
        epoch, step = epoch + 1, 0

  # -- iteration with prefetching -----------------------------------------------------------

  def __iter__(self) -> "Pipeline":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._worker is None:
      self._worker = _Prefetcher(self.batch_at, self._positions(self._epoch, self._step),
                                 self.prefetch)
    (epoch, step), batch = self._worker.next()
    self._epoch, self._step = epoch, step + 1
    if self._step >= self.steps_per_epoch:
      self._epoch, self._step = epoch + 1, 0
    return batch

  def close(self) -> None:
    """Stops the prefetching thread (iteration may continue; it restarts it)."""
    worker = getattr(self, "_worker", None)  # absent when __init__ raised
    if worker is not None:
      worker.close()
      self._worker = None

  def __del__(self):
    self.close()

  # -- position -----------------------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    """The position after the last batch handed out (JSON-serialisable)."""
    return {
        "version": STATE_VERSION,
        "epoch": self._epoch,
        "step": self._step,
        "seed": self.seed,
        "batch_size": self.batch_size,
        "num_examples": self.num_examples,
        "shuffle": self.shuffle,
    }

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from `state` (from `state()` of a pipeline over the same data)."""
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"pipeline state version {state.get('version')!r} is not "
                       f"{STATE_VERSION}")
    for key in ("seed", "batch_size", "num_examples", "shuffle"):
      if state[key] != getattr(self, key):
        raise ValueError(f"cannot restore a pipeline state with {key}={state[key]!r} into a "
                         f"pipeline with {key}={getattr(self, key)!r} (different data or "
                         "settings: the order would not be the same)")
    step = int(state["step"])
    if not 0 <= step < self.steps_per_epoch:
      raise ValueError(f"step {step} outside the {self.steps_per_epoch} steps of an epoch")
    self.close()
    self._epoch, self._step = int(state["epoch"]), step


class _Prefetcher:
  """Produces `(position, make(position))` in a background thread, `depth` ahead."""

  _DONE = object()

  def __init__(self, make: Callable, positions: Iterator, depth: int):
    self._make = make
    self._positions = positions
    self._depth = depth
    self._stop = threading.Event()
    if depth > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()

  def _run(self):
    try:
      for position in self._positions:
        item = (position, self._make(*position))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
      self._queue.put(self._DONE)
    except BaseException as e:  # handed to the consumer, which re-raises it
      self._queue.put(e)

  def next(self):
    if self._depth == 0:
      position = next(self._positions)
      return position, self._make(*position)
    item = self._queue.get()
    if item is self._DONE:
      self._queue.put(item)
      raise StopIteration
    if isinstance(item, BaseException):
      self._queue.put(item)
      raise item
    return item

  def close(self):
    self._stop.set()
    if self._depth > 0:
      # Unblock a producer waiting on a full queue, then let it see the stop flag.
      while self._thread.is_alive():
        try:
          self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.05)


class TfDataPipeline:
  """The fallback for seqio tasks and mixtures without random access.

  Epoch e is `dataset_fn(e)` (seqio shuffles with seed + e and shards per host by example);
  a restore rebuilds the epoch and skips the batches already handed out.
  """

  def __init__(self, dataset_fn: Callable[[int], tf.data.Dataset], *,
               num_epochs: int | None, seed: int, batch_size: int):
    self._dataset_fn = dataset_fn
    self.num_epochs = num_epochs
    self.seed = seed
    self.batch_size = batch_size
    self._epoch = 0
    self._step = 0
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      if self.num_epochs is not None and self._epoch >= self.num_epochs:
        raise StopIteration
      if self._iterator is None:
        ds = self._dataset_fn(self._epoch).skip(self._step)
        self._iterator = ds.as_numpy_iterator()
      try:
        batch = next(self._iterator)
      except StopIteration:
        self._epoch, self._step, self._iterator = self._epoch + 1, 0, None
        continue
      self._step += 1
      return {k: _strings_to_str(v) for k, v in batch.items()}

  def state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "epoch": self._epoch, "step": self._step,
            "seed": self.seed, "batch_size": self.batch_size}

  def restore(self, state: Mapping[str, Any]) -> None:
    for key in ("seed", "batch_size"):
      if state[key] != getattr(self, key):
        raise ValueError(f"cannot restore a pipeline state with {key}={state[key]!r} into a "
                         f"pipeline with {key}={getattr(self, key)!r}")
    self._epoch, self._step, self._iterator = int(state["epoch"]), int(state["step"]), None

  def close(self) -> None:
    self._iterator = None


def _strings_to_str(value: np.ndarray) -> np.ndarray:
  if value.dtype == object:
    return np.vectorize(lambda b: b.decode("utf-8") if isinstance(b, bytes) else b,
                        otypes=[object])(value)
  return value


def get_pipeline(task_name: str, *, batch_size: int, split: str | None = None,
                 feature_lengths: Mapping[str, Any] | None = None, seed: int = 0,
                 shard_id: int = 0, num_shards: int = 1, shuffle: bool | None = None,
                 num_epochs: int | None = -1, drop_remainder: bool | None = None,
                 vocabulary: seqio.Vocabulary | None = None, prefetch: int = 2):
  """The input pipeline of a seqio task or mixture (see the module docstring).

  Args:
    task_name: a registered seqio task or mixture (`import tasks` registers this project's).
    batch_size: the global batch size (all hosts together).
    split: the split to read (default "corpus" for corpus tasks, else "train").
    feature_lengths: TASK_FEATURE_LENGTHS, e.g. {"query_tokens": 64, "doc_tokens": (8, 256)}.
    seed: decides the order and the negatives.
    shard_id, num_shards: this host (`jax.process_index()`) and the number of hosts.
    shuffle: default True for training tasks, False for corpus/query tasks.
    num_epochs: default (-1) endless for training, one epoch otherwise; None is endless.
    drop_remainder: default True for training, False (pad and add `valid`) otherwise.
    vocabulary: tokenise with this vocabulary instead of the task's (e.g. the model's).
    prefetch: batches prepared ahead in a background thread.
  """
  task = _get_task(task_name)
  lengths = features_lib.FeatureLengths.parse(feature_lengths)
  data_source = seqio_tasks.retrieval_source(task)
  if split is None:
    split = "corpus" if data_source is not None and data_source.kind == "corpus" else "train"
  training = data_source.kind == "train" if data_source else split == "train"
  shuffle = training if shuffle is None else shuffle
  num_epochs = (None if training else 1) if num_epochs == -1 else num_epochs
  drop_remainder = training if drop_remainder is None else drop_remainder
  if data_source is not None:
    source = data_source.example_source(split)
    token_feature = next(k for k in task.output_features if k.endswith("_tokens"))
    vocabulary = vocabulary or task.output_features[token_feature].vocabulary
    return Pipeline(source, features_lib.Featurizer(vocabulary, lengths), batch_size=batch_size,
                    seed=seed, shard_id=shard_id, num_shards=num_shards, shuffle=shuffle,
                    num_epochs=num_epochs, drop_remainder=drop_remainder, prefetch=prefetch)
  if vocabulary is not None:
    raise ValueError(f"{task_name}: a vocabulary override needs a task registered through "
                     "aligner_jax.data.seqio_tasks.register")
  if batch_size % num_shards:
    raise ValueError(f"batch_size {batch_size} must be a multiple of num_shards {num_shards}")

  doc_feature = task.output_features.get(features_lib.DOC_TOKENS)
  sequence_length = lengths.as_dict(doc_feature.rank if doc_feature is not None else 1)

  def dataset_fn(epoch: int) -> tf.data.Dataset:
    ds = task.get_dataset(sequence_length=sequence_length, split=split, shuffle=shuffle,
                          seed=seed + epoch, num_epochs=1,
                          shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards))
    return ds.batch(batch_size // num_shards, drop_remainder=drop_remainder)

  return TfDataPipeline(dataset_fn, num_epochs=num_epochs, seed=seed, batch_size=batch_size)


def _get_task(name: str):
  """The registered seqio task or mixture named `name`."""
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    raise ValueError(f"no seqio task or mixture named {name!r} is registered: import the module "
                     "that registers it first (this project's are in `tasks/`: `import tasks` "
                     "in Python, or the `import tasks` line of gin/runs/train.gin)")
  return seqio.get_mixture_or_task(name)


def dataset_fn(task_name: str, feature_lengths: Mapping[str, Any] | None, *, batch_size: int,
               shard_index: int = 0, num_shards: int = 1, seed: int = 0,
               split: str | None = None, **kwargs):
  """The trainer's view: `batch_size` is per host (global = batch_size * num_shards).

  Everything else is `get_pipeline`'s (kwargs are passed on).
  """
  return get_pipeline(task_name, batch_size=batch_size * num_shards, split=split,
                      feature_lengths=feature_lengths, seed=seed, shard_id=shard_index,
                      num_shards=num_shards, **kwargs)
