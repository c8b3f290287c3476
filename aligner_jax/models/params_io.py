"""The project's own parameter format (orbax), and one loader for every supported source.

`save_params(path, params, config=...)` writes an orbax checkpoint (orbax writes to a
temporary directory and renames it, so a crash never leaves a half-written `path`), with the
encoder config, when given, in the checkpoint's custom metadata so `load_encoder` can rebuild
the module. `load_initial_params(path)` is what the trainer's INITIAL_CHECKPOINT_PATH calls:
it accepts a Hugging Face directory, a T5X checkpoint directory, or an orbax directory.
"""

import dataclasses
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aligner_jax.models import bert as bert_lib
from aligner_jax.models import configs
from aligner_jax.models import hf_import
from aligner_jax.models import pylate_layout
from aligner_jax.models import t5 as t5_lib
from aligner_jax.models import t5x_import
from aligner_jax.models.hf_import import CheckpointError

PathLike = str | os.PathLike
Params = Any

_METADATA_KEY = "aligner_jax_encoder_config"
_FAMILIES = {"t5": t5_lib.T5Config, "bert": bert_lib.BertConfig}


def config_to_dict(config: configs.EncoderConfig) -> dict[str, Any]:
  family = "t5" if isinstance(config, t5_lib.T5Config) else "bert"
  return {"family": family, **dataclasses.asdict(config)}


def config_from_dict(data: dict[str, Any], *, source: str = "config") -> configs.EncoderConfig:
  data = dict(data)
  family = data.pop("family", None)
  if family not in _FAMILIES:
    raise CheckpointError(f"{source}: encoder config family {family!r} is not one of "
                          f"{sorted(_FAMILIES)}")
  cls = _FAMILIES[family]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise CheckpointError(f"{source}: unknown {cls.__name__} fields {unknown}")
  return cls(**data)


def save_params(path: PathLike, params: Params, *, config: configs.EncoderConfig | None = None,
                overwrite: bool = False) -> None:
  """Writes params (any PyTree of arrays) as an orbax checkpoint at `path`.

  Args:
    path: the checkpoint directory; must not exist unless `overwrite`.
    params: the PyTree (NumPy or jax arrays, possibly sharded).
    config: the encoder config, stored in the checkpoint metadata for `load_encoder`.
  """
  path = pathlib.Path(path).absolute()
  metadata = {_METADATA_KEY: config_to_dict(config)} if config is not None else None
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params, force=overwrite, custom_metadata=metadata)
  checkpointer.wait_until_finished()


def is_orbax_checkpoint(path: PathLike) -> bool:
  path = pathlib.Path(path)
  return (path / "_CHECKPOINT_METADATA").is_file() or (path / "_METADATA").is_file()


def load_params(path: PathLike, abstract_params: Params | None = None) -> Params:
  """Reads an orbax params checkpoint.

  Args:
    path: a directory written by `save_params` (or any orbax PyTree checkpoint).
    abstract_params: optional PyTree of `jax.ShapeDtypeStruct` with shardings; when given the
      arrays are restored directly into those shardings (each host reads only its shards),
      otherwise every leaf comes back as a host NumPy array.
  """
  path = pathlib.Path(path).absolute()
  if not is_orbax_checkpoint(path):
    raise CheckpointError(f"{path}: not an orbax checkpoint (no _CHECKPOINT_METADATA / "
                          "_METADATA file)")
  if abstract_params is not None:
    return ocp.StandardCheckpointer().restore(path, abstract_params)
  metadata = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        metadata)
  return ocp.PyTreeCheckpointer().restore(path, restore_args=restore_args)


def saved_config(path: PathLike) -> configs.EncoderConfig | None:
  """The encoder config stored by `save_params(..., config=...)`, or None."""
  path = pathlib.Path(path).absolute()
  custom = ocp.StandardCheckpointer().metadata(path).custom_metadata or {}
  if _METADATA_KEY not in custom:
    return None
  return config_from_dict(custom[_METADATA_KEY], source=f"{path} (orbax custom metadata)")


def checkpoint_kind(path: PathLike) -> str:
  """"hf", "t5x" or "orbax": what `path` holds; a clear error when it is none of them."""
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: does not exist")
  if is_orbax_checkpoint(path):
    return "orbax"
  if t5x_import.find_t5x_checkpoint_file(path) is not None:
    return "t5x"
  if path.is_dir() and ((path / "config.json").is_file() or (path / "modules.json").is_file()):
    return "hf"
  raise CheckpointError(
      f"{path}: not a Hugging Face directory (config.json + model.safetensors), a T5X "
      "checkpoint directory ('checkpoint' msgpack file) or an orbax checkpoint")


def load_encoder(path: PathLike, **config_overrides: Any
                 ) -> tuple[configs.EncoderConfig, Params]:
  """(config, params) of the encoder stored at `path`, whatever its format.

  For orbax checkpoints the config comes from the checkpoint's metadata (written by
  `save_params(..., config=...)`); for T5X it is inferred from parameter shapes.
  """
  kind = checkpoint_kind(path)
  if kind == "hf":
    return hf_import.load_hf_encoder(path, **config_overrides)
  if kind == "t5x":
    return t5x_import.load_t5x(path, **config_overrides)
  config = saved_config(path)
  if config is None:
    raise CheckpointError(f"{path}: orbax checkpoint without an encoder config in its metadata "
                          "(save it with save_params(path, params, config=...)); use "
                          "load_params(path) for the bare parameters")
  return dataclasses.replace(config, **config_overrides), load_params(path)


def load_initial_params(path: PathLike) -> Params:
  """Initial encoder parameters for training (the trainer's INITIAL_CHECKPOINT_PATH).

  Args:
    path: a Hugging Face directory, a T5X checkpoint directory, or an orbax checkpoint.
  Returns:
    The encoder's params (nested dict of float32 arrays) in this project's layout. An orbax
    checkpoint is returned as stored; if it holds T5X parameter names (e.g. a T5X checkpoint
    re-saved with orbax, with or without a top-level `target`), they are mapped like T5X.
  """
  kind = checkpoint_kind(path)
  if kind == "hf":
    return hf_import.load_hf_encoder(path)[1]
  if kind == "t5x":
    return t5x_import.load_t5x(path)[1]
  params = load_params(path)
  # T5X layout: a `target` root, or `token_embedder` beside an `encoder` subtree (our own
  # T5Encoder has `token_embedder` beside `layers_*`; a DualEncoder nests it under `encoder`).
  if isinstance(params, dict) and ("target" in params or ("token_embedder" in params
                                                          and "encoder" in params)):
    return t5x_import.load_t5x(params.get("target", params))[1]
  return params


def load_pretrained_params(path: PathLike) -> dict[str, Params]:
  """A pretrained model's parameters in the DualEncoder layout: {"encoder": ...} (see
  `load_initial_params`) and, for a sentence-transformers / PyLate ColBERT directory, its
  "token_projection" as well."""
  if pylate_layout.is_colbert_dir(path):
    return pylate_layout.colbert_params(path)
  return {"encoder": load_initial_params(path)}


def read_encoder_config(path: PathLike, **config_overrides: Any) -> configs.EncoderConfig:
  """The encoder config of a checkpoint without reading its weights (HF: config.json; T5X:
  parameter shapes from the index; orbax: the stored metadata)."""
  kind = checkpoint_kind(path)
  if kind == "hf":
    return hf_import.encoder_config(path, **config_overrides)
  if kind == "t5x":
    arrays = t5x_import.read_t5x_target(path)
    return t5x_import.infer_t5_config(
        arrays, source=str(t5x_import.find_t5x_checkpoint_file(path)), **config_overrides)
  config = saved_config(path)
  if config is None:
    raise CheckpointError(f"{path}: orbax checkpoint without an encoder config in its metadata")
  return dataclasses.replace(config, **config_overrides)
