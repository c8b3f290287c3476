"""Import T5X checkpoints of T5 / T5 v1.1 into this project's `T5Encoder`.

A T5X checkpoint directory (`.../checkpoint_1000000/`) holds a `checkpoint` file -- a flax
msgpack of `{"version": 3, "optimizer": {"target": params, "state": ...}}` (version 0 files
are the optimizer dict itself) -- whose array leaves are either inline arrays or TensorStore
specs (`{"driver": "zarr", "kvstore": {"driver": "file", "path": "target.encoder..."},
"metadata": {...}}`) naming a zarr array relative to the checkpoint directory. Newer T5X
writes the same under `state/checkpoint`. Only the encoder and the token embedding are read;
decoder and optimizer slots are never loaded.

T5X parameter names (after `target/`): `token_embedder/embedding [vocab, embed]`,
`encoder/relpos_bias/rel_embedding [heads, buckets]`,
`encoder/layers_{i}/{pre_attention_layer_norm,pre_mlp_layer_norm}/scale`,
`encoder/layers_{i}/attention/{query,key,value}/kernel [embed, heads*kv]`,
`encoder/layers_{i}/attention/out/kernel [heads*kv, embed]`,
`encoder/layers_{i}/mlp/{wi_0,wi_1 | wi,wo}/kernel`, `encoder/encoder_norm/scale`.
Our T5Encoder uses the same names with the `encoder/` level dropped and head axes
unflattened, so the import is a rename plus reshape.

The same mapping also accepts a flat dict (`{"target/encoder/...": array}`, "/" or "."
separated, with or without the `target` prefix) or any PyTree with those names -- e.g. an
orbax checkpoint of T5X parameters (see `params_io.load_initial_params`).
"""

import os
import pathlib
import re
from typing import Any, Callable, Mapping

from flax import serialization
from flax import traverse_util
import ml_dtypes
import numpy as np
import tensorstore as ts

from aligner_jax.models import t5 as t5_lib
from aligner_jax.models.hf_import import CheckpointError

PathLike = str | os.PathLike
Params = dict[str, Any]
# A leaf is an array or a LazyArray (so unused tensors -- decoder, optimizer -- are never read).
LazyArrays = Mapping[str, Any]


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, dict) and "driver" in value and ("kvstore" in value or "path" in value)


def find_t5x_checkpoint_file(path: PathLike) -> pathlib.Path | None:
  """The msgpack `checkpoint` file of a T5X checkpoint dir (or the file itself), else None."""
  path = pathlib.Path(path)
  if path.is_file() and path.name == "checkpoint":
    return path
  for candidate in (path / "checkpoint", path / "state" / "checkpoint"):
    if candidate.is_file():
      return candidate
  return None


def _absolute_spec(spec: dict[str, Any], ckpt_dir: pathlib.Path, version: int) -> dict[str, Any]:
  """A TensorStore spec whose relative path is resolved against the local checkpoint dir.

  Specs written to GCS name a dummy bucket; whatever the driver, the array lives beside
  the `checkpoint` file (or, for the `state/checkpoint` layout, in the checkpoint dir above
  it), so it is read from the local file system.
  """
  spec = dict(spec)
  kvstore = spec.get("kvstore")
  if isinstance(kvstore, dict) and "path" in kvstore:
    rel = kvstore["path"]
  elif "path" in spec:  # tensorstore < 0.1.14 layout: path at the top level
    rel = spec.pop("path")
  else:
    raise CheckpointError(f"{ckpt_dir / 'checkpoint'}: TensorStore spec without a path: {spec}")
  rel = os.path.basename(str(rel).rstrip("/"))
  candidates = [ckpt_dir / rel, ckpt_dir.parent / rel]
  found = next((c for c in candidates if c.is_dir()), candidates[0])
  spec["kvstore"] = {"driver": "file", "path": str(found)}
  if version < 3 and spec.get("dtype") == "uint16":
    # Version-2 checkpoints stored bfloat16 parameters as their uint16 bit patterns.
    spec["_bfloat16_bits"] = True
  return spec


def _read_ts(spec: dict[str, Any], name: str, source: pathlib.Path) -> np.ndarray:
  bits = spec.pop("_bfloat16_bits", False)
  path = spec["kvstore"]["path"]
  if not os.path.isdir(path):
    raise CheckpointError(f"{source}: tensor {name!r} points to {path}, which does not exist")
  try:
    array = ts.open(spec, open=True, read=True).result().read().result()
  except Exception as e:  # tensorstore raises ValueError / its own errors with context
    raise CheckpointError(f"{source}: cannot read tensor {name!r} from {path}: {e}") from e
  array = np.asarray(array)
  if bits:
    array = array.view(ml_dtypes.bfloat16)
  return array.astype(np.float32)


class LazyArray:
  """An array read only when called; `shape` is known without reading (None = unknown)."""

  def __init__(self, shape: tuple[int, ...] | None, read: Callable[[], np.ndarray]):
    self.shape = shape
    self._read = read

  def __call__(self) -> np.ndarray:
    return self._read()


def read_t5x_target(path: PathLike) -> dict[str, LazyArray]:
  """The parameters (`target`) of a T5X checkpoint as name -> LazyArray.

  Names are "/"-joined without the `target/` prefix, e.g. "encoder/layers_0/mlp/wo/kernel".
  """
  ckpt_file = find_t5x_checkpoint_file(path)
  if ckpt_file is None:
    raise CheckpointError(f"{path}: not a T5X checkpoint (no 'checkpoint' or "
                          "'state/checkpoint' file)")
  try:
    contents = serialization.msgpack_restore(ckpt_file.read_bytes())
  except Exception as e:
    raise CheckpointError(f"{ckpt_file}: not a msgpack T5X checkpoint file: {e}") from e
  if not isinstance(contents, dict):
    raise CheckpointError(f"{ckpt_file}: expected a msgpack map at the top level")
  version = int(contents.get("version", 0))
  optimizer = contents["optimizer"] if version > 0 and "optimizer" in contents else contents
  target = optimizer.get("target") if isinstance(optimizer, dict) else None
  if not isinstance(target, dict):
    raise CheckpointError(f"{ckpt_file}: no 'target' parameter tree (keys: "
                          f"{sorted(optimizer) if isinstance(optimizer, dict) else '?'})")
  ckpt_dir = ckpt_file.parent
  leaves: dict[str, LazyArray] = {}

  def visit(node: Any, prefix: tuple[str, ...]) -> None:
    name = "/".join(prefix)
    if _is_ts_spec(node):
      spec = _absolute_spec(node, ckpt_dir, version)
      shape = (spec.get("metadata") or {}).get("shape")
      leaves[name] = LazyArray(
          None if shape is None else tuple(int(n) for n in shape),
          lambda spec=spec, name=name: _read_ts(dict(spec), name, ckpt_file))
    elif isinstance(node, dict):
      for key, value in node.items():
        visit(value, prefix + (str(key),))
    else:
      array = np.asarray(node)
      leaves[name] = LazyArray(array.shape, lambda array=array: array.astype(np.float32))

  visit(target, ())
  return leaves


def _normalise_names(flat: LazyArrays) -> dict[str, Any]:
  """Accepts "/" or "." separators and an optional leading "target" component."""
  out = {}
  for name, value in flat.items():
    parts = re.split(r"[/.]", name)
    if parts and parts[0] == "target":
      parts = parts[1:]
    out["/".join(parts)] = value
  return out


def flatten_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
  """A nested dict PyTree as a flat "/"-joined dict."""
  return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def infer_t5_config(flat: LazyArrays, *, source: str = "T5X parameters",
                    **overrides: Any) -> t5_lib.T5Config:
  """Reads a T5Config off the parameter shapes (T5X checkpoints carry no config).

  Gated MLP (`wi_0`/`wi_1`) means T5 v1.1 (gelu_new); a single `wi` means the original T5
  (ReLU). The maximum relative distance is not stored; it defaults to T5's 128.
  """
  flat = _normalise_names(flat)
  shapes = {name: _shape(value) for name, value in flat.items() if name.endswith(
      ("token_embedder/embedding", "rel_embedding", "layers_0/attention/query/kernel",
       "layers_0/mlp/wi_0/kernel", "layers_0/mlp/wi/kernel"))}

  def need(name: str) -> tuple[int, ...]:
    if name not in shapes:
      raise CheckpointError(f"{source}: tensor {name!r} is missing")
    return shapes[name]

  vocab, d_model = need("token_embedder/embedding")
  num_heads, buckets = need("encoder/relpos_bias/rel_embedding")
  q_shape = need("encoder/layers_0/attention/query/kernel")
  d_kv = q_shape[-1] if len(q_shape) == 3 else q_shape[1] // num_heads
  gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
  d_ff = need("encoder/layers_0/mlp/wi_0/kernel" if gated else "encoder/layers_0/mlp/wi/kernel")[1]
  layer_ids = {int(m.group(1)) for name in flat
               if (m := re.match(r"encoder/layers_(\d+)/", name))}
  num_layers = max(layer_ids) + 1 if layer_ids else 0
  if sorted(layer_ids) != list(range(num_layers)):
    raise CheckpointError(f"{source}: encoder layers are not numbered 0..{num_layers - 1}: "
                          f"{sorted(layer_ids)}")
  fields = dict(vocab_size=vocab, d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                num_layers=num_layers, relative_attention_num_buckets=buckets, gated=gated,
                activation="gelu_new" if gated else "relu")
  return t5_lib.T5Config(**{**fields, **overrides})


def _shape(value: Any) -> tuple[int, ...]:
  if isinstance(value, LazyArray) and value.shape is not None:
    return value.shape
  if callable(value):
    value = value()
  return tuple(np.shape(value))


def t5_params_from_t5x(flat: LazyArrays, cfg: t5_lib.T5Config, *,
                       source: str = "T5X parameters") -> Params:
  """T5Encoder params from T5X-named arrays (or thunks); only encoder names are read."""
  flat = _normalise_names(flat)

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in flat:
      raise CheckpointError(f"{source}: tensor {name!r} is missing")
    value = flat[name]
    array = np.asarray(value() if callable(value) else value, np.float32)
    if array.size != int(np.prod(shape)):
      raise CheckpointError(f"{source}: tensor {name!r} has shape {array.shape}, expected "
                            f"{int(np.prod(shape))} elements to form {shape}")
    return array.reshape(shape)

  d, heads, ff = cfg.d_model, (cfg.num_heads, cfg.d_kv), cfg.d_ff
  params: Params = {
      "token_embedder": {"embedding": get("token_embedder/embedding", (cfg.vocab_size, d))},
      "relpos_bias": {"rel_embedding": get(
          "encoder/relpos_bias/rel_embedding",
          (cfg.num_heads, cfg.relative_attention_num_buckets))},
      "encoder_norm": {"scale": get("encoder/encoder_norm/scale", (d,))},
  }
  for i in range(cfg.num_layers):
    p = f"encoder/layers_{i}"
    mlp_in = ("wi_0", "wi_1") if cfg.gated else ("wi",)
    params[f"layers_{i}"] = {
        "pre_attention_layer_norm": {"scale": get(f"{p}/pre_attention_layer_norm/scale", (d,))},
        "attention": {
            **{n: {"kernel": get(f"{p}/attention/{n}/kernel", (d,) + heads)}
               for n in ("query", "key", "value")},
            "out": {"kernel": get(f"{p}/attention/out/kernel", heads + (d,))},
        },
        "pre_mlp_layer_norm": {"scale": get(f"{p}/pre_mlp_layer_norm/scale", (d,))},
        "mlp": {
            **{n: {"kernel": get(f"{p}/mlp/{n}/kernel", (d, ff))} for n in mlp_in},
            "wo": {"kernel": get(f"{p}/mlp/wo/kernel", (ff, d))},
        },
    }
  return params


def load_t5x(path_or_arrays: PathLike | LazyArrays, **config_overrides: Any
             ) -> tuple[t5_lib.T5Config, Params]:
  """(config, params) of the T5 encoder in a T5X checkpoint dir or a T5X-named dict / PyTree.

  The config is inferred from the shapes; `config_overrides` change T5Config fields (e.g.
  `dtype="bfloat16"`, `relative_attention_max_distance=...`).
  """
  if isinstance(path_or_arrays, Mapping):
    arrays = path_or_arrays
    if any(isinstance(v, Mapping) for v in arrays.values()):
      arrays = flatten_tree(arrays)
    source = "T5X parameters"
  else:
    arrays = read_t5x_target(path_or_arrays)
    source = str(find_t5x_checkpoint_file(path_or_arrays))
  cfg = infer_t5_config(arrays, source=source, **config_overrides)
  return cfg, t5_params_from_t5x(arrays, cfg, source=source)

