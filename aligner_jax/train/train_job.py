"""The train job (`run.job = @train` in `gin/runs/train.gin`): set up, resume, loop, save.

This is entry-point code: gin configures its arguments (see `gin_registry.py`) and it writes
the operative gin config to `MODEL_DIR/operative_config.gin` once everything is built.

Preemption: on SIGTERM the loop checkpoints the step it is at and returns
(`aligner_jax.train.preemption`); all hosts agree on that step.

Resuming: if `MODEL_DIR/checkpoints` holds a checkpoint, the newest one is restored (train
state into the current shardings, this host's data pipeline position) and training continues
from its step; the same command therefore resumes a killed run exactly. Otherwise parameters
are initialised under sharding and, with `initial_checkpoint_path`, replaced by imported
pretrained weights.

Multi-host: every process runs this function; each reads its own shard of the data
(`batch_size / process_count` rows per step); only process 0 writes logs and configs.
"""

from collections.abc import Callable, Mapping
import os
from typing import Any

from etils import epath
import gin
import jax
import optax

from aligner_jax import partitioning
from aligner_jax.data import input_pipeline as pipeline_lib
from aligner_jax.data import loaders
from aligner_jax.data import vocab as vocab_lib
from aligner_jax.io import atomic_write
from aligner_jax.train import checkpoints as checkpoints_lib
from aligner_jax.train import contracts
from aligner_jax.train import distributed
from aligner_jax.train import metric_logging as metrics_lib
from aligner_jax.train import preemption
from aligner_jax.train import trainer as trainer_lib

# (task_name, feature_lengths, *, batch_size (global), shard_index, num_shards, seed) -> a
# pipeline: an iterator of this host's rows of each global batch {feature: np.ndarray
# [batch_size / num_shards, ...]} with `state()` / `restore(state)` / `close()`.


def train_pipeline(task_name: str, feature_lengths: Mapping[str, Any], *, batch_size: int,
                   shard_index: int, num_shards: int, seed: int, split: str = "train",
                   vocabulary: str | None = None,
                   data_dirs: Mapping[str, str] | None = None) -> Any:
  """The training pipeline of a seqio task (`aligner_jax.data.input_pipeline.get_pipeline`).

  Args:
    task_name: MIXTURE_OR_TASK_NAME (tasks of `tasks/`, or any registered seqio task).
    feature_lengths: TASK_FEATURE_LENGTHS, e.g. {"query_tokens": 64, "doc_tokens": (2, 256)}.
    batch_size: the global batch size; this host gets its `batch_size / num_shards` rows.
    shard_index, num_shards: this process and the number of processes.
    seed: decides the order and the sampled negatives.
    split: the split to train on.
    vocabulary: tokenise with this vocabulary (the model's VOCABULARY, e.g. "minilm") instead
      of the task's own.
    data_dirs: {key: directory} for `aligner_jax.data.loaders.set_data_dir` (e.g.
      {"msmarco": "/data/msmarco"}); the ALIGNER_*_DIR environment variables work as well.
  """
  for key, path in (data_dirs or {}).items():
    loaders.set_data_dir(key, path)
  vocab = None if vocabulary is None else vocab_lib.get_vocabulary(vocabulary)
  return pipeline_lib.get_pipeline(task_name, batch_size=batch_size, split=split,
                                   feature_lengths=feature_lengths, seed=seed,
                                   shard_id=shard_index, num_shards=num_shards,
                                   vocabulary=vocab)


def _write_operative_config(model_dir: str) -> None:
  atomic_write(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())


def _check_batch_size(batch_size: int, partitioner: partitioning.Partitioner,
                      num_microbatches: int) -> None:
  """The global batch must split evenly over hosts, devices and micro-batches."""
  processes, data = jax.process_count(), partitioner.data_size
  for divisor, what in ((processes, "processes"), (data, "data-parallel devices"),
                        (num_microbatches * data, "num_microbatches x data-parallel devices")):
    if batch_size % divisor:
      raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by the {divisor} {what}.")


def train(*, model: contracts.TrainableModel, model_dir: str, train_steps: int, batch_size: int,
          task_name: str, feature_lengths: dict[str, int], dataset_fn: contracts.DatasetFn,
          optimizer: optax.GradientTransformation,
          learning_rate_fn: Callable[[Any], Any], num_partitions: int = 1,
          checkpoint_period: int = 1000, keep_checkpoints: int | None = 3,
          async_checkpoints: bool = True, initial_checkpoint_path: str | None = None,
          num_microbatches: int = 1, log_period: int = 1, seed: int = 0) -> dict[str, float]:
  """Trains `model` for `train_steps` optimizer steps; returns the last logged metrics.

  Args:
    model: MODEL, a `contracts.TrainableModel` (`model_fns.RetrievalModel` / `LiteModel`).
    model_dir: MODEL_DIR (local or gs://): checkpoints/, train_metrics.jsonl,
      train/ (TensorBoard), operative_config.gin.
    train_steps: TRAIN_STEPS, the total (a resumed run continues up to it).
    batch_size: BATCH_SIZE, global; divisible by hosts x data-parallel devices x microbatches.
    task_name, feature_lengths: MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS.
    dataset_fn: builds the host's `contracts.InputPipeline` (`train_pipeline`).
    optimizer: the optax transformation (`optim.make_optimizer`).
    learning_rate_fn: the schedule the optimizer uses, logged as `learning_rate`.
    num_partitions: NUM_PARTITIONS, model-parallel devices.
    checkpoint_period: CHECKPOINT_PERIOD; the last step is always saved too.
    keep_checkpoints: how many checkpoints to keep (None: all).
    async_checkpoints: write checkpoints in the background.
    initial_checkpoint_path: INITIAL_CHECKPOINT_PATH (used only when starting from scratch).
    num_microbatches: gradient accumulation over this many micro-batches per step.
    log_period: log every this many steps (means over the period).
    seed: parameter init, data order, negatives and dropout.
  """
  model = contracts.check_model(model)
  distributed.initialize()
  is_writer = distributed.is_logging_process()
  partitioner = partitioning.Partitioner(num_partitions)
  _check_batch_size(batch_size, partitioner, num_microbatches)
  pipeline = contracts.check_pipeline(
      dataset_fn(task_name, feature_lengths, batch_size=batch_size,
                 shard_index=jax.process_index(), num_shards=jax.process_count(), seed=seed),
      dataset_fn)
  # One batch tells the shapes; the pipeline is put back where it was.
  start_position = pipeline.state()
  example = next(pipeline)
  pipeline.restore(start_position)

  trainer = trainer_lib.Trainer(model, partitioner=partitioner, optimizer=optimizer,
                                learning_rate_fn=learning_rate_fn, seed=seed,
                                num_microbatches=num_microbatches)
  checkpointer = checkpoints_lib.Checkpointer(
      os.path.join(model_dir, "checkpoints"), period=checkpoint_period,
      keep=keep_checkpoints, async_save=async_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state, data_state = checkpointer.restore(start_step, trainer.abstract_state(example))
    pipeline.restore(data_state)
  else:
    state = trainer.init_state(example)
    if initial_checkpoint_path:
      # Only the encoder subtree is replaced (by host arrays, identical on every host); the
      # freshly initialised heads stay where they are.
      params = model.load_initial_params(initial_checkpoint_path, state.params)
      state = trainer.with_params(state, params)
  if is_writer:
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    _write_operative_config(model_dir)

  logger = metrics_lib.MetricsLogger(model_dir, total_steps=train_steps, start_step=start_step,
                                     is_writer=is_writer)
  record, stopped_at = _loop(trainer, state, pipeline, checkpointer, logger,
                             steps=range(start_step + 1, train_steps + 1),
                             batch_size=batch_size, log_period=log_period)
  checkpointer.close()
  if stopped_at is not None and is_writer:
    print(f"SIGTERM: stopped at step {stopped_at} of {train_steps} with a checkpoint; "
          "run the same command again to continue.", flush=True)
  pipeline.close()
  logger.close()
  return record


def _loop(trainer: trainer_lib.Trainer, state: Any, pipeline: contracts.InputPipeline,
          checkpointer: checkpoints_lib.Checkpointer, logger: metrics_lib.MetricsLogger, *,
          steps: range, batch_size: int, log_period: int) -> tuple[dict[str, float], int | None]:
  """Runs the optimizer `steps`; returns the last logged metrics and the step a SIGTERM
  stopped at (None when all steps ran)."""
  train_steps = steps.stop - 1
  pending, examples, tokens, record = [], 0, 0, {}
  with preemption.PreemptionWatch() as watch:
    for step in steps:
      host_batch = next(pipeline)
      state, step_metrics = trainer.train_step(state, host_batch)
      pending.append(step_metrics)
      examples += batch_size
      tokens += trainer_lib.count_tokens(host_batch) * jax.process_count()
      stop = watch.should_stop(step)
      if step % log_period == 0 or step == train_steps or stop:
        fetched = jax.device_get(pending)
        means = {k: sum(float(m[k]) for m in fetched) / len(fetched) for k in fetched[0]}
        record = logger.log(step, means, examples=examples, tokens=tokens)
        pending, examples, tokens = [], 0, 0
      # The last step is always saved, so a finished run restarts as a no-op; a preempted
      # run saves where it stops, so the same command resumes it exactly.
      checkpointer.save(step, state, pipeline.state(), force=step == train_steps or stop)
      if stop:
        break
  return record, watch.stopped_at
