"""What the trainer needs from a model and from its input pipeline, as typed protocols.

`TrainableModel` is the trainer's whole view of a model (as t5x's `BaseModel`): the step
functions call `loss_fn`, the trainer calls `init_params` (under `jax.eval_shape` for shapes
and inside `jax.jit` to initialise straight into the shardings), and the train job calls
`load_initial_params` to start from a pretrained encoder. `DatasetFn` builds the host's
`InputPipeline`, whose position (`state()`) is checkpointed with the train state so that a
restarted run reads exactly the batches it would have read.

Implementations: `aligner_jax.train.model_fns` (`RetrievalModel`, `LiteModel`) and
`aligner_jax.data.input_pipeline` (`train_pipeline` → `Pipeline` / `TfDataPipeline`).
"""

from typing import Any, Mapping, Protocol, runtime_checkable

import jax
import numpy as np

Params = Any  # a pytree of arrays, boxed with logical axis names (`nn.Partitioned`) at init
Batch = Mapping[str, jax.Array | np.ndarray]  # feature name -> [B, ...]
Metrics = dict[str, jax.Array]  # metric name -> scalar, means over the batch


@runtime_checkable
class TrainableModel(Protocol):
  """A model the trainer can initialise, optimise and warm-start."""

  def init_params(self, rng: jax.Array, batch: Batch) -> Params:
    """Fresh parameters for batches shaped like `batch` (only shapes and dtypes matter)."""

  def loss_fn(self, params: Params, batch: Batch, *, rng: jax.Array | None,
              train: bool) -> tuple[jax.Array, Metrics]:
    """(scalar loss, metrics) of one batch; `rng` drives dropout when `train` is True."""

  def load_initial_params(self, path: str, params: Params) -> Params:
    """`params` with the parts stored at `path` (a pretrained checkpoint) replaced."""


@runtime_checkable
class InputPipeline(Protocol):
  """A deterministic, resumable iterator of host batches."""

  def __next__(self) -> dict[str, np.ndarray]:
    """The next host batch: feature name -> [per-host batch, ...]."""

  def state(self) -> dict[str, Any]:
    """A JSON-able position; `restore(state())` continues exactly from here."""

  def restore(self, state: Mapping[str, Any]) -> None:
    """Moves to a position returned by `state()`."""

  def close(self) -> None:
    """Stops background work (prefetching threads)."""


class DatasetFn(Protocol):
  """Builds one host's training pipeline: `batch_size` is global, split over `num_shards`
  hosts of which this is `shard_index`."""

  def __call__(self, task_name: str, feature_lengths: Mapping[str, Any], *, batch_size: int,
               shard_index: int, num_shards: int, seed: int) -> InputPipeline:
    ...


def check_model(model: Any) -> TrainableModel:
  """`model`, or a TypeError that names the methods it lacks."""
  missing = [name for name in ("init_params", "loss_fn", "load_initial_params")
             if not callable(getattr(model, name, None))]
  if missing:
    raise TypeError(f"MODEL {type(model).__name__} is not a TrainableModel: it has no "
                    f"{', '.join(missing)} (see aligner_jax.train.contracts)")
  return model


def check_pipeline(pipeline: Any, dataset_fn: Any) -> InputPipeline:
  """`pipeline`, or a TypeError naming `dataset_fn` and what its result lacks."""
  missing = [name for name in ("__next__", "state", "restore", "close")
             if not callable(getattr(pipeline, name, None))]
  if missing:
    name = getattr(dataset_fn, "__name__", repr(dataset_fn))
    raise TypeError(f"dataset_fn {name} returned a {type(pipeline).__name__}, not an "
                    f"InputPipeline: it has no {', '.join(missing)} "
                    "(see aligner_jax.train.contracts)")
  return pipeline
