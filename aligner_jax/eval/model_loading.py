"""Loading a model's parameters for inference: a trained MODEL_DIR's newest (or chosen) trainer
checkpoint, or a pretrained checkpoint (Hugging Face / T5X / orbax encoder, or a
sentence-transformers / PyLate ColBERT directory), fitted to the configured module.

`load_model` returns a `LoadedModel`: `(module, params)` plus where the params came from, which
the indexes built from them record (`encoder_record.py`). Gin-free; `retrieval_jobs` registers
`load_model` for the gin files.
"""

import pathlib
from typing import Any

import jax
import numpy as np


class ModelLoadError(ValueError):
  """The model's parameters cannot be found or do not fit the configured module."""


def _latest_step(checkpoints: pathlib.Path) -> int | None:
  steps = [int(p.name) for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit()
           and (p / "state").is_dir()] if checkpoints.is_dir() else []
  return max(steps) if steps else None


def restore_trained_params(model_dir: str, step: int | None = None) -> Any:
  """The `params` of trainer checkpoint `MODEL_DIR/checkpoints/<step>/state` as NumPy arrays
  (the optimizer state is not read)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpoints = pathlib.Path(model_dir) / "checkpoints"
  step = _latest_step(checkpoints) if step is None else step
  if step is None:
    raise ModelLoadError(f"{checkpoints}: no trainer checkpoint found (train the model first "
                         "or set the checkpoint path of a pretrained encoder)")
  path = (checkpoints / str(step) / "state").absolute()
  if not path.is_dir():
    raise ModelLoadError(f"{path}: checkpoint step {step} not found")
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  if "params" not in tree:
    raise ModelLoadError(f"{path}: the checkpoint holds {sorted(tree)} but no 'params'")
  args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                tree["params"])
  restored = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item={"params": tree["params"]},
                                        restore_args={"params": args}, partial_restore=True))
  return restored["params"]


def abstract_params(module: Any) -> Any:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  from aligner_jax.models import init_dual_encoder  # pylint: disable=g-import-not-at-top
  return nn.unbox(jax.eval_shape(
      lambda rng: init_dual_encoder(module, rng, query_length=8, doc_length=8),
      jax.random.key(0)))


def fit_params(abstract: Any, params: Any, source: str, path: str = "") -> Any:
  """`params` restricted to the tree of `abstract` (checkpoint parts the module does not use,
  such as BERT's pooler, are dropped); a missing part or a wrong shape is an error."""
  if isinstance(abstract, dict):
    if not isinstance(params, dict):
      raise ModelLoadError(f"{source}: expected a parameter group at {path or '/'}")
    missing = sorted(set(abstract) - set(params))
    if missing:
      raise ModelLoadError(f"{source}: parameters do not fit the configured DualEncoder: "
                           f"{path or '/'} lacks {missing} (the head settings of the model gin "
                           "file must match the checkpoint)")
    return {k: fit_params(abstract[k], params[k], source, f"{path}/{k}") for k in abstract}
  if tuple(np.shape(params)) != tuple(abstract.shape):
    raise ModelLoadError(f"{source}: parameter {path} has shape {tuple(np.shape(params))}, the "
                         f"configured model expects {tuple(abstract.shape)}")
  return params


class LoadedModel(tuple):
  """`(module, params)` as `load_model` returns them, plus `source`: where the params came
  from, {"kind": "trained", "path": MODEL_DIR, "step": N} or {"kind": "pretrained", "path":
  CHECKPOINT_PATH} (absolute paths), which the indexes built from them record."""
  source: dict[str, Any]

  def __new__(cls, module: Any, params: Any, source: dict[str, Any]) -> "LoadedModel":
    loaded = super().__new__(cls, (module, params))
    loaded.source = source
    return loaded


def has_trained_checkpoint(model_dir: str | pathlib.Path) -> bool:
  """Whether `model_dir` holds a trainer checkpoint (`checkpoints/<step>/state`)."""
  return _latest_step(pathlib.Path(model_dir) / "checkpoints") is not None


def load_model(module: Any, *, model_dir: str | None = None,
               checkpoint_path: str | None = None, step: int | None = None) -> LoadedModel:
  """(module, params) for inference; see the module docstring."""
  if model_dir and has_trained_checkpoint(model_dir):
    step = _latest_step(pathlib.Path(model_dir) / "checkpoints") if step is None else step
    params = restore_trained_params(model_dir, step)
    source = {"kind": "trained", "path": str(pathlib.Path(model_dir).absolute()), "step": step}
    return LoadedModel(module, fit_params(abstract_params(module), params,
                                          f"{model_dir}/checkpoints"), source)
  if not checkpoint_path:
    raise ModelLoadError(f"no trained checkpoint under MODEL_DIR={model_dir!r} and no "
                         "pretrained CHECKPOINT_PATH: nothing to evaluate")
  from aligner_jax.models import load_pretrained_params  # pylint: disable=g-import-not-at-top
  params = fit_params(abstract_params(module), load_pretrained_params(checkpoint_path),
                      checkpoint_path)
  path = checkpoint_path if "://" in str(checkpoint_path) else str(
      pathlib.Path(checkpoint_path).absolute())
  source = {"kind": "pretrained", "path": path}
  return LoadedModel(module, params, source)
